"""restar.model.determinism: the measurement the evaluate stage records and the release report shows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from restar.model import determinism
from restar.model.inference import InferenceCore
from restar.model.onnx_export import convert

TEXTS = [
    "Great.",
    "ok",
    "It is fine for the price, though the strap feels thin.",
    "Broke after two days and support never answered. " * 12,
    "Five stars: does exactly what it says, and the battery lasts all week.",
    "Returned it.",
    "Not bad, not great. The colour is duller than in the photos and it scratches easily.",
    "Exactly as described.",
    "Terrible. Terrible. Terrible.",
]


def test_spread_by_length_runs_from_the_shortest_to_the_longest() -> None:
    texts = [f"w{'x' * n}" for n in range(200)]
    picked = determinism.spread_by_length(texts, count=10)
    assert len(picked) == 10
    assert picked[0] == min(texts, key=len)
    assert [len(text) for text in picked] == sorted(len(text) for text in picked)


def test_the_served_int8_model_gives_each_text_one_answer(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "int8"
    shutil.copytree(tiny_model_dir, model_dir)
    convert(model_dir, "onnx-int8")
    measured = determinism.measure(model_dir, TEXTS)
    assert measured["determinism_texts"] == len(TEXTS)
    assert measured["determinism_batch_max_abs_diff"] == 0.0  # scored alone: bit for bit
    assert measured["determinism_process_max_abs_diff"] <= determinism.TOLERANCE


def test_a_batch_dependent_model_is_caught(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scorer whose answer moves with its neighbours (as dynamic int8 quantization's did)."""
    scored = InferenceCore.probabilities

    def with_neighbours(self: InferenceCore, texts: list[str]) -> np.ndarray:
        probs = scored(self, texts)
        shifted = probs + 1e-3 * len(texts)
        return shifted / shifted.sum(axis=1, keepdims=True)

    monkeypatch.setattr(InferenceCore, "probabilities", with_neighbours)
    assert determinism.batch_probabilities(tiny_model_dir, TEXTS)[1] > 1e-4
