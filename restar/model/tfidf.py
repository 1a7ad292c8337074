"""The baseline model kind: TF-IDF (word 1-2 grams) + multinomial logistic regression.

Stored without pickles: the vocabulary and vectorizer settings as JSON, the IDF weights and the
regression coefficients as safetensors. Served by the same inference core, pyfunc, predictor and
handler as the transformer (the `tfidf` entry of `restar.model_kinds`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from restar.config import BaselineConfig, RunConfig, flatten
from restar.inference import ModelMetadata, Scores
from restar.labels import LABELS
from restar.metrics import calibrate_on_dev
from restar.prepare import drop_rating_titles
from restar.pyfunc import log_run_model
from restar.tracking import configure_tracking, experiment_id

logger = logging.getLogger(__name__)

KIND = "tfidf"
VECTORIZER_FILE = "tfidf.json"
WEIGHTS_FILE = "tfidf.safetensors"
VECTORIZER_SETTINGS = ("ngram_range", "sublinear_tf", "lowercase", "token_pattern", "norm")


class TfidfScorer:
    """Logits = TF-IDF(text) @ coef.T + intercept."""

    def __init__(self, vectorizer: TfidfVectorizer, coef: np.ndarray, intercept: np.ndarray):
        self.vectorizer = vectorizer
        self.coef = coef
        self.intercept = intercept

    @classmethod
    def load(cls, model_dir: Path, metadata: ModelMetadata, batch_size: int = 32) -> TfidfScorer:
        saved = json.loads((model_dir / VECTORIZER_FILE).read_text())
        weights = load_file(str(model_dir / WEIGHTS_FILE))
        settings = saved["settings"]
        vectorizer = TfidfVectorizer(**{**settings, "ngram_range": tuple(settings["ngram_range"])})
        vectorizer.vocabulary_ = saved["vocabulary"]
        vectorizer.idf_ = weights["idf"]
        if weights["coef"].shape[0] != len(metadata.labels):
            raise ValueError(f"{model_dir}: {weights['coef'].shape[0]} classes but labels {metadata.labels}")
        return cls(vectorizer, weights["coef"], weights["intercept"])

    def score(self, texts: Sequence[str]) -> Scores:
        """Bag-of-words reads every token: no text is truncated."""
        features = self.vectorizer.transform(list(texts))
        logits = np.asarray(features @ self.coef.T + self.intercept, dtype=np.float64)
        return Scores(logits, np.zeros(len(logits), dtype=bool))

    def save(self, model_dir: Path) -> None:
        settings = {key: self.vectorizer.get_params()[key] for key in VECTORIZER_SETTINGS}
        vocabulary = {term: int(index) for term, index in self.vectorizer.vocabulary_.items()}
        (model_dir / VECTORIZER_FILE).write_text(json.dumps({"settings": settings, "vocabulary": vocabulary}))
        # safetensors writes the raw buffer: Fortran-ordered arrays (as scikit-learn returns) must be copied.
        tensors = {"idf": self.vectorizer.idf_, "coef": self.coef, "intercept": self.intercept}
        contiguous = {name: np.ascontiguousarray(value, dtype=np.float64) for name, value in tensors.items()}
        save_file(contiguous, str(model_dir / WEIGHTS_FILE))


def fit(frame: pd.DataFrame, config: BaselineConfig) -> TfidfScorer:
    vectorizer = TfidfVectorizer(
        ngram_range=(1, config.max_ngram),
        min_df=config.min_df,
        max_features=config.max_features,
        sublinear_tf=True,
    )
    features = vectorizer.fit_transform(frame["text"])
    classifier = LogisticRegression(C=config.c, max_iter=2000, class_weight=config.class_weight)
    classifier.fit(features, frame["label"])
    if list(classifier.classes_) != list(range(len(LABELS))):
        raise ValueError(f"training data must hold every label, found classes {list(classifier.classes_)}")
    return TfidfScorer(
        vectorizer, classifier.coef_.astype(np.float64), classifier.intercept_.astype(np.float64)
    )


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
