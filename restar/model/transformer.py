"""The `transformer` model kind: a fine-tuned Hugging Face sequence classifier, loaded strictly.

`TransformerScorer` runs the PyTorch weights; a model whose metadata names an ONNX backend is handed to
`restar.model.onnx_scorer.OnnxScorer`, which tokenizes and batches the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from restar.model.inference import ModelMetadata, Scorer, Scores, padded_encodings, tokenized
from restar.model.onnx_scorer import TORCH, OnnxScorer

logger = logging.getLogger(__name__)

# The logger transformers' from_pretrained writes its table of missing and unexpected weights to.
LOAD_REPORT_LOGGER = "transformers.modeling_utils"


@dataclass(frozen=True)
class LoadReport:
    """Weights a checkpoint lacked (`missing`: newly initialised), had in excess, or had in another shape."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[str, ...] = ()


def key_patterns(keys: Sequence[str], limit: int = 4) -> str:
    """Weight names for a log line, layer numbers folded: 'encoder.layer.*.output.dense.bias, ...'."""
    patterns = sorted({re.sub(r"\.\d+\.", ".*.", key) for key in keys})
    more = f" and {len(patterns) - limit} more" if len(patterns) > limit else ""
    return ", ".join(patterns[:limit]) + more


class _LoadReportFilter(logging.Filter):
    """Keeps transformers' load report table out of the log; the caller reports in its own words."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.held.append(record)
            return False
        return True


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No load report and no 'Loading weights' bar for the duration; a failed load still shows the report,
    which its error message points to."""
    report_logger = logging.getLogger(LOAD_REPORT_LOGGER)
    reports = _LoadReportFilter()
    report_logger.addFilter(reports)
    previous_hook = hf_logging.set_tqdm_hook(
        lambda _factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs)
    )
    try:
        yield
    except Exception:
        for record in reports.held:
            logger.error("%s", record.getMessage())
        raise
    finally:
        hf_logging.set_tqdm_hook(previous_hook)
        report_logger.removeFilter(reports)


def load_pretrained(auto_class, source: str | Path, **kwargs) -> tuple[torch.nn.Module, LoadReport]:
    """`auto_class.from_pretrained(source, **kwargs)` and which weights did not fit, without transformers'
    own report: whether a missing or unexpected weight is expected depends on the caller."""
    with _quiet_loading():
        model, info = auto_class.from_pretrained(source, output_loading_info=True, **kwargs)
    report = LoadReport(
        missing=tuple(sorted(info["missing_keys"])),
        unexpected=tuple(sorted(info["unexpected_keys"])),
        mismatched=tuple(sorted(key for key, *_ in info["mismatched_keys"])),
    )
    return model, report


def load_fine_tuned(model_dir: Path, **kwargs) -> torch.nn.Module:
    """A fine-tuned classifier, refused unless every weight of the model came from `model_dir`."""
    model, report = load_pretrained(AutoModelForSequenceClassification, model_dir, **kwargs)
    if report.missing or report.mismatched:
        raise ValueError(
            f"{model_dir}: not a complete fine-tuned checkpoint; weights missing or of the wrong shape "
            f"would be random: {key_patterns(report.missing + report.mismatched)}"
        )
    if report.unexpected:
        logger.warning(
            "%s: checkpoint weights the model does not use: %s", model_dir, key_patterns(report.unexpected)
        )
    return model


class TransformerScorer:
    """A fine-tuned Hugging Face sequence classifier."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int, batch_size: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def load(cls, model_dir: Path, metadata: ModelMetadata, batch_size: int = 32) -> Scorer:
        if metadata.backend != TORCH:
            return OnnxScorer.load(model_dir, metadata, batch_size)
        model = load_fine_tuned(model_dir)
        checkpoint_labels = tuple(model.config.id2label[i] for i in range(model.config.num_labels))
        if checkpoint_labels != metadata.labels:
            raise ValueError(
                f"{model_dir}: checkpoint labels {checkpoint_labels} != metadata {metadata.labels}"
            )
        return cls(model, AutoTokenizer.from_pretrained(model_dir), metadata.max_length, batch_size)

    def score(self, texts: Sequence[str]) -> Scores:
        encoded, truncated = tokenized(self.tokenizer, texts, self.max_length)
        out = np.zeros((len(texts), self.model.config.num_labels), dtype=np.float32)
        with torch.inference_mode():
            for batch, padded in padded_encodings(self.tokenizer, encoded, self.batch_size, "pt"):
                padded = padded.to(self.model.device)  # a model fine-tuned on a GPU may still sit there
                out[batch] = self.model(**padded).logits.float().cpu().numpy()
        return Scores(out, truncated)
