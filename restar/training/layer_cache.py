"""Train only an encoder's top layers, on the cached outputs of its frozen lower layers.

With the lower layers frozen, their output for a text never changes, so it is computed once and kept on
disk (`cache_lower_layers`), in shards that a killed run does not recompute. Training then runs only the
top layers and the head (`top_layers_only`), a fraction of a full step's cost. Leaving the context puts
the lower layers back, so the model that is saved and served is the whole, ordinary checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from restar.model.inference import encoded_batches

logger = logging.getLogger(__name__)

SHARD_ROWS = 1024


class CachedStates(nn.Module):
    """Stands in for the embeddings: the cached lower-layer output arrives as `inputs_embeds`."""

    def forward(self, *args, inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if inputs_embeds is None:
            raise ValueError("top_layers_only: pass the cached lower-layer states as inputs_embeds")
        return inputs_embeds


def _layers(model: nn.Module) -> nn.ModuleList:
    return model.base_model.encoder.layer


@contextmanager
def layer_range(model: nn.Module, start: int, stop: int, cached_input: bool) -> Iterator[nn.Module]:
    """Run `model` with encoder layers [start, stop) only; `cached_input` replaces the embeddings."""
    base = model.base_model
    all_layers, embeddings = _layers(model), base.embeddings
    base.encoder.layer = nn.ModuleList(list(all_layers)[start:stop])
    if cached_input:
        base.embeddings = CachedStates()
    try:
        yield model
    finally:
        base.encoder.layer, base.embeddings = all_layers, embeddings


@contextmanager
def top_layers_only(model: nn.Module, frozen_layers: int) -> Iterator[nn.Module]:
    """The model as a trainable stack of its top layers and head, fed cached states of the lower ones.

    Everything below the top layers, the encoder's shared parameters included (MPNet's relative position
    bias feeds every layer), is frozen: the cached states must stay what the lower layers compute.
    """
    total = len(_layers(model))
    if not 0 < frozen_layers < total:
        raise ValueError(f"train.frozen_layers must be between 1 and {total - 1} for this encoder")
    trainable = {id(p) for layer in list(_layers(model))[frozen_layers:] for p in layer.parameters()}
    pooler = getattr(model.base_model, "pooler", None)
    if pooler is not None:
        trainable |= {id(p) for p in pooler.parameters()}
    base_params = {id(p) for p in model.base_model.parameters()}
    for param in model.parameters():
        param.requires_grad = id(param) in trainable or id(param) not in base_params
    with layer_range(model, frozen_layers, total, cached_input=True):
        yield model


def encoder_fingerprint(encoder_dir: Path) -> str:
    """sha256 over the encoder's weight, config and tokenizer files, read once per version of them."""
    files = sorted(
        p for p in encoder_dir.iterdir() if p.suffix in {".json", ".safetensors", ".txt", ".model"}
    )
    return _fingerprint(tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.cache
def _fingerprint(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(Path(path).name.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def cache_key(encoder_dir: Path, frozen_layers: int, max_length: int, texts: Sequence[str]) -> str:
    """Names the cache by everything its content depends on: encoder files, cut, max_length and texts."""
    digest = hashlib.sha256(json.dumps([frozen_layers, max_length]).encode())
    digest.update(encoder_fingerprint(encoder_dir).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@torch.inference_mode()
def _encode_shard(model, tokenizer, texts: Sequence[str], frozen_layers: int, max_length: int) -> list:
    states: list[torch.Tensor | None] = [None] * len(texts)
    with layer_range(model, 0, frozen_layers, cached_input=False):
        for indices, batch in encoded_batches(tokenizer, texts, 32, max_length, "pt"):
            hidden = model.base_model(**batch).last_hidden_state
            for row, index in enumerate(indices):
                length = int(batch["attention_mask"][row].sum())
                states[index] = hidden[row, :length].to(torch.float16).clone()
    return states


def _save_shard(path: Path, states: list[torch.Tensor]) -> None:
    lengths = torch.tensor([state.shape[0] for state in states], dtype=torch.int64)
    partial = path.with_suffix(".partial")
    save_file({"states": torch.cat(states), "lengths": lengths}, str(partial))
    partial.rename(path)  # a shard is either whole or absent, so a killed run resumes cleanly


def _load_shard(path: Path) -> list[torch.Tensor]:
    tensors = load_file(str(path))
    return list(torch.split(tensors["states"], tensors["lengths"].tolist()))


def cache_lower_layers(
    model: nn.Module,
    tokenizer,
    encoder_dir: Path,
    texts: Sequence[str],
    frozen_layers: int,
    max_length: int,
    cache_dir: Path,
    desc: str = "caching lower layers",
) -> list[torch.Tensor]:
    """Each text's output of the first `frozen_layers` layers (float16, unpadded), computed at most once."""
    folder = cache_dir / cache_key(encoder_dir, frozen_layers, max_length, texts)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    states: list[torch.Tensor] = []
    starts = range(0, len(texts), SHARD_ROWS)
    for number, start in enumerate(tqdm(starts, desc=desc, unit="shard")):
        path = folder / f"shard-{number:05d}.safetensors"
        if not path.is_file():
            _save_shard(
                path,
                _encode_shard(model, tokenizer, texts[start : start + SHARD_ROWS], frozen_layers, max_length),
            )
        states.extend(_load_shard(path))
    logger.info("%d texts' layer-%d states in %s", len(states), frozen_layers, folder)
    return states


def states_dataset(states: list[torch.Tensor], labels: Sequence[int]) -> list[dict]:
    """Rows for the Trainer; `length` lets it group batches by length."""
    return [
        {"states": state, "length": state.shape[0], "label": int(label)}
        for state, label in zip(states, labels, strict=True)
    ]


def collate_states(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Pad cached states into a batch; padded positions are masked, so their value never matters."""
    lengths = [row["states"].shape[0] for row in rows]
    hidden = rows[0]["states"].shape[1]
    embeds = torch.zeros(len(rows), max(lengths), hidden, dtype=torch.float32)
    mask = torch.zeros(len(rows), max(lengths), dtype=torch.int64)
    for i, row in enumerate(rows):
        embeds[i, : lengths[i]] = row["states"].float()
        mask[i, : lengths[i]] = 1
    batch = {"inputs_embeds": embeds, "attention_mask": mask}
    if "label" in rows[0]:
        batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.int64)
    return batch


@torch.inference_mode()
def top_logits(model: nn.Module, states: list[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Logits of a model in `top_layers_only` mode for cached states, in input order."""
    model.eval()
    order = sorted(range(len(states)), key=lambda i: states[i].shape[0], reverse=True)
    out = torch.zeros(len(states), model.config.num_labels)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = collate_states([{"states": states[i]} for i in indices])
        out[indices] = model(**batch).logits.float()
    return out
