"""Fine-tune the encoder for 3-class review sentiment, calibrate on dev, save and log to MLflow.

Top to bottom: config -> seed -> data -> labels -> model -> Trainer -> temperature -> metrics -> save.
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
from restar.finetune import build_trainer, class_weights, load_encoder
from restar.inference import ModelMetadata, TransformerScorer
from restar.metrics import calibrate_on_dev
from restar.onnx_backend import TORCH, convert
from restar.pyfunc import log_run_model
from restar.tracking import configure_tracking, experiment_id

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


def train(config: RunConfig, config_path: Path, pretrained_dir: Path, data_dir: Path, out_dir: Path) -> dict:
    """Train, calibrate, save to out_dir/model, write metrics_dev.json and log the run to MLflow."""
    settings = config.train
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

    tracking_uri = configure_tracking()
    with (
        tempfile.TemporaryDirectory() as checkpoints,
        mlflow.start_run(
            experiment_id=experiment_id(config.tracking.experiment), run_name=f"{config.name}-train"
        ) as run,
    ):
        mlflow.set_tags(
            {
                "restar.config": str(config_path),
                "restar.config_name": config.name,
                "restar.base_model": base_model["source"],
            }
        )
        mlflow.log_params(
            {
                **flatten(config),
                "base_model.layers": base_model["layers"],
                "data.content_sha256": data_stats["frozen_content_sha256"],
                **{f"data.{split}_rows": rows for split, rows in data_stats["rows"].items()},
            }
        )
        trainer = build_trainer(settings, model, tokenizer, train_frame, dev_frame, checkpoints)
        trainer.train()
        log_training_history(trainer.state.log_history)

        model = trainer.model.to("cpu").eval()
        scorer = TransformerScorer(model, tokenizer, settings.max_length, settings.eval_batch_size)
        temperature, bias, dev_metrics = calibrate_on_dev(
            scorer.logits(dev_frame["text"].tolist()),
            dev_frame["label"].to_numpy(),
            settings.abstain_threshold,
            with_bias=settings.calibration == "temperature+bias",
        )
        metadata = ModelMetadata(
            temperature=temperature,
            class_bias=bias,
            abstain_threshold=settings.abstain_threshold,
            max_length=settings.max_length,
            base_model=base_model["source"],
        )
        logger.info("temperature %.4f; dev metrics %s", temperature, dev_metrics)

        model_dir = out_dir / "model"
        save_model(model, tokenizer, metadata, model_dir)
        if config.inference.backend != TORCH:
            convert(model_dir, config.inference.backend)
        (out_dir / "metrics_dev.json").write_text(json.dumps(dev_metrics, indent=2) + "\n")
        mlflow.log_metrics(dev_metrics, step=trainer.state.global_step)
        mlflow.log_artifact(str(out_dir / "metrics_dev.json"))
        mlflow.log_artifact(str(data_dir / "stats.json"), artifact_path="data")
        record = log_run_model(run, model_dir, out_dir, tracking_uri)
        _log_train_log(out_dir)
    return {**dev_metrics, **record}


def _log_train_log(out_dir: Path) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    if (out_dir / "train.log").is_file():
        mlflow.log_artifact(str(out_dir / "train.log"))
