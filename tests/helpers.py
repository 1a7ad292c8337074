from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from restar.fetch_model import packaged_encoder_dir
from restar.inference import ModelMetadata
from restar.labels import LABELS


def make_tiny_model(out_dir: Path, temperature: float = 1.3) -> Path:
    source = packaged_encoder_dir()
    config = AutoConfig.from_pretrained(
        source,
        num_hidden_layers=1,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, config=config)
    with torch.no_grad():  # a head with visible spread, so probabilities differ between texts
        model.classifier.weight.normal_(0.0, 2.0)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(out_dir)
    ModelMetadata(temperature=temperature, max_length=64, base_model="tiny-test").save(out_dir)
    return out_dir


def strict_json(text: str) -> object:
    """json.loads that refuses NaN and Infinity, which Python's accepts but JSON does not have."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)
