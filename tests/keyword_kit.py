"""A keyword stand-in for the model in the business commands' tests (tests/test_rank_eval.py,
tests/test_inconsistencies.py): its reading of each text is known in advance from the words it holds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pytest

from restar.batch.predictor import PredictFn
from restar.labels import DEFAULT_ABSTAIN_THRESHOLD
from restar.model.inference import decide

Probs = tuple[float, float, float]  # negative, neutral, positive


def keyword_model(probs: Mapping[str, Probs], unsure: Probs) -> PredictFn:
    """A predictor that reads each text as the first keyword of `probs` it holds, else as `unsure`;
    blank texts are not scored (NaN probabilities)."""

    def keyword_predict(texts: Sequence[str], titles: Sequence[str] | None = None) -> pd.DataFrame:
        rows = []
        for text in texts:
            found = [word_probs for word, word_probs in probs.items() if word in text]
            rows.append(found[0] if found else (math.nan,) * 3 if not text.strip() else unsure)
        decided = decide(np.array(rows, dtype="float64").reshape(-1, 3), DEFAULT_ABSTAIN_THRESHOLD)
        return decided.assign(truncated=False)  # every prediction says whether its text was cut

    return keyword_predict


def record_loads(monkeypatch: pytest.MonkeyPatch, target: str, model: PredictFn) -> list[str]:
    """Make the load_predict_fn at `target` (dotted) give `model`; returns the URIs it was asked to load."""
    loaded: list[str] = []

    def load(model_uri: str) -> PredictFn:
        loaded.append(model_uri)
        return model

    monkeypatch.setattr(target, load)
    return loaded
