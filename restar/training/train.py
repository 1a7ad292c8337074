"""Fine-tune the encoder for 3-class review sentiment, save the checkpoint and log the run to MLflow.

Top to bottom: config -> seed -> data -> labels -> model -> Trainer -> history -> save.
The convert stage (restar.training.convert) puts the checkpoint on the served backend and calibrates it there.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch
from transformers import set_seed

from restar.config import RunConfig, flatten
from restar.model.inference import ModelMetadata
from restar.tracking import configure_tracking, experiment_id
from restar.training.convert import TRAIN_RUN_FILE
from restar.training.finetune import checkpoint_dir, class_weights, fit, load_encoder

logger = logging.getLogger(__name__)


def log_training_history(history: list[dict[str, float]]) -> None:
    """Trainer's per-evaluation dev scores and running loss as MLflow metric histories."""
    for entry in history:
        step = int(entry.get("step", 0))
        if "eval_macro_f1" in entry:
            mlflow.log_metrics(
                {
                    "dev_accuracy": entry["eval_accuracy"],
                    "dev_macro_f1": entry["eval_macro_f1"],
                    "epoch": entry.get("epoch", 0.0),
                },
                step=step,
            )
        elif "loss" in entry:
            mlflow.log_metric("train_loss", entry["loss"], step=step)


def save_model(model, tokenizer, metadata: ModelMetadata, out_dir: Path) -> None:
    """Weights (safetensors), tokenizer and Re*Star metadata, swapped in whole."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        staging = Path(tmp) / out_dir.name
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        metadata.save(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)


def resumable_run_id(checkpoints: Path) -> str | None:
    """The MLflow run a killed training left behind, so a resumed run keeps logging into it."""
    path = checkpoints / "mlflow_run_id"
    if not path.is_file():
        return None
    run_id = path.read_text().strip()
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return run_id


def train(
    config: RunConfig,
    config_path: Path,
    pretrained_dir: Path,
    data_dir: Path,
    out_dir: Path,
    work_dir: Path,
) -> dict:
    """Train, save the checkpoint to out_dir/checkpoint and log the run to MLflow (out_dir/train_run.json
    names it for the convert stage).

    `work_dir` keeps the checkpoints of an unfinished run (a rerun resumes from them) and the layer cache.
    """
    settings = config.train
    tracking_uri = configure_tracking()  # an unreachable tracking server stops here, before any work
    logger.info("config %s: %s", config_path, config.model_dump_json())
    set_seed(settings.seed)
    if settings.threads:
        torch.set_num_threads(settings.threads)

    train_frame = pd.read_parquet(data_dir / "train.parquet")
    dev_frame = pd.read_parquet(data_dir / "dev.parquet")
    data_stats = json.loads((data_dir / "stats.json").read_text())
    labels = train_frame["label"].to_numpy()
    weights = class_weights(labels, settings.class_weights)
    logger.info(
        "train %d rows, dev %d rows, class weights %s",
        len(train_frame),
        len(dev_frame),
        None if weights is None else weights.tolist(),
    )

    tokenizer, model = load_encoder(pretrained_dir)
    base_model = json.loads((pretrained_dir / "restar_pretrained.json").read_text())

    checkpoints = checkpoint_dir(settings, pretrained_dir, [train_frame, dev_frame], work_dir)
    with mlflow.start_run(
        run_id=resumable_run_id(checkpoints),
        experiment_id=experiment_id(config.tracking.experiment),
        run_name=f"{config.name}-train",
    ) as run:
        checkpoints.mkdir(parents=True, exist_ok=True)
        (checkpoints / "mlflow_run_id").write_text(run.info.run_id)
        mlflow.set_tags(
            {
                "restar.config": str(config_path),
                "restar.config_name": config.name,
                "restar.base_model": base_model["source"],
            }
        )
        mlflow.log_params(
            {
                # the backend is the convert stage's: its runs, nested under this one, log it
                **{key: value for key, value in flatten(config).items() if not key.startswith("inference.")},
                "base_model.layers": base_model["layers"],
                "data.content_sha256": data_stats["frozen_content_sha256"],
                **{f"data.{split}_rows": rows for split, rows in data_stats["rows"].items()},
            }
        )
        result = fit(settings, model, tokenizer, pretrained_dir, train_frame, dev_frame, work_dir)
        log_training_history(result.log_history)

        metadata = ModelMetadata(
            abstain_threshold=settings.abstain_threshold,
            max_length=settings.max_length,
            base_model=base_model["source"],
        )
        save_model(result.model, tokenizer, metadata, out_dir / "checkpoint")
        # Every process's seconds: a resumed run adds its own to those its killed predecessors spent.
        mlflow.log_metric("train_seconds", round(result.seconds, 1))
        mlflow.log_artifact(str(data_dir / "stats.json"), artifact_path="data")
        record = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "tracking_uri": tracking_uri,
        }
        (out_dir / TRAIN_RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _log_train_log(out_dir)
    shutil.rmtree(result.checkpoints, ignore_errors=True)  # the run is complete: nothing left to resume
    return {"train_seconds": round(result.seconds, 1), **record}


def _log_train_log(out_dir: Path) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    if (out_dir / "train.log").is_file():
        mlflow.log_artifact(str(out_dir / "train.log"))
