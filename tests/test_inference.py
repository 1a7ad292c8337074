import dataclasses
import itertools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restar.labels import ABSTAIN, LABELS, OUTPUT_COLUMNS
from restar.model.calibration import expected_calibration_error, fit_calibration, fit_temperature, softmax
from restar.model.inference import InferenceCore, ModelMetadata, decide, is_blank, padded_batches
from restar.training.metrics import calibrate_on_dev, classification_metrics
from tests.helpers import METRIC_NAMES


def test_abstention_boundary_is_exactly_the_threshold() -> None:
    probs = np.array(
        [
            [0.65, 0.20, 0.15],  # exactly at the threshold: answered
            [0.15, 0.20, 0.65],
            [0.6499999, 0.2000001, 0.15],  # just below: abstain
            [0.34, 0.33, 0.33],
            [0.05, 0.90, 0.05],
        ]
    )
    frame = decide(probs, threshold=0.65)
    assert frame["label"].tolist() == ["negative", "positive", ABSTAIN, ABSTAIN, "neutral"]
    assert frame["confidence"].tolist() == pytest.approx([0.65, 0.65, 0.6499999, 0.34, 0.90])
    assert frame[["p_neg", "p_neu", "p_pos"]].to_numpy() == pytest.approx(probs)


def test_threshold_comes_from_the_model_metadata(tiny_model_dir: Path) -> None:
    core = InferenceCore.from_dir(tiny_model_dir)
    texts = ["great", "awful product, broke", "it is fine I guess"]
    probs = core.probabilities(texts)
    strict = decide(probs, threshold=0.999)
    assert (strict["label"] == ABSTAIN).all()
    assert (
        core.predict(texts)["label"].tolist()
        == decide(probs, core.metadata.abstain_threshold)["label"].tolist()
    )


@pytest.mark.parametrize("value", [None, float("nan"), "", "   \n\t"])
def test_blank_values(value) -> None:
    assert is_blank(value)


def test_core_predicts_every_row_in_order(tiny_model_dir: Path) -> None:
    core = InferenceCore.from_dir(tiny_model_dir, batch_size=2)
    texts = ["short", None, "a much longer review text " * 30, "", "🔥🔥🔥", "medium length text here"]
    out = core.predict(texts)
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert len(out) == len(texts)
    assert out.loc[[1, 3], "label"].tolist() == [ABSTAIN, ABSTAIN]
    assert out.loc[[1, 3], "p_neg"].isna().all()
    answered = out.drop(index=[1, 3])
    assert answered[["p_neg", "p_neu", "p_pos"]].sum(axis=1).to_numpy() == pytest.approx(1.0)
    # Batching sorts by length internally; each row must still get its own text's probabilities.
    single = [core.probabilities([text])[0] for text in ["short", "🔥🔥🔥"]]
    assert out.loc[0, ["p_neg", "p_neu", "p_pos"]].to_numpy(float) == pytest.approx(single[0], abs=1e-5)
    assert out.loc[4, ["p_neg", "p_neu", "p_pos"]].to_numpy(float) == pytest.approx(single[1], abs=1e-5)


def test_texts_longer_than_the_model_reads_are_flagged_truncated(tiny_model_dir: Path) -> None:
    core = InferenceCore.from_dir(tiny_model_dir)
    limit = core.metadata.max_length
    long_text = "word " * (2 * limit)
    out = core.predict(["short and sweet", long_text, None])
    assert out["truncated"].tolist() == [False, True, False]  # a blank row is never scored, so never cut
    # Only the first max_length tokens count: the long text scores as its own truncated beginning.
    cut = core.scorer.tokenizer.decode(
        core.scorer.tokenizer(long_text, truncation=True, max_length=limit)["input_ids"],
        skip_special_tokens=True,
    )
    assert out.loc[1, ["p_neg", "p_neu", "p_pos"]].to_numpy(float) == pytest.approx(
        core.probabilities([cut])[0], abs=1e-5
    )


