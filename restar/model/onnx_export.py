"""ONNX Runtime backends for the transformer kind: fp32 export and int8 dynamic quantization
(which scores each text alone, so that no text's answer depends on its batch).

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from restar.inference import (
    METADATA_FILE,
    ModelMetadata,
    Scores,
    load_fine_tuned,
    padded_encodings,
    tokenized,
)

logger = logging.getLogger(__name__)

TORCH = "torch"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
BACKENDS = (TORCH, *ONNX_FILES)
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Dynamic quantization takes each call's activation scales from the whole batch, so a text's answer
# would depend on the texts beside it (up to 0.04 in probability on the tiny test model). These backends
# score every text alone: the same text gets the same answer, bit for bit, in any company.
ALONE_BACKENDS = frozenset({"onnx-int8"})


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


def session_options():
    """How every ONNX Runtime session of a Re*Star model runs: torch's thread count, all optimizations."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxScorer:
    """The transformer kind through ONNX Runtime; tokenization and batching as in TransformerScorer."""

    def __init__(self, session, tokenizer, max_length: int, batch_size: int = 32):
        self.session = session
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_labels = session.get_outputs()[0].shape[-1]
        self.input_names = [graph_input.name for graph_input in session.get_inputs()]

    @classmethod
    def load(cls, model_dir: Path, metadata: ModelMetadata, batch_size: int = 32) -> OnnxScorer:
        import onnxruntime
        from transformers import AutoTokenizer

        path = model_dir / ONNX_FILES[metadata.backend]
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir}: backend {metadata.backend!r} but no {path.name}")
        session = onnxruntime.InferenceSession(
            str(path), session_options(), providers=["CPUExecutionProvider"]
        )
        if metadata.backend in ALONE_BACKENDS:
            batch_size = 1
        return cls(session, AutoTokenizer.from_pretrained(model_dir), metadata.max_length, batch_size)

    def score(self, texts: Sequence[str]) -> Scores:
        encoded, truncated = tokenized(self.tokenizer, texts, self.max_length)
        out = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        for batch, padded in padded_encodings(self.tokenizer, encoded, self.batch_size, "np"):
            out[batch] = self.session.run(["logits"], self.feed(padded))[0]
        return Scores(out, truncated)

    def feed(self, encoded) -> dict[str, np.ndarray]:
        """The graph's inputs from a tokenizer's output: the export took the inputs that tokenizer makes."""
        return {name: np.asarray(encoded[name], dtype=np.int64) for name in self.input_names}
