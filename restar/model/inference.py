"""The one inference core: texts -> label, confidence, p_neg, p_neu, p_pos.

The MLflow pyfunc, the offline predictor, the latency benchmark and the TorchServe handler all call
`InferenceCore.predict`; nothing else prepares text, tokenizes, scales by temperature or abstains.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd
from transformers import BatchEncoding

from restar.data.text import TEXT_COLUMN, TITLE_COLUMN, prepare_texts
from restar.labels import ABSTAIN, DEFAULT_ABSTAIN_THRESHOLD, LABELS, PROBABILITY_COLUMNS
from restar.model.calibration import softmax

logger = logging.getLogger(__name__)

METADATA_FILE = "restar.json"
MODEL_KIND_GROUP = "restar.model_kinds"


@dataclass(frozen=True)
class ModelMetadata:
    """What Re*Star stores beside the weights: calibration, abstention and tokenization settings."""

    temperature: float = 1.0
    class_bias: tuple[float, ...] = ()  # added to logits / temperature; empty for plain temperature scaling
    abstain_threshold: float = DEFAULT_ABSTAIN_THRESHOLD
    max_length: int = 128
    base_model: str = ""
    labels: tuple[str, ...] = LABELS
    kind: str = "transformer"
    backend: str = "torch"
    drop_rating_titles: bool = True  # as the training data was prepared (restar.data.text.prepare_text)

    def save(self, model_dir: Path) -> None:
        (model_dir / METADATA_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: Path) -> ModelMetadata:
        path = model_dir / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} is not a Re*Star model directory (no {METADATA_FILE})")
        raw = json.loads(path.read_text())
        raw["labels"] = tuple(raw.get("labels", LABELS))
        raw["class_bias"] = tuple(raw.get("class_bias", ()))
        return cls(**raw)


def is_blank(text: object) -> bool:
    """True for None, NaN and whitespace-only strings: rows that get `abstain` without a forward pass."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return True
    return not str(text).strip()


def decide(probs: np.ndarray, threshold: float, labels: Sequence[str] = LABELS) -> pd.DataFrame:
    """Output rows for calibrated probabilities: abstain when the top probability is below `threshold`.

    Rows of NaN (texts that were never scored) abstain with NaN confidence and probabilities.
    """
    missing = np.isnan(probs).any(axis=1)
    scored = np.where(missing[:, None], 0.0, probs)
    top = scored.max(axis=1)
    names = np.asarray(labels, dtype=object)[scored.argmax(axis=1)]
    columns = {
        "label": np.where(missing | (top < threshold), ABSTAIN, names).astype(object),
        "confidence": np.where(missing, np.nan, top),
    }
    columns.update(zip(PROBABILITY_COLUMNS, np.where(missing[:, None], np.nan, probs).T, strict=True))
    return pd.DataFrame(columns)


# What a forward pass costs beyond its padded tokens, in token slots (one position of one text through
# the encoder): about 4 ms against 0.06 ms a slot, MiniLM-L6 on 2 CPU cores (docs/results.md, "Load,
# poison and faults"). It decides when a shorter text is better off starting a batch of its own.
FORWARD_OVERHEAD_TOKENS = 64


