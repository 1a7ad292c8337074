from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from restar.training.finetune import class_weights, to_dataset, weighted_loss


def test_class_weights_favour_rare_classes_and_average_one() -> None:
    labels = np.array([0] * 20 + [1] * 5 + [2] * 75)
    inverse = class_weights(labels, "inverse")
    sqrt = class_weights(labels, "sqrt")

    assert class_weights(labels, "none") is None
    assert inverse.mean().item() == pytest.approx(1.0)
    assert sqrt.mean().item() == pytest.approx(1.0)
    assert inverse[1] > inverse[0] > inverse[2]
    assert inverse[1] / inverse[2] == pytest.approx(15.0)
    assert sqrt[1] / sqrt[2] == pytest.approx(15.0**0.5)


def test_weighted_loss_applies_weights_and_label_smoothing() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    labels = torch.tensor([0, 1])
    outputs = type("Outputs", (), {"logits": logits})()
    weights = torch.tensor([1.0, 3.0, 1.0])

    plain = weighted_loss(None)(outputs, labels)
    weighted = weighted_loss(weights)(outputs, labels)
    smoothed = weighted_loss(None, label_smoothing=0.1)(outputs, labels)

    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert weighted.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels, weight=weights).item()
    )
    assert smoothed.item() != pytest.approx(plain.item())


def test_to_dataset_keeps_row_order_labels_and_truncation(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    frame = pd.DataFrame(
        {"text": ["Great kettle.", "Broke after a week " * 40, "It is fine."], "label": [2, 0, 1]}
    )

    rows = to_dataset(frame, tokenizer, max_length=32)

    assert [row["label"] for row in rows] == [2, 0, 1]
    assert len(rows[1]["input_ids"]) == 32
    assert rows[0]["input_ids"] == tokenizer("Great kettle.")["input_ids"]
