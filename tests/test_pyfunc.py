import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from restar.config import CleanConfig
from restar.data.freeze import clean_rows
from restar.labels import ABSTAIN, OUTPUT_COLUMNS
from restar.model.inference import InferenceCore, decide
from restar.model.pyfunc import log_pyfunc, save_pyfunc
from tests.served import logged_pyfunc, predict_in_fresh_process
from tests.upstream_rows import markup_rows

TEXTS = [
    "Absolutely love this subscription box, great value!",
    "It was okay. Some items were nice, others not.",
    "Arrived broken and customer service never answered.",
    "",
    "🔥🔥🔥",
]

PROBS = ["p_neg", "p_neu", "p_pos"]


def test_pyfunc_in_a_fresh_process_matches_the_core(tiny_model_dir: Path, tracking_uri: str) -> None:
    with mlflow.start_run() as run:
        info = log_pyfunc(tiny_model_dir)
    assert info.signature.inputs.input_names() == ["text", "title"]
    assert info.signature.inputs.required_input_names() == ["text"]
    assert info.saved_input_example_info is not None

    served = predict_in_fresh_process(f"runs:/{run.info.run_id}/model", TEXTS)
    local = InferenceCore.from_dir(tiny_model_dir).predict(TEXTS)

    assert list(served.columns) == list(OUTPUT_COLUMNS)
    assert served["label"].tolist() == local["label"].tolist()
    probs = ["p_neg", "p_neu", "p_pos"]
    np.testing.assert_allclose(served[probs].to_numpy(float), local[probs].to_numpy(float), atol=1e-5)


def test_logged_model_carries_calibration_and_no_pickle(tiny_model_dir: Path, tracking_uri: str) -> None:
    with mlflow.start_run():
        info = log_pyfunc(tiny_model_dir)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    files = {path.name for path in local.rglob("*")}
    assert "restar.json" in files
    assert "model.safetensors" in files
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".bin"))]
    metadata = json.loads(next(local.rglob("restar.json")).read_text())
    assert metadata["abstain_threshold"] == 0.65
    assert metadata["temperature"] == 1.3


def test_a_version_saved_before_the_subpackages_still_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Versions registered before restar/ had subpackages carry an entry script importing
    `restar.pyfunc`; they still load, and answer as the core does."""
    saved = tmp_path / "old_version"
    save_pyfunc(tiny_model_dir, saved)
    entry = saved / "pyfunc_entry.py"
    entry.write_text(
        entry.read_text().replace("from restar.model.pyfunc import", "from restar.pyfunc import")
    )
    assert "from restar.pyfunc import RestarPyfunc" in entry.read_text()

    served = predict_in_fresh_process(str(saved), TEXTS)
    local = InferenceCore.from_dir(tiny_model_dir).predict(TEXTS)
    assert served["label"].tolist() == local["label"].tolist()


@pytest.fixture(scope="module")
def logged_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return logged_pyfunc(tiny_model_dir, tmp_path_factory.mktemp("pyfunc_store"))


def test_pyfunc_on_raw_upstream_rows_predicts_what_evaluate_scores_on_frozen_rows(
    tiny_model_dir: Path, reviews_dir: Path, logged_model
) -> None:
    raw = markup_rows(reviews_dir)  # upstream rows as they come: raw HTML, entities, rating titles, empty
    frozen, _ = clean_rows(raw, CleanConfig())  # the freeze code path; keeps the raw rows' index

    # As restar.training.evaluate scores the frozen eval split: logits of the frozen texts,
    # calibrated, abstention.
    core = InferenceCore.from_dir(tiny_model_dir, batch_size=64)
    calibrated = core.calibrate(core.logits(frozen["text"].tolist()))
    expected = decide(calibrated, core.metadata.abstain_threshold, core.metadata.labels)

    served = logged_model.predict(raw)  # every upstream column, as read; the pyfunc takes text and title
    assert len(served) == len(raw)
    answered = served.loc[frozen.index].reset_index(drop=True)
    assert answered["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(answered[PROBS].to_numpy(float), expected[PROBS].to_numpy(float), atol=1e-6)

    empty = raw.index[raw["text"].fillna("").str.strip() == ""]
    assert len(empty) and (served.loc[empty, "label"] == ABSTAIN).all()
    # The comparison has teeth: without preparation the same rows score differently.
    changed = (raw.loc[frozen.index, "text"] != frozen["text"]).to_numpy()
    unprepared = core.probabilities(raw.loc[frozen.index, "text"].tolist())
    differs = np.abs(unprepared - calibrated).max(axis=1) > 1e-4
    assert differs.sum() >= 10 and not differs[~changed].any()


def test_pyfunc_takes_text_alone_or_with_a_title(tiny_model_dir: Path, logged_model) -> None:
    texts = ["Broke in a day.<br />Avoid", "Love it &amp; more"]
    core = InferenceCore.from_dir(tiny_model_dir)
    alone = logged_model.predict(pd.DataFrame({"text": texts}))
    titled = logged_model.predict(pd.DataFrame({"text": texts, "title": ["Five Stars", None]}))
    composed = logged_model.predict(pd.DataFrame({"text": texts, "title": ["Bad", "Good!"]}))
    expected = core.probabilities(["Broke in a day. Avoid", "Love it & more"])
    np.testing.assert_allclose(alone[PROBS].to_numpy(float), expected, atol=1e-6)
    np.testing.assert_allclose(titled[PROBS].to_numpy(float), expected, atol=1e-6)  # rating title dropped
    np.testing.assert_allclose(
        composed[PROBS].to_numpy(float),
        core.probabilities(["Bad. Broke in a day. Avoid", "Good! Love it & more"]),
        atol=1e-6,
    )
