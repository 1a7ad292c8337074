"""The ONNX Runtime backends of the transformer kind, as they score: `OnnxScorer` runs `model.onnx`
(fp32) or `model.int8.onnx` (int8 dynamic quantization, each text alone) with the tokenization and
batching of `TransformerScorer`. `restar.model.onnx_export` writes those files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from restar.model.inference import ModelMetadata, Scores, padded_encodings, tokenized

TORCH = "torch"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
BACKENDS = (TORCH, *ONNX_FILES)
# Dynamic quantization takes each call's activation scales from the whole batch, so a text's answer
# would depend on the texts beside it (up to 0.04 in probability on the tiny test model). These backends
# score every text alone: the same text gets the same answer, bit for bit, in any company.
ALONE_BACKENDS = frozenset({"onnx-int8"})


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
