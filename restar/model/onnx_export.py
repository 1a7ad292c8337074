"""Writing the ONNX Runtime backends of the transformer kind: fp32 export and int8 dynamic quantization
(which scores each text alone, so that no text's answer depends on its batch; restar.model.onnx_scorer).

`convert` adds `model.onnx` or `model.int8.onnx` to a Re*Star model directory and records the backend
in its metadata; from then on every consumer of the inference core runs that file through ONNX Runtime.
The PyTorch weights stay beside it as the reference.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from restar.model.inference import METADATA_FILE, ModelMetadata
from restar.model.onnx_scorer import BACKENDS, ONNX_FILES, TORCH
from restar.model.transformer import load_fine_tuned

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class _Logits(torch.nn.Module):
    """The classifier with positional inputs and a plain logits output, as the exporter wants it."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).logits


@contextmanager
def _expected_export_warnings() -> Iterator[None]:
    """Silence what tracing transformers' attention-mask code always says, and only that.

    The first two concern the mask built from `attention_mask`: the padding branch traced as a constant is
    never taken (an encoder's key length is its input's length), and the advanced indexing it exports
    indexes with aranges, never negative. The exporter's deprecation notices are the price of the fusions
    (export_fp32).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            "Converting a tensor to a Python boolean",
            torch.jit.TracerWarning,
            r"transformers\.masking_utils",
        )
        warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing", UserWarning)
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning
        )
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning, r"torch\.onnx\.")
        yield


def export_fp32(model_dir: Path, path: Path) -> None:
    """Export the classifier to ONNX, then fuse it with ONNX Runtime's transformer optimizer.

    The fusions (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization) only recognise the
    eager-attention graph of the TorchScript exporter, not the dynamo exporter's; fused, the int8 model runs
    about a quarter faster at batch 1 (docs/results.md).
    """
    from transformers import AutoTokenizer

    model = load_fine_tuned(model_dir, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    example = tokenizer(["An example review.", "Short."], padding=True, return_tensors="pt")
    # BERT-style encoders take token_type_ids, DistilBERT-style ones don't: export what the tokenizer makes.
    names = [name for name in INPUT_NAMES if name in example]
    with tempfile.TemporaryDirectory() as tmp:
        unfused = Path(tmp) / "unfused.onnx"
        with _expected_export_warnings():
            torch.onnx.export(
                _Logits(model, names).eval(),
                tuple(example[name] for name in names),
                str(unfused),
                input_names=names,
                output_names=["logits"],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        fuse(unfused, path, num_heads=model.config.num_attention_heads, hidden_size=model.config.hidden_size)


def fuse(unfused: Path, path: Path, num_heads: int, hidden_size: int) -> None:
    """ONNX Runtime's BERT fusions, logging how many of each fused operator the graph now has."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(unfused), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    logger.info("fused operators: %s", fused)
    optimized.save_model_to_file(str(path))


def quantize_int8(fp32_path: Path, path: Path) -> None:
    """Dynamic quantization: int8 weights, activations quantized per call."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Shape inference can't type the outputs of fused (com.microsoft) operators: they are all float.
    quantize_dynamic(
        str(fp32_path),
        str(path),
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def convert(model_dir: Path, backend: str) -> ModelMetadata:
    """Make `backend` the model directory's backend, writing its ONNX file if it is missing."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    metadata = ModelMetadata.load(model_dir)
    if metadata.kind != "transformer" and backend != TORCH:
        raise ValueError(f"{model_dir}: backend {backend!r} needs a transformer model, not {metadata.kind!r}")
    if backend in ONNX_FILES and not (model_dir / ONNX_FILES[backend]).is_file():
        with tempfile.TemporaryDirectory(dir=model_dir) as tmp:
            fp32 = model_dir / ONNX_FILES["onnx"]
            if not fp32.is_file():
                fp32 = Path(tmp) / ONNX_FILES["onnx"]
                logger.info("exporting %s to ONNX", model_dir)
                export_fp32(model_dir, fp32)
            if backend == "onnx-int8":
                logger.info("quantizing to int8")
                quantize_int8(fp32, Path(tmp) / ONNX_FILES[backend])
            shutil.move(Path(tmp) / ONNX_FILES[backend], model_dir / ONNX_FILES[backend])
    converted = dataclasses.replace(metadata, backend=backend)
    converted.save(model_dir)
    logger.info("%s: backend %s (%s)", model_dir, backend, METADATA_FILE)
    return converted


def serving_files(model_dir: Path) -> list[Path]:
    """The files the model's backend needs: archives leave out the other backends' weights."""
    metadata = ModelMetadata.load(model_dir)
    unused = {name for backend, name in ONNX_FILES.items() if backend != metadata.backend}
    if metadata.backend in ONNX_FILES:
        unused.add("model.safetensors")
    return sorted(path for path in model_dir.iterdir() if path.is_file() and path.name not in unused)
