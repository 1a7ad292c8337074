"""The TF-IDF baseline: a second model kind behind the same inference core and pyfunc."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from restar.config import BaselineConfig
from restar.labels import ABSTAIN, OUTPUT_COLUMNS
from restar.model.inference import InferenceCore, ModelMetadata, model_kinds
from restar.model.pyfunc import log_pyfunc
from restar.model.tfidf import TfidfScorer, fit
from tests.served import predict_in_fresh_process

TEXTS = ["love it, works great", "broke after a day, awful", "it is okay I guess", "", "great value"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    words = {
        0: ["awful", "broke", "refund", "terrible"],
        1: ["okay", "average", "fine", "meh"],
        2: ["love", "great", "perfect", "excellent"],
    }
    rows = [(" ".join(rng.choice(words[label], 3)) + " product", label) for label in rng.choice(3, 300)]
    return pd.DataFrame(rows, columns=["text", "label"])


@pytest.fixture(scope="module")
def model_dir(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tfidf") / "model"
    path.mkdir()
    fit(frame, BaselineConfig(min_df=1)).save(path)
    ModelMetadata(temperature=0.8, max_length=0, base_model="tfidf-logreg", kind="tfidf").save(path)
    return path


def test_kinds_are_registered() -> None:
    assert {"transformer", "tfidf"} <= set(model_kinds())


def test_save_and_load_give_the_same_logits(frame: pd.DataFrame, model_dir: Path) -> None:
    fitted = fit(frame, BaselineConfig(min_df=1))
    loaded = InferenceCore.from_dir(model_dir)
    assert isinstance(loaded.scorer, TfidfScorer)
    np.testing.assert_allclose(loaded.logits(TEXTS[:3]), fitted.score(TEXTS[:3]).logits, atol=1e-9)
    assert not [p for p in model_dir.iterdir() if p.suffix in (".pkl", ".pickle", ".joblib")]


def test_predictions_use_the_shared_decision_rules(model_dir: Path) -> None:
    out = InferenceCore.from_dir(model_dir).predict(TEXTS)
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert out.loc[3, "label"] == ABSTAIN
    assert out.loc[0, "label"] == "positive"
    assert out.loc[1, "label"] == "negative"


def test_unknown_kind_is_named(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    metadata = json.loads((model_dir / "restar.json").read_text())
    (broken / "restar.json").write_text(json.dumps({**metadata, "kind": "abacus"}))
    with pytest.raises(ValueError, match="unknown model kind 'abacus'"):
        InferenceCore.from_dir(broken)


def test_same_pyfunc_serves_the_baseline_in_a_fresh_process(model_dir: Path, tracking_uri: str) -> None:
    with mlflow.start_run() as run:
        log_pyfunc(model_dir)
    served = predict_in_fresh_process(f"runs:/{run.info.run_id}/model", TEXTS)
    local = InferenceCore.from_dir(model_dir).predict(TEXTS)
    np.testing.assert_allclose(
        served[["p_neg", "p_neu", "p_pos"]].to_numpy(float),
        local[["p_neg", "p_neu", "p_pos"]].to_numpy(float),
        atol=1e-9,
    )
