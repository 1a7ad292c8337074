"""scripts/sweep_finetune.py end to end: two real (tiny) fine-tunes in a worker process, then its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

TEXTS = {
    0: ["Broke after two days, total waste of money.", "Terrible quality, returned it at once."],
    1: ["It is okay, nothing special.", "Average product, does the job but feels cheap."],
    2: ["Love it, works perfectly every day.", "Excellent quality, would buy again."],
}


def write_split(path: Path, copies: int) -> None:
    rows = [(text, label) for label, texts in TEXTS.items() for text in texts] * copies
    pd.DataFrame(rows, columns=["text", "label"]).to_parquet(path)


def test_sweep_trains_each_variant_and_writes_its_results(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for split, copies in (("train", 4), ("dev", 2), ("eval", 2)):
        write_split(data / f"{split}.parquet", copies)
    out = tmp_path / "sweep"

    subprocess.run(
        [
            sys.executable,
            "scripts/sweep_finetune.py",
            "--pretrained", str(tiny_model_dir),
            "--data", str(data),
            "--out", str(out),
            "--only", "reference", "seed_1",
            "--set", "epochs=1", "max_length=32", "batch_size=8", "eval_batch_size=16", "evals_per_epoch=1",
        ],
        cwd=REPO_ROOT,
        check=True,
        timeout=600,
    )  # fmt: skip

    summary = json.loads((out / "sweep.json").read_text())
    variants = {v["name"]: v for v in summary["variants"]}
    assert list(variants) == ["reference", "seed_1"]
    assert variants["reference"]["train"]["seed"] == 42 and variants["seed_1"]["train"]["seed"] == 1
    assert all(v["train"]["max_length"] == 32 for v in variants.values())
    for variant in variants.values():
        assert 0.0 <= variant["eval_accuracy"] <= 1.0
        assert [entry["epoch"] for entry in variant["dev_history"]] == [1.0]
        assert variant["device"] == "cpu"
    assert summary["seed_ensembles"][0]["members"] == ["reference", "seed_1"]
    assert summary["hardware"]["cpu_count"] >= 1
    assert summary["gate_accuracy"] == 0.90  # from the release policy full.yaml names

    with np.load(out / "logits.npz") as logits:
        labels = pd.read_parquet(data / "eval.parquet")["label"].to_numpy()
        assert logits["labels__eval"].tolist() == labels.tolist()
        predicted = logits["reference__eval"].argmax(axis=1)
        assert (predicted == labels).mean() == pytest.approx(variants["reference"]["eval_accuracy"], abs=1e-6)
    assert (out / "sweep.png").stat().st_size > 0
