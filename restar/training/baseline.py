"""Training the TF-IDF baseline (the `tfidf` model kind, restar.model.tfidf): fit on train,
calibrate on dev, save the model folder and log it as an MLflow run beside the transformer's."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from restar.config import RunConfig, flatten
from restar.data.prepare import drop_rating_titles
from restar.model.inference import ModelMetadata
from restar.model.pyfunc import log_run_model
from restar.model.tfidf import KIND, fit
from restar.tracking import configure_tracking, experiment_id
from restar.training.metrics import calibrate_on_dev

logger = logging.getLogger(__name__)


def train_baseline(config: RunConfig, config_path: Path, data_dir: Path, out_dir: Path) -> dict:
    """Fit, calibrate on dev, save to out_dir/model, write metrics_dev.json and log an MLflow run."""
    tracking_uri = configure_tracking()  # an unreachable tracking server stops here, before any work
    train_frame = pd.read_parquet(data_dir / "train.parquet")
    dev_frame = pd.read_parquet(data_dir / "dev.parquet")
    data_stats = json.loads((data_dir / "stats.json").read_text())
    scorer = fit(train_frame, config.baseline)
    threshold = config.train.abstain_threshold
    temperature, bias, dev_metrics = calibrate_on_dev(
        scorer.score(dev_frame["text"]).logits,
        dev_frame["label"].to_numpy(),
        threshold,
        with_bias=config.train.calibration == "temperature+bias",
    )
    metadata = ModelMetadata(
        temperature=temperature,
        class_bias=bias,
        abstain_threshold=threshold,
        max_length=0,
        base_model="tfidf-logreg",
        kind=KIND,
        drop_rating_titles=drop_rating_titles(data_dir),
    )
    logger.info("baseline dev metrics %s", dev_metrics)

    model_dir = out_dir / "model"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        scorer.save(staging)
        metadata.save(staging)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    (out_dir / "metrics_dev.json").write_text(json.dumps(dev_metrics, indent=2) + "\n")

    with mlflow.start_run(
        experiment_id=experiment_id(config.tracking.experiment), run_name=f"{config.name}-baseline"
    ) as run:
        mlflow.set_tags(
            {
                "restar.config": str(config_path),
                "restar.config_name": config.name,
                "restar.model_kind": KIND,
                "restar.base_model": "tfidf-logreg",
            }
        )
        mlflow.log_params(
            {
                **flatten(config.baseline, prefix="baseline."),
                "train.abstain_threshold": threshold,
                "data.content_sha256": data_stats["frozen_content_sha256"],
                **{f"data.{split}_rows": rows for split, rows in data_stats["rows"].items()},
            }
        )
        mlflow.log_metrics(dev_metrics)
        mlflow.log_artifact(str(out_dir / "metrics_dev.json"))
        record = log_run_model(run, model_dir, out_dir, tracking_uri)
    return {**dev_metrics, **record}
