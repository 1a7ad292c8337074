"""Score the trained model on the held-out eval split: metrics JSON and plots, logged to the training run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from restar.labels import LABELS
from restar.model import determinism
from restar.model.calibration import expected_calibration_error, reliability_bins, softmax
from restar.model.inference import InferenceCore, ModelMetadata
from restar.model.onnx_scorer import TORCH
from restar.tracking import configure_tracking, read_run_record
from restar.training.metrics import classification_metrics, with_prefix

logger = logging.getLogger(__name__)

PLOT_FILES = ("confusion_matrix.png", "risk_coverage.png", "reliability.png")
# What `dvc metrics show` lists (metrics.json): the same few keys for every run, so its columns line up.
# metrics_dev.json and metrics_eval.json keep every metric for the registry, MLflow and gates.
HEADLINE_METRICS = (
    "dev_macro_f1",
    "eval_accuracy",
    "eval_macro_f1",
    "eval_coverage",
    "eval_selective_accuracy",
    "eval_ece",
)


def plot_confusion_matrix(labels: np.ndarray, predicted: np.ndarray, path: Path) -> None:
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(
        labels, predicted, labels=range(len(LABELS)), display_labels=LABELS, ax=ax, colorbar=False
    )
    ax.set_title("Eval confusion matrix (argmax, before abstention)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and selective risk when keeping the k most confident rows, k = 1..n."""
    order = np.argsort(-probs.max(axis=1), kind="stable")
    errors = probs.argmax(axis=1)[order] != labels[order]
    kept = np.arange(1, len(labels) + 1)
    return kept / len(labels), np.cumsum(errors) / kept


def plot_risk_coverage(probs: np.ndarray, labels: np.ndarray, threshold: float, path: Path) -> None:
    coverage, risk = risk_coverage(probs, labels)
    at_threshold = (probs.max(axis=1) >= threshold).mean()
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    ax.plot(coverage, risk, label="selective risk")
    ax.axvline(at_threshold, color="grey", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("coverage (share not abstained)")
    ax.set_ylabel("error rate on kept rows")
    ax.set_title("Risk-coverage on eval")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_reliability(
    raw: np.ndarray, calibrated: np.ndarray, labels: np.ndarray, metadata: ModelMetadata, path: Path
) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    after = f"after (T={metadata.temperature:.2f}{', class biases' if metadata.class_bias else ''})"
    for probs, name in ((raw, "before (T=1)"), (calibrated, after)):
        confidence, accuracy = reliability_bins(probs, labels)
        ece = expected_calibration_error(probs, labels)
        ax.plot(confidence, accuracy, marker="o", label=f"{name}, ECE {ece:.3f}")
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title("Reliability on eval")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def reference_accuracy(model_dir: Path, frame: pd.DataFrame, accuracy: float) -> dict[str, float]:
    """Eval accuracy of the PyTorch fp32 weights, which an ONNX backend must stay close to."""
    reference = InferenceCore.from_dir(model_dir, batch_size=64, backend=TORCH)
    predicted = reference.probabilities(frame["text"].tolist()).argmax(axis=1)  # class biases can move argmax
    reference_accuracy = float((predicted == frame["label"].to_numpy()).mean())
    return {
        "eval_reference_accuracy": round(reference_accuracy, 6),
        "eval_backend_accuracy_delta": round(accuracy - reference_accuracy, 6),
    }


def headline_metrics(run_dir: Path, eval_metrics: dict[str, float]) -> dict[str, float]:
    """HEADLINE_METRICS from this evaluation and the run's metrics_dev.json (where training wrote one)."""
    dev_file = run_dir / "metrics_dev.json"
    dev = json.loads(dev_file.read_text()) if dev_file.is_file() else {}
    found = dev | eval_metrics
    return {name: found[name] for name in HEADLINE_METRICS if name in found}


def evaluate(model_dir: Path, data_dir: Path, out_dir: Path) -> dict[str, float]:
    """Write metrics_eval.json, metrics.json (the headline for `dvc metrics show`) and plots/*.png
    under out_dir, and log the metrics and plots to the training run."""
    configure_tracking()  # an unreachable tracking server stops here, before any work
    core = InferenceCore.from_dir(model_dir, batch_size=64)
    frame = pd.read_parquet(data_dir / "eval.parquet")
    labels = frame["label"].to_numpy()
    logits = core.logits(frame["text"].tolist())
    raw, calibrated = softmax(logits), core.calibrate(logits)

    metrics = with_prefix(classification_metrics(calibrated, labels, core.metadata.abstain_threshold), "eval")
    metrics["eval_ece_uncalibrated"] = round(expected_calibration_error(raw, labels), 6)
    metrics["eval_rows"] = len(frame)
    if core.metadata.backend != TORCH:
        metrics.update(reference_accuracy(model_dir, frame, metrics["eval_accuracy"]))
    metrics.update(determinism.measure(model_dir, determinism.spread_by_length(frame["text"].tolist())))
    logger.info("eval metrics %s", metrics)

    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(labels, calibrated.argmax(axis=1), plots_dir / "confusion_matrix.png")
    plot_risk_coverage(calibrated, labels, core.metadata.abstain_threshold, plots_dir / "risk_coverage.png")
    plot_reliability(raw, calibrated, labels, core.metadata, plots_dir / "reliability.png")
    (out_dir / "metrics_eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    headline = headline_metrics(out_dir, metrics)
    (out_dir / "metrics.json").write_text(json.dumps(headline, indent=2) + "\n")

    run_id = read_run_record(out_dir / "mlflow_run.json")["run_id"]
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out_dir / "metrics_eval.json"))
        mlflow.log_artifacts(str(plots_dir), artifact_path="plots")
    return metrics