def padded_batches(
    lengths: Sequence[int], max_size: int, overhead: float = FORWARD_OVERHEAD_TOKENS
) -> list[list[int]]:
    """Indices of `lengths` grouped into forward batches of at most `max_size`, longest first, for the
    least work: a batch costs `overhead` plus its size times its longest length (it pads to that).

    Equal slices of the length-sorted texts pad short texts up to long ones; here a batch ends where
    the texts after it are short enough that a forward of their own costs less."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    best = [0.0] + [math.inf] * len(order)  # best[end]: the least work for the `end` longest texts
    start = [0] * (len(order) + 1)  # where the last batch of that split starts
    for end in range(1, len(order) + 1):
        for first in range(max(0, end - max_size), end):
            work = best[first] + overhead + (end - first) * lengths[order[first]]
            if work < best[end]:
                best[end], start[end] = work, first
    batches, end = [], len(order)
    while end:
        batches.append(order[start[end] : end])
        end = start[end]
    return batches[::-1]


def tokenized(tokenizer, texts: Sequence[str], max_length: int) -> tuple[BatchEncoding, np.ndarray]:
    """`texts` tokenized and cut to `max_length` tokens, with which of them were cut (a fast tokenizer
    keeps what it cut off as each encoding's `overflowing`)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return encoded, np.array([bool(each.overflowing) for each in encoded.encodings], dtype=bool)


def padded_encodings(
    tokenizer, encoded: BatchEncoding, batch_size: int, tensors: str
) -> Iterator[tuple[list[int], dict]]:
    """(indices, padded batch) pairs over tokenized texts, longest first, each padded to its longest text,
    at most `batch_size` texts each (`padded_batches`); `tensors` is "pt" or "np"."""
    for batch in padded_batches([len(ids) for ids in encoded["input_ids"]], batch_size):
        rows = {name: [values[i] for i in batch] for name, values in encoded.items()}
        yield batch, tokenizer.pad(rows, return_tensors=tensors)


def encoded_batches(
    tokenizer, texts: Sequence[str], batch_size: int, max_length: int, tensors: str
) -> Iterator[tuple[list[int], dict]]:
    """`padded_encodings` of `texts` cut to `max_length` tokens."""
    encoded, _ = tokenized(tokenizer, texts, max_length)
    return padded_encodings(tokenizer, encoded, batch_size, tensors)


class Scores(NamedTuple):
    """What a scorer says of texts: raw class scores, and which texts it read only the start of."""

    logits: np.ndarray  # (texts, classes)
    truncated: np.ndarray  # (texts,) bool: longer than the model's max_length tokens


class Scorer(Protocol):
    """A model kind: raw class scores (logits) for texts. Kinds register under `restar.model_kinds`."""

    @classmethod
    def load(cls, model_dir: Path, metadata: ModelMetadata, batch_size: int) -> Scorer: ...

    def score(self, texts: Sequence[str]) -> Scores: ...


def model_kinds() -> dict[str, type[Scorer]]:
    return {name: model_kind(name) for name in entry_points(group=MODEL_KIND_GROUP).names}


def model_kind(name: str) -> type[Scorer]:
    """The scorer class registered as `name`, imported only now: a scoring-only install (the ml-app
    image) lacks the training extra that some kinds need."""
    entries = entry_points(group=MODEL_KIND_GROUP)
    if name not in entries.names:
        raise ValueError(f"unknown model kind {name!r}; known: {', '.join(sorted(entries.names))}")
    try:
        return entries[name].load()
    except ImportError as exc:
        raise ValueError(
            f"model kind {name!r} needs {exc.name}, which is not installed (pip install 'restar[train]')"
        ) from exc


class InferenceCore:
    """A scorer of any model kind with its calibration (temperature, class biases) and abstain threshold."""

    def __init__(self, scorer: Scorer, metadata: ModelMetadata):
        self.scorer = scorer
        self.metadata = metadata

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, batch_size: int = 32, backend: str | None = None
    ) -> InferenceCore:
        """The model in `model_dir`, on its metadata's backend unless `backend` overrides it."""
        model_dir = Path(model_dir)
        metadata = ModelMetadata.load(model_dir)
        if backend is not None:
            metadata = replace(metadata, backend=backend)
        try:
            kind = model_kind(metadata.kind)
        except ValueError as exc:
            raise ValueError(f"{model_dir}: {exc}") from None
        return cls(kind.load(model_dir, metadata, batch_size), metadata)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.scorer.score(texts).logits

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for this model's logits: softmax(logits / T + class biases)."""
        return softmax(logits, self.metadata.temperature, self.metadata.class_bias)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return self.calibrate(self.logits(texts))

    def predict(self, texts: Sequence[object], titles: Sequence[object] | None = None) -> pd.DataFrame:
        """One output row per review text, in order, prepared as the training data was (restar.data.text):
        markup cleaned and, for upstream rows, each title composed in front of its body. Texts that are
        blank or missing once cleaned abstain with NaN probabilities."""
        prepared = prepare_texts(texts, titles, self.metadata.drop_rating_titles)
        blank = np.array([is_blank(text) for text in prepared], dtype=bool)
        probs = np.full((len(prepared), len(self.metadata.labels)), np.nan)
        truncated = np.zeros(len(prepared), dtype=bool)
        present = np.flatnonzero(~blank)
        if len(present):
            scores = self.scorer.score([prepared[i] for i in present])
            probs[present] = self.calibrate(scores.logits)
            truncated[present] = scores.truncated
        decided = decide(probs, self.metadata.abstain_threshold, self.metadata.labels)
        return decided.assign(truncated=truncated)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`predict` for rows with a `text` column and, when they are upstream rows, a `title` column."""
        titles = frame[TITLE_COLUMN].tolist() if TITLE_COLUMN in frame.columns else None
        return self.predict(frame[TEXT_COLUMN].tolist(), titles)
