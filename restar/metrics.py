"""Quality metrics under the names DESIGN.md fixes (prefixed by split: dev_, eval_)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from restar.calibration import expected_calibration_error, fit_calibration, out_of_fold_ece, softmax
from restar.labels import LABELS

MIN_CROSS_FIT_ROWS = 50  # fewer dev rows: the fit is kept without the out-of-fold check


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

    The fit is kept only when it lowers dev ECE out of fold (`out_of_fold_ece`): an already calibrated
    model's fit follows noise, which raises ECE on new data. Otherwise T = 1 and no biases.
    """
    uncalibrated_ece = expected_calibration_error(softmax(logits), labels)
    checked = len(labels) >= MIN_CROSS_FIT_ROWS
    fitted_ece = out_of_fold_ece(logits, labels, with_bias) if checked else None
    kept = fitted_ece is None or fitted_ece < uncalibrated_ece
    temperature, bias = fit_calibration(logits, labels, with_bias) if kept else (1.0, ())
    calibrated = softmax(logits, temperature, bias)
    metrics = with_prefix(classification_metrics(calibrated, labels, threshold), "dev")
    metrics["dev_ece_uncalibrated"] = round(uncalibrated_ece, 6)
    if fitted_ece is not None:
        metrics["dev_ece_out_of_fold"] = round(fitted_ece, 6)
    metrics["calibration_kept"] = int(kept)
    metrics["temperature"] = round(temperature, 6)
    if bias:
        metrics.update({f"class_bias_{name}": value for name, value in zip(LABELS, bias, strict=True)})
    return temperature, bias, metrics
