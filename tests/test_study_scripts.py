"""scripts/learning_curves.py and scripts/error_audit.py end to end on tiny models and data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from restar.config import PACKAGED_ENCODER, ModelConfig
from restar.training.fetch_model import fetch_model

REPO_ROOT = Path(__file__).resolve().parents[1]

TEXTS = {
    0: ["Broke after two days, total waste of money.", "Terrible quality, returned it at once."],
    1: ["It is okay, nothing special.", "Average product, does the job but feels cheap."],
    2: [
        "Love it, works perfectly every day.",
        "Excellent quality, would buy again.",
        "Great value, five stars.",
    ],
}


def write_split(path: Path, copies: int) -> None:
    rows = [(text, label, f"B{label}{i}", 4.0 if label == 2 else 3.0 - 2 * (label == 0))
            for label, texts in TEXTS.items() for i, text in enumerate(texts)] * copies  # fmt: skip
    frame = pd.DataFrame(rows, columns=["text", "label", "parent_asin", "rating"])
    frame["asin"], frame["user_id"] = frame["parent_asin"], "U"
    frame.to_parquet(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for split, copies in (("train", 8), ("dev", 2), ("eval", 2)):
        write_split(folder / f"{split}.parquet", copies)
    return folder


def script(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, timeout=600, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr[-3000:])
    return result


@pytest.mark.slow
def test_learning_curves_train_each_point_and_resume(data: Path, tmp_path: Path) -> None:
    encoder = fetch_model(ModelConfig(source=PACKAGED_ENCODER, keep_layers=3), tmp_path / "encoder")
    config = tmp_path / "run.yaml"
    config.write_text(
        "name: t\ntrain: {epochs: 1, batch_size: 8, max_length: 32, evals_per_epoch: 1}\n"
        "promotion: {policy: configs/promotion.yaml}\n"
    )
    metrics = tmp_path / "metrics_eval.json"
    metrics.write_text(json.dumps({"eval_accuracy": 0.5}))
    out = tmp_path / "curves"
    args = ["scripts/learning_curves.py", "--config", str(config), "--data", str(data), "--out", str(out),
            "--work-dir", str(tmp_path / "work"), "--encoder", f"tiny={encoder}", "--fractions", "0.5", "1.0",
            "--release", f"run={metrics}"]  # fmt: skip
    script(*args)

    study = json.loads((out / "curves.json").read_text())
    points = {p["fraction"]: p for p in study["points"]}
    assert sorted(points) == [0.5, 1.0]
    assert points[1.0]["train_rows"] == 7 * 8 and points[0.5]["train_rows"] == 28  # stratified halves
    assert points[1.0]["frozen_layers"] == 2 and points[1.0]["layers"] == 3
    for point in points.values():
        assert 0 <= point["dev_accuracy"] <= 1 and 0 <= point["eval_accuracy"] <= 1
        assert point["train_seconds"] > 0
    assert study["release"]["run"] == {"train_rows": 56, "eval_accuracy": 0.5}
    assert study["gate_accuracy"] == 0.90
    assert (out / "curves.png").stat().st_size > 0

    again = script(*args)  # every point is already there: nothing trains again
    assert '"fraction"' not in again.stdout
    assert json.loads((out / "curves.json").read_text())["points"] == study["points"]


def test_error_audit_draws_stratified_errors_and_estimates_the_ceiling(
    tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    audit_path = tmp_path / "audit.csv"
    script("scripts/error_audit.py", "sample", "--model", str(tiny_model_dir),
           "--data", str(data / "eval.parquet"), "--out", str(audit_path),
           "--reading-copy", str(tmp_path / "reading.csv"), "-n", "6", "--min-per-pair", "1")  # fmt: skip
    audit = pd.read_csv(audit_path, keep_default_na=False)
    meta = json.loads(audit_path.with_suffix(".sample.json").read_text())
    assert len(audit) == min(6, meta["errors"])
    assert (audit["true"] != audit["predicted"]).all()
    assert set(audit["pair"]) <= set(meta["pair_errors"])
    assert (audit["verdict"] == "").all()
    assert "text_excerpt" not in audit  # review texts are never part of the committed table
    reading = pd.read_csv(tmp_path / "reading.csv", keep_default_na=False)
    texts = set(pd.read_parquet(data / "eval.parquet")["text"])
    assert reading["row"].tolist() == audit["row"].tolist() and set(reading["text_excerpt"]) <= texts

    with pytest.raises(subprocess.CalledProcessError):  # verdicts not filled in yet
        script("scripts/error_audit.py", "summarize", "--audit", str(audit_path))
    audit["verdict"] = ["label_noise" if i % 2 == 0 else "model_error" for i in range(len(audit))]
    audit.to_csv(audit_path, index=False)
    script("scripts/error_audit.py", "summarize", "--audit", str(audit_path))
    summary = json.loads(audit_path.with_suffix(".json").read_text())
    noise = summary["estimated_errors"]["label_noise"]
    assert 0 < noise <= meta["errors"]
    assert summary["ceiling_label_noise"] == pytest.approx(
        1 - noise / meta["eval_rows"],
        abs=0.05 / meta["eval_rows"] + 1e-4,  # noise is rounded to 0.1
    )
    assert summary["ceiling_noise_and_mixed"] == summary["ceiling_label_noise"]  # no mixed verdicts
