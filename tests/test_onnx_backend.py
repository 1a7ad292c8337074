"""ONNX Runtime backends: conversion, and every consumer of the inference core honouring the choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from restar.batch.predictor import predict_file
from restar.labels import LABELS
from restar.model.inference import InferenceCore, ModelMetadata
from restar.model.onnx_export import convert, serving_files
from restar.model.onnx_scorer import ONNX_FILES, OnnxScorer
from restar.model.pyfunc import log_pyfunc
from restar.model.transformer import TransformerScorer
from restar.training.fetch_model import packaged_encoder_dir

TEXTS = [
    "Absolutely love this subscription box, great value!",
    "It was okay. Some items were nice, others not.",
    "Arrived broken and customer service never answered. " * 20,
    "",
    "🔥🔥🔥",
]
PROBS = ["p_neg", "p_neu", "p_pos"]


@pytest.fixture(scope="module")
def backends(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model converted to each ONNX backend, one folder each."""
    folders = {}
    for backend in ONNX_FILES:
        folder = tmp_path_factory.mktemp(backend) / "model"
        shutil.copytree(tiny_model_dir, folder)
        convert(folder, backend)
        folders[backend] = folder
    return folders


def test_conversion_records_the_backend_and_keeps_the_reference(backends: dict[str, Path]) -> None:
    for backend, folder in backends.items():
        assert ModelMetadata.load(folder).backend == backend
        assert (folder / ONNX_FILES[backend]).is_file()
        assert (folder / "model.safetensors").is_file()
        assert isinstance(InferenceCore.from_dir(folder).scorer, OnnxScorer)
        assert isinstance(InferenceCore.from_dir(folder, backend="torch").scorer, TransformerScorer)


def test_onnx_fp32_matches_torch(tiny_model_dir: Path, backends: dict[str, Path]) -> None:
    texts = [text for text in TEXTS if text.strip()]
    reference = InferenceCore.from_dir(tiny_model_dir).logits(texts)
    np.testing.assert_allclose(InferenceCore.from_dir(backends["onnx"]).logits(texts), reference, atol=1e-4)
    int8 = InferenceCore.from_dir(backends["onnx-int8"]).logits(texts)
    assert np.abs(int8 - reference).max() < 0.5  # quantized, so close but not equal


def test_exported_graphs_are_fused(backends: dict[str, Path]) -> None:
    """Attention and layer norms run as ONNX Runtime's fused kernels, quantized ones in the int8 model."""
    import onnx

    def op_types(path: Path) -> set[str]:
        return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}

    fp32 = op_types(backends["onnx"] / ONNX_FILES["onnx"])
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= fp32
    assert "Softmax" not in fp32  # the unfused attention's
    int8 = op_types(backends["onnx-int8"] / ONNX_FILES["onnx-int8"])
    assert {"QAttention", "MatMulInteger", "SkipLayerNormalization"} <= int8


def test_encoders_without_token_type_ids_convert(tmp_path: Path) -> None:
    """DistilBERT-style checkpoints (model.source: distilbert-base-uncased) take no token_type_ids."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    folder = tmp_path / "model"
    tokenizer = AutoTokenizer.from_pretrained(
        packaged_encoder_dir(), model_input_names=["input_ids", "attention_mask"]
    )
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size,
        dim=64,
        hidden_dim=128,
        n_layers=1,
        n_heads=4,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ModelMetadata(temperature=1.0, max_length=64, base_model="tiny-distilbert").save(folder)
    texts = [text for text in TEXTS if text.strip()]
    reference = InferenceCore.from_dir(folder).logits(texts)

    for backend in ONNX_FILES:
        convert(folder, backend)
        scorer = InferenceCore.from_dir(folder).scorer
        assert scorer.input_names == ["input_ids", "attention_mask"]
        np.testing.assert_allclose(
            scorer.score(texts).logits, reference, atol=1e-4 if backend == "onnx" else 0.5
        )


def test_archives_carry_only_the_backends_weights(tiny_model_dir: Path, backends: dict[str, Path]) -> None:
    int8 = {path.name for path in serving_files(backends["onnx-int8"])}
    assert "model.int8.onnx" in int8
    assert not {"model.safetensors", "model.onnx"} & int8
    assert {"restar.json", "tokenizer.json"} <= int8
    torch_files = {path.name for path in serving_files(tiny_model_dir)}
    assert "model.safetensors" in torch_files
    assert not {name for name in torch_files if name.endswith(".onnx")}


def test_bad_backends_are_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        convert(tiny_model_dir, "tensorrt")
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    metadata = json.loads((folder / "restar.json").read_text())
    (folder / "restar.json").write_text(json.dumps({**metadata, "backend": "onnx"}))
    with pytest.raises(FileNotFoundError, match=r"no model\.onnx"):
        InferenceCore.from_dir(folder)


def test_pyfunc_and_predictor_run_the_recorded_backend(
    backends: dict[str, Path], tracking_uri: str, tmp_path: Path
) -> None:
    folder = backends["onnx-int8"]
    expected = InferenceCore.from_dir(folder).predict(TEXTS)
    with mlflow.start_run():
        info = log_pyfunc(folder)
    model = mlflow.pyfunc.load_model(info.model_uri)
    assert isinstance(model.unwrap_python_model().core.scorer, OnnxScorer)
    served = model.predict(pd.DataFrame({"text": TEXTS}))
    assert served["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(served[PROBS].to_numpy(float), expected[PROBS].to_numpy(float), atol=1e-6)

    source = tmp_path / "in.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(source, index=False)
    predict_file(source, tmp_path / "out.csv", info.model_uri, progress=False)
    predicted = pd.read_csv(tmp_path / "out.csv")
    assert predicted["label"].tolist() == expected["label"].tolist()
