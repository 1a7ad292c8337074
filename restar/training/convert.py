"""The convert stage: the trained checkpoint on the backend it is served on, calibrated on that
backend's own dev logits, saved and logged to MLflow as the pyfunc that later stages register.

Top to bottom: checkpoint -> backend -> dev logits as served -> temperature (and biases) -> save -> log.
Switching `inference.backend` in a config reruns this stage and those after it, never training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from restar.config import RunConfig, flatten
from restar.data.prepare import drop_rating_titles
from restar.model.inference import InferenceCore, ModelMetadata
from restar.model.onnx_export import convert
from restar.model.onnx_scorer import TORCH
from restar.model.pyfunc import log_run_model
from restar.tracking import configure_tracking
from restar.training.metrics import calibrate_on_dev

logger = logging.getLogger(__name__)

TRAIN_RUN_FILE = "train_run.json"


def converted_copy(checkpoint: Path, backend: str, staging: Path, data_dir: Path) -> None:
    """`checkpoint` copied to `staging` and put on `backend`, preparing texts as `data_dir` was."""
    shutil.copytree(checkpoint, staging)
    if backend != TORCH:
        convert(staging, backend)
    metadata = ModelMetadata.load(staging)
    dataclasses.replace(metadata, drop_rating_titles=drop_rating_titles(data_dir)).save(staging)


def calibrate_served(model_dir: Path, dev_frame: pd.DataFrame, config: RunConfig) -> dict[str, float]:
    """Fit the temperature (and class biases) on the dev logits of `model_dir`'s own backend, store
    them in its metadata, and return the dev metrics."""
    logits = InferenceCore.from_dir(model_dir).logits(dev_frame["text"].tolist())
    temperature, bias, dev_metrics = calibrate_on_dev(
        logits,
        dev_frame["label"].to_numpy(),
        config.train.abstain_threshold,
        with_bias=config.train.calibration == "temperature+bias",
    )
    metadata = ModelMetadata.load(model_dir)
    dataclasses.replace(metadata, temperature=temperature, class_bias=bias).save(model_dir)
    logger.info("%s: temperature %.4f; dev metrics %s", metadata.backend, temperature, dev_metrics)
    return dev_metrics


def convert_checkpoint(
    config: RunConfig, config_path: Path, checkpoint: Path, data_dir: Path, out_dir: Path
) -> dict:
    """out_dir/model: `checkpoint` on the config's backend, calibrated as served; metrics_dev.json;
    and an MLflow run nested under the training run, with its params, the dev metrics and the model
    (out_dir/mlflow_run.json names it for evaluate and register)."""
    backend = config.inference.backend
    tracking_uri = configure_tracking()
    train_run = json.loads((out_dir / TRAIN_RUN_FILE).read_text())
    dev_frame = pd.read_parquet(data_dir / "dev.parquet")

    model_dir = out_dir / "model"
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=out_dir) as scratch:
        staging = Path(scratch) / "model"
        converted_copy(checkpoint, backend, staging, data_dir)
        dev_metrics = calibrate_served(staging, dev_frame, config)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    (out_dir / "metrics_dev.json").write_text(json.dumps(dev_metrics, indent=2) + "\n")

    trained = mlflow.get_run(train_run["run_id"])
    with mlflow.start_run(
        experiment_id=train_run["experiment_id"],
        run_name=f"{config.name}-{backend}",
        tags={
            **{key: value for key, value in trained.data.tags.items() if key.startswith("restar.")},
            "mlflow.parentRunId": train_run["run_id"],
            "restar.train_run_id": train_run["run_id"],
            "restar.config": str(config_path),
        },
    ) as run:
        mlflow.log_params({**trained.data.params, **flatten(config)})
        mlflow.log_metrics(dev_metrics)
        mlflow.log_artifact(str(out_dir / "metrics_dev.json"))
        return {**dev_metrics, **log_run_model(run, model_dir, out_dir, tracking_uri)}
