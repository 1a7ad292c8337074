"""The baseline model kind: TF-IDF (word 1-2 grams) + multinomial logistic regression.

Stored without pickles: the vocabulary and vectorizer settings as JSON, the IDF weights and the
regression coefficients as safetensors. Served by the same inference core, pyfunc, predictor and
handler as the transformer (the `tfidf` entry of `restar.model_kinds`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from restar.config import BaselineConfig
from restar.labels import LABELS
from restar.model.inference import ModelMetadata, Scores

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
