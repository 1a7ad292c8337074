"""Temperature scaling (optionally with per-class biases) and expected calibration error."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import torch


def softmax(logits: np.ndarray, temperature: float = 1.0, bias: Sequence[float] = ()) -> np.ndarray:
    """softmax(logits / temperature + bias); an empty bias adds nothing."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if len(bias):
        scaled = scaled + np.asarray(bias, dtype=np.float64)
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of softmax(logits / T)."""
    return fit_calibration(logits, labels, with_bias=False, max_iter=max_iter)[0]


def fit_calibration(
    logits: np.ndarray, labels: np.ndarray, with_bias: bool, max_iter: int = 200
) -> tuple[float, tuple[float, ...]]:
    """Temperature (and, with_bias, per-class biases) minimising the NLL of softmax(logits / T + b).

    The biases are bias-corrected temperature scaling (Alexandari et al., 2020): they also undo a
    shift between the class priors the network learnt and those of dev. They are centred to sum to 0.
    """
    # Copies: the arrays may be read-only views of a (copy-on-write) pandas column, which torch won't share.
    logits_t = torch.from_numpy(np.array(logits, dtype=np.float64))
    labels_t = torch.from_numpy(np.array(labels, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # optimise log T so T stays positive
    bias = torch.zeros(logits_t.shape[1], dtype=torch.float64, requires_grad=with_bias)
    parameters = [log_t, bias] if with_bias else [log_t]
    optimizer = torch.optim.LBFGS(parameters, lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp() + bias, labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    centred = (bias - bias.mean()).detach().numpy() if with_bias else np.array([])
    return float(log_t.exp().item()), tuple(round(float(b), 6) for b in centred)


def cross_fitted(
    logits: np.ndarray, labels: np.ndarray, with_bias: bool, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Calibrated probabilities of rows the calibration was not fit on: each of `folds` random parts of
    (logits, labels) is calibrated by a fit on the other parts."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    calibrated = np.empty(logits.shape, dtype=np.float64)
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        temperature, bias = fit_calibration(logits[rest], labels[rest], with_bias)
        calibrated[part] = softmax(logits[part], temperature, bias)
    return calibrated


def share_with_lower_ece(
    probs: np.ndarray, reference: np.ndarray, labels: np.ndarray, resamples: int = 200, seed: int = 0
) -> float:
    """In what share of bootstrap resamples of the rows `probs` has a lower ECE than `reference` (paired:
    both scored on the same resampled rows)."""
    rng = np.random.default_rng(seed)
    lower = 0
    for _ in range(resamples):
        rows = rng.integers(0, len(labels), len(labels))
        ece = expected_calibration_error(probs[rows], labels[rows])
        lower += ece < expected_calibration_error(reference[rows], labels[rows])
    return lower / resamples


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean confidence and accuracy (NaN for empty bins), for reliability diagrams."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    mean_conf = np.full(bins, np.nan)
    accuracy = np.full(bins, np.nan)
    for i, (low, high) in enumerate(pairwise(edges)):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            mean_conf[i] = confidence[in_bin].mean()
            accuracy[i] = correct[in_bin].mean()
    return mean_conf, accuracy
