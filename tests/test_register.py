"""Lineage of a registered version: git commit (dirty only for source/config changes), short tags,
metrics on the run and the logged model (older versions' `metric.*` tags still read)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from registry.service import Registry
from restar.model.register import git_commit, pipeline_outputs

PIPELINE = {
    "stages": {
        "train": {
            "cmd": "restar train",
            "deps": ["src/train.py"],
            "outs": ["outputs/run/model"],
            "metrics": [{"outputs/run/metrics_dev.json": {"cache": False}}],
        },
        "evaluate": {
            "cmd": "restar evaluate",
            "outs": ["${out_dir}/templated"],
            "plots": [{"outputs/run/plots/confusion.png": {"cache": False}}, "outputs/run/plots/roc.png"],
        },
    }
}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository with a pipeline whose outputs are committed, as after a quickstart."""
    root = tmp_path / "project"
    files = {
        "dvc.yaml": yaml.safe_dump(PIPELINE),
        "dvc.lock": "schema: '2.0'\n",
        "src/train.py": "print('train')\n",
        "configs/smoke.yaml": "name: smoke\n",
        "outputs/run/metrics_dev.json": '{"dev_accuracy": 0.5}\n',
        "outputs/run/plots/confusion.png": "png",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root.parent, "init", "-q", str(root))
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return root


def test_pipeline_outputs_come_from_dvc_yaml(project: Path) -> None:
    assert pipeline_outputs(project / "dvc.yaml") == [
        "dvc.lock",
        "outputs/run/metrics_dev.json",
        "outputs/run/model",
        "outputs/run/plots/confusion.png",
        "outputs/run/plots/roc.png",
    ]
    assert pipeline_outputs(project / "missing.yaml") == []


def test_clean_tree_is_the_bare_commit(project: Path) -> None:
    assert git_commit(project) == git(project, "rev-parse", "HEAD").strip()


def test_pipeline_outputs_do_not_make_the_commit_dirty(project: Path) -> None:
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (project / "outputs/run/metrics_dev.json").write_text('{"dev_accuracy": 0.9}\n')
    (project / "outputs/run/plots/confusion.png").write_text("other png")
    (project / "notes.txt").write_text("untracked files never count\n")
    assert not git_commit(project).endswith("-dirty")


@pytest.mark.parametrize("changed", ["src/train.py", "configs/smoke.yaml", "dvc.yaml"])
def test_source_or_config_changes_make_it_dirty(project: Path, changed: str) -> None:
    (project / "dvc.lock").write_text("changed too\n")
    with (project / changed).open("a") as handle:
        handle.write("# edited\n")
    assert git_commit(project) == git(project, "rev-parse", "HEAD").strip() + "-dirty"


def test_outside_git_is_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame) -> pd.DataFrame:
        return model_input


def logged_run(metrics_before: dict[str, float], metrics_after: dict[str, float]) -> tuple[str, str]:
    """A run that logs metrics before and after its model (as train and evaluate do)."""
    with mlflow.start_run() as run:
        mlflow.log_metrics(metrics_before, step=40)
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo())
        mlflow.log_metrics(metrics_after)
    return info.model_uri, run.info.run_id


LINEAGE = {"restar.config_name": "ci", "restar.git_commit": "abc123"}


def test_metrics_live_on_the_run_and_logged_model_not_in_tags(tracking_uri: str) -> None:
    dev, evaluation = {"dev_accuracy": 0.61}, {"eval_accuracy": 0.58, "eval_macro_f1": 0.41}
    model_uri, run_id = logged_run(dev, evaluation)
    registry = Registry("restar", tracking_uri)
    version = registry.register(
        model_uri, run_id, LINEAGE, {**dev, **evaluation}, model_params={"temperature": "1.3"}
    )

    stored = registry.client.get_model_version("restar", str(version.version))
    assert stored.tags == LINEAGE  # lineage only: no metric.* tags
    assert version.tags == LINEAGE
    assert version.metrics == {**dev, **evaluation}  # read from the run
    assert registry.versions()[0].metrics == version.metrics

    logged = registry.client.get_logged_model(model_uri.removeprefix("models:/"))
    assert {m.key: m.value for m in logged.metrics} == {**dev, **evaluation}
    assert logged.params == {"temperature": "1.3"}
    latest = registry.client.get_run(run_id).data.metrics
    assert latest["dev_accuracy"] == dev["dev_accuracy"]

    again = registry.register(
        model_uri, run_id, LINEAGE, {**dev, **evaluation}, model_params={"temperature": "1.3"}
    )
    logged = registry.client.get_logged_model(model_uri.removeprefix("models:/"))
    assert len(logged.metrics) == 3  # registering the same model again logs nothing twice
    assert again.metrics == version.metrics


def test_versions_with_metric_tags_still_read(tracking_uri: str) -> None:
    model_uri, run_id = logged_run({}, {"eval_accuracy": 0.2})
    registry = Registry("restar", tracking_uri)
    registry.client.create_registered_model("restar")
    logged = registry.client.get_logged_model(model_uri.removeprefix("models:/"))
    registry.client.create_model_version(
        "restar",
        source=logged.artifact_location,
        run_id=run_id,
        tags={"restar.config_name": "old", "metric.eval_accuracy": "0.93"},
        model_id=logged.model_id,
    )
    version = registry.version(1)
    assert version.metrics == {"eval_accuracy": 0.93}  # the tag, as registered then
    assert version.tags == {"restar.config_name": "old"}