def test_a_text_of_exactly_max_length_tokens_is_not_truncated(tiny_model_dir: Path) -> None:
    core = InferenceCore.from_dir(tiny_model_dir)
    limit = core.metadata.max_length
    counts = {n: len(core.scorer.tokenizer("word " * n)["input_ids"]) for n in range(limit - 4, limit + 2)}
    exact = next(n for n, count in counts.items() if count == limit)
    assert core.scorer.score(["word " * exact, "word " * (exact + 1)]).truncated.tolist() == [False, True]


def test_temperature_applies_to_logits(tiny_model_dir: Path) -> None:
    core = InferenceCore.from_dir(tiny_model_dir)
    logits = core.logits(["nice"])
    assert core.probabilities(["nice"]) == pytest.approx(softmax(logits, core.metadata.temperature), abs=1e-6)
    assert core.metadata.temperature == pytest.approx(1.3)


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, size=(4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    # Over-confident logits (x2.5): the fitted temperature should undo the scaling.
    fitted = fit_temperature(true_logits * 2.5, labels)
    assert fitted == pytest.approx(2.5, rel=0.1)
    before = expected_calibration_error(softmax(true_logits * 2.5), labels)
    after = expected_calibration_error(softmax(true_logits * 2.5, fitted), labels)
    assert after < before


def test_fit_calibration_recovers_a_prior_shift() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 2, size=(6000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    # A network that learnt too little of class 0 and too much of class 1: biases undo the shift.
    shifted = true_logits + np.array([-0.6, 0.5, 0.1])
    temperature, bias = fit_calibration(shifted, labels, with_bias=True)
    assert temperature == pytest.approx(1.0, rel=0.1)
    assert bias == pytest.approx([0.6, -0.5, -0.1], abs=0.15)
    assert sum(bias) == pytest.approx(0.0, abs=1e-5)
    assert fit_calibration(shifted, labels, with_bias=False)[1] == ()
    plain_accuracy = (shifted.argmax(axis=1) == labels).mean()
    assert (softmax(shifted, temperature, bias).argmax(axis=1) == labels).mean() > plain_accuracy


def test_calibrate_on_dev_reports_biases_only_when_fitted() -> None:
    rng = np.random.default_rng(2)
    true_logits = rng.normal(0, 2, size=(500, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    overconfident = true_logits * 2.5 + np.array([0.8, -0.4, -0.4])
    _, bias, metrics = calibrate_on_dev(overconfident, labels, threshold=0.65)
    assert bias == () and metrics["calibration_kept"] == 1 and metrics["temperature"] > 2
    assert not any(k.startswith("class_bias") for k in metrics)
    _, bias, metrics = calibrate_on_dev(overconfident, labels, threshold=0.65, with_bias=True)
    assert len(bias) == 3 and metrics["calibration_kept"] == 1
    assert [metrics[f"class_bias_{name}"] for name in LABELS] == list(bias)
    assert metrics["dev_ece_cross_fitted"] < metrics["dev_ece_uncalibrated"]


def test_an_already_calibrated_model_keeps_its_logits() -> None:
    """A fit on calibrated logits follows dev's noise; it is dropped when it does not lower dev ECE beyond
    that noise, so the served probabilities are the model's own (T = 1, no biases)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, size=(500, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits)])
    temperature, bias, metrics = calibrate_on_dev(logits, labels, threshold=0.65, with_bias=True)
    assert (temperature, bias, metrics["calibration_kept"]) == (1.0, (), 0)
    assert metrics["calibration_confidence"] < 0.95 and metrics["dev_ece_uncalibrated"] == metrics["dev_ece"]


def test_class_bias_applies_after_the_temperature(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    ModelMetadata(temperature=1.3, class_bias=(0.5, 0.0, -0.5), max_length=64).save(model_dir)
    core = InferenceCore.from_dir(model_dir)
    assert core.metadata.class_bias == (0.5, 0.0, -0.5)
    logits = core.logits(["nice"])
    expected = softmax(logits / 1.3 + np.array([0.5, 0.0, -0.5]))
    assert core.probabilities(["nice"]) == pytest.approx(expected, abs=1e-6)


def test_metrics_names_and_values() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.5, 0.4], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
    labels = np.array([0, 1, 2, 2])
    metrics = classification_metrics(probs, labels, threshold=0.65)
    assert set(metrics) == set(METRIC_NAMES)
    assert metrics["accuracy"] == 0.75
    assert metrics["coverage"] == 0.75
    assert metrics["selective_accuracy"] == pytest.approx(2 / 3, abs=1e-6)


def test_core_prepares_texts_as_freeze_did(tiny_model_dir: Path) -> None:
    core = InferenceCore.from_dir(tiny_model_dir)
    texts = ["Broke.<br /><br />Avoid &amp; return", "Love it", "<br />", None]
    titles = ["Bad box", "Five Stars", "Great", "Great"]
    out = core.predict(texts, titles)
    expected = core.probabilities(["Bad box. Broke. Avoid & return", "Love it"])
    assert out.loc[:1, ["p_neg", "p_neu", "p_pos"]].to_numpy(float) == pytest.approx(expected, abs=1e-6)
    assert out.loc[2:, "label"].tolist() == [ABSTAIN, ABSTAIN]  # a title without a body is no review
    frame = pd.DataFrame({"title": titles, "text": texts})
    pd.testing.assert_frame_equal(core.predict_frame(frame), out)
    pd.testing.assert_frame_equal(core.predict_frame(frame[["text"]]), core.predict(texts))


def test_the_model_keeps_rating_titles_when_its_data_kept_them(tiny_model_dir: Path, tmp_path: Path) -> None:
    """restar.json's drop_rating_titles (copied from the prepared data's stats.json) decides."""
    kept = tmp_path / "model"
    shutil.copytree(tiny_model_dir, kept)
    metadata = ModelMetadata.load(kept)
    dataclasses.replace(metadata, drop_rating_titles=False).save(kept)
    probs = ["p_neg", "p_neu", "p_pos"]
    dropping, keeping = InferenceCore.from_dir(tiny_model_dir), InferenceCore.from_dir(kept)
    assert metadata.drop_rating_titles
    as_sent = keeping.predict(["Love it"], ["Five Stars"])[probs].to_numpy(float)
    assert as_sent == pytest.approx(keeping.probabilities(["Five Stars. Love it"]), abs=1e-6)
    dropped = dropping.predict(["Love it"], ["Five Stars"])[probs].to_numpy(float)
    assert dropped == pytest.approx(dropping.probabilities(["Love it"]), abs=1e-6)


def brute_force_work(lengths: list[int], max_size: int, overhead: float) -> float:
    """The least work over every way of cutting the length-sorted texts into consecutive batches."""
    ordered = sorted(lengths, reverse=True)
    least = 0.0 if not ordered else float("inf")
    for cuts in itertools.product([False, True], repeat=max(0, len(ordered) - 1)):
        bounds = [0, *[i + 1 for i, cut in enumerate(cuts) if cut], len(ordered)]
        batches = list(itertools.pairwise(bounds))
        if ordered and all(end - start <= max_size for start, end in batches):
            least = min(least, sum(overhead + (end - start) * ordered[start] for start, end in batches))
    return least


@given(
    st.lists(st.integers(min_value=1, max_value=128), max_size=9),
    st.integers(min_value=1, max_value=6),
    st.sampled_from([0, 16, 64, 1000]),
)
@settings(max_examples=200, deadline=None)
def test_padded_batches_cover_every_text_once_with_the_least_work(lengths, max_size, overhead) -> None:
    batches = padded_batches(lengths, max_size, overhead)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(0 < len(batch) <= max_size for batch in batches)
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(lengths, reverse=True)  # longest first
    work = sum(overhead + len(batch) * max(lengths[i] for i in batch) for batch in batches)
    assert work == pytest.approx(brute_force_work(lengths, max_size, overhead))


def test_short_texts_leave_a_batch_of_long_ones() -> None:
    # Two long reviews and six short ones: equal slices of 4 would pad two short ones to 96 tokens.
    lengths = [96, 12, 95, 10, 11, 12, 9, 10]
    assert padded_batches(lengths, max_size=4, overhead=64) == [[0, 2], [1, 5, 4], [3, 7, 6]]
    assert padded_batches(lengths, max_size=8, overhead=64) == [[0, 2], [1, 5, 4, 3, 7, 6]]
    assert padded_batches([], max_size=8) == []
