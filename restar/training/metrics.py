"""Quality metrics under the names DESIGN.md fixes (prefixed by split: dev_, eval_)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from restar.labels import LABELS
from restar.model.calibration import (
    cross_fitted,
    expected_calibration_error,
    fit_calibration,
    share_with_lower_ece,
    softmax,
)

MIN_CROSS_FIT_ROWS = 50  # fewer dev rows: the fit is kept unchecked
KEEP_CONFIDENCE = 0.95  # share of bootstrap resamples in which the calibration must lower dev ECE


def classification_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """accuracy, macro_f1, f1_<label>, coverage, selective_accuracy and ece for calibrated `probs`."""
    predicted = probs.argmax(axis=1)
    kept = probs.max(axis=1) >= threshold
    per_class = f1_score(labels, predicted, labels=range(len(LABELS)), average=None, zero_division=0)
    metrics = {
        "accuracy": accuracy_score(labels, predicted),
        "macro_f1": f1_score(labels, predicted, labels=range(len(LABELS)), average="macro", zero_division=0),
        **{f"f1_{name}": score for name, score in zip(LABELS, per_class, strict=True)},
        "coverage": kept.mean(),
        "selective_accuracy": (predicted[kept] == labels[kept]).mean() if kept.any() else 0.0,
        "ece": expected_calibration_error(probs, labels),
    }
    return {name: round(float(value), 6) for name, value in metrics.items()}


def with_prefix(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_{name}": value for name, value in metrics.items()}


def calibrate_on_dev(
    logits: np.ndarray, labels: np.ndarray, threshold: float, with_bias: bool = False
) -> tuple[float, tuple[float, ...], dict[str, float]]:
    """Fit the temperature (and class biases) on dev logits; return them with the dev metrics.

    The fit is kept only when it lowers dev ECE beyond dev's sampling noise: cross-fitted on dev (each
    row calibrated by a fit on other rows), its ECE must be lower than the raw softmax's in at least
    `KEEP_CONFIDENCE` of paired bootstrap resamples. An already calibrated model's fit follows noise
    and raises ECE on new data; such a model serves its own logits (T = 1, no biases).
    """
    raw = softmax(logits)
    checked = len(labels) >= MIN_CROSS_FIT_ROWS
    cross_fit = cross_fitted(logits, labels, with_bias) if checked else None
    confidence = share_with_lower_ece(cross_fit, raw, labels) if checked else 1.0
    kept = confidence >= KEEP_CONFIDENCE
    temperature, bias = fit_calibration(logits, labels, with_bias) if kept else (1.0, ())
    calibrated = softmax(logits, temperature, bias)
    metrics = with_prefix(classification_metrics(calibrated, labels, threshold), "dev")
    metrics["dev_ece_uncalibrated"] = round(expected_calibration_error(raw, labels), 6)
    if cross_fit is not None:
        metrics["dev_ece_cross_fitted"] = round(expected_calibration_error(cross_fit, labels), 6)
        metrics["calibration_confidence"] = round(confidence, 6)
    metrics["calibration_kept"] = int(kept)
    metrics["temperature"] = round(temperature, 6)
    if bias:
        metrics.update({f"class_bias_{name}": value for name, value in zip(LABELS, bias, strict=True)})
    return temperature, bias, metrics
