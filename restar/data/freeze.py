"""Freeze Amazon Reviews 2023 rows into clean, deduplicated train/dev/eval splits grouped by product."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from restar.config import CleanConfig, FreezeConfig, SourceConfig, SplitConfig
from restar.errors import RestarError
from restar.labels import LABELS, rating_to_label
from restar.data.text import prepare_texts

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "RESTAR_DATA_DIR"
SPLITS = ("train", "dev", "eval")
UPSTREAM_COLUMNS = ["rating", "title", "text", "asin", "parent_asin", "user_id", "timestamp"]
FROZEN_COLUMNS = ["text", "label", "rating", "category", "parent_asin", "asin", "user_id", "timestamp"]


class DataSourceError(RestarError, RuntimeError):
    """No review data could be read: hub unreachable and no local folder, or a category is missing."""


# --- reading ---


def read_category(category: str, source: SourceConfig) -> pd.DataFrame:
    """One category's upstream rows, from RESTAR_DATA_DIR when set, else from the hub."""
    data_dir = os.environ.get(DATA_DIR_ENV)
    frame = _read_local(category, Path(data_dir)) if data_dir else _read_hub(category, source)
    frame = frame.reindex(columns=UPSTREAM_COLUMNS)
    frame.insert(0, "category", category)
    return frame


def find_category_file(category: str, data_dir: Path) -> Path:
    """`<Category>.jsonl[.gz]`, or a named sample of it such as `<Category>.sample.jsonl.gz`."""
    if not data_dir.is_dir():
        raise DataSourceError(f"{DATA_DIR_ENV}={data_dir} is not a directory")
    for name in (f"{category}.jsonl", f"{category}.jsonl.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    samples = sorted(data_dir.glob(f"{category}.*.jsonl")) + sorted(data_dir.glob(f"{category}.*.jsonl.gz"))
    if samples:
        return samples[0]
    raise DataSourceError(f"no {category}.jsonl or {category}.jsonl.gz in {DATA_DIR_ENV}={data_dir}")


def _read_local(category: str, data_dir: Path) -> pd.DataFrame:
    path = find_category_file(category, data_dir)
    logger.info("reading %s", path)
    return pd.read_json(path, lines=True, dtype=False, convert_dates=False)


def _read_hub(category: str, source: SourceConfig) -> pd.DataFrame:
    import datasets
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(source.hub_repo, timeout=15)
    except Exception as exc:  # offline mode, DNS failure, proxy refusal: all mean "no hub"
        raise DataSourceError(
            f"the Hugging Face hub is unreachable ({type(exc).__name__}). Set {DATA_DIR_ENV} to a folder "
            f"of <Category>.jsonl(.gz) files from {source.hub_repo}, "
            "for example ../shared/data/amazon_reviews_2023"
        ) from exc
    url = f"hf://datasets/{source.hub_repo}/raw/review_categories/{category}.jsonl"
    logger.info("streaming %s", url)
    stream = datasets.load_dataset("json", data_files=url, split="train", streaming=True)
    if source.max_rows_per_category is not None:
        # The hub files run to millions of rows; streaming takes the first N instead of reading them all.
        stream = stream.take(source.max_rows_per_category)
    return pd.DataFrame([{key: row.get(key) for key in UPSTREAM_COLUMNS} for row in stream])


# --- cleaning ---


def clean_rows(frame: pd.DataFrame, clean: CleanConfig) -> tuple[pd.DataFrame, Counter[str]]:
    """Cleaned, labelled, deduplicated rows and the count of rows dropped per reason."""
    dropped: Counter[str] = Counter()
    rating = pd.to_numeric(frame["rating"], errors="coerce")
    bad_rating = rating.isna() | (rating < 1) | (rating > 5)
    dropped["bad_rating"] = int(bad_rating.sum())
    missing_product = frame["parent_asin"].isna() | (frame["parent_asin"].astype(str).str.len() == 0)
    dropped["missing_parent_asin"] = int((missing_product & ~bad_rating).sum())
    frame = frame[~bad_rating & ~missing_product].copy()
    rating = rating[frame.index]

    # The same preparation serves the model (restar.model.inference): "" exactly when the body is empty.
    text = pd.Series(
        prepare_texts(frame["text"], frame["title"], clean.drop_rating_titles), index=frame.index
    )
    empty = text.str.len() == 0
    dropped["empty_text"] = int(empty.sum())

    frame = frame.assign(
        text=text,
        label=rating.map(rating_to_label).astype("int64"),
        rating=rating.astype("float64"),
        parent_asin=frame["parent_asin"].astype(str),
    )[~empty]

    # Exact duplicates ("Love it") are kept once, so no text can sit in two splits.
    key = frame["text"].str.casefold()
    duplicate = key.duplicated(keep="first")
    dropped["duplicate_text"] = int(duplicate.sum())
    return frame[~duplicate], dropped


# --- splitting ---


def grouped_split(frame: pd.DataFrame, split: SplitConfig) -> pd.Series:
    """Split name per row: whole products (parent_asin) go to one split, per category, under a seed.

    Products are cut into eval, dev and train in a seeded shuffled order. A few large products can skew a
    split's class mix, so `split.shuffles` orders are tried and the one whose eval and dev splits come
    closest to the category's own class mix and target sizes is kept.
    """
    rng = np.random.default_rng(split.seed)
    assignment = pd.Series("train", index=frame.index, dtype="object")
    for _, part in frame.groupby("category", sort=True):
        per_product = pd.crosstab(part["parent_asin"], part["label"])
        best_score, best_names = np.inf, {}
        for _ in range(split.shuffles):
            shuffled = per_product.iloc[rng.permutation(len(per_product))]
            names = _cut_in_order(shuffled.sum(axis=1).to_numpy(), split)
            score = _split_mismatch(shuffled.to_numpy(), names, split)
            if score < best_score or not best_names:
                best_score, best_names = score, dict(zip(shuffled.index, names, strict=True))
        assignment[part.index] = part["parent_asin"].map(best_names)
    return assignment


def _cut_in_order(sizes: np.ndarray, split: SplitConfig) -> np.ndarray:
    """Split name per product: the first eval_fraction of rows to eval, the next dev_fraction to dev."""
    share_before = (np.cumsum(sizes) - sizes) / sizes.sum()
    return np.where(
        share_before < split.eval_fraction,
        "eval",
        np.where(share_before < split.eval_fraction + split.dev_fraction, "dev", "train"),
    )


def _split_mismatch(class_counts: np.ndarray, names: np.ndarray, split: SplitConfig) -> float:
    """How far eval and dev are from the whole's class shares (L1) and from their target sizes."""
    total = class_counts.sum()
    mix = class_counts.sum(axis=0) / total
    mismatch = 0.0
    for name, fraction in (("eval", split.eval_fraction), ("dev", split.dev_fraction)):
        counts = class_counts[names == name].sum(axis=0)
        if counts.sum() == 0:
            return np.inf
        mismatch += np.abs(counts / counts.sum() - mix).sum() + abs(counts.sum() / total / fraction - 1)
    return float(mismatch)


# --- the stage ---


def content_hash(splits: dict[str, pd.DataFrame]) -> str:
    """A hash of what the model learns from (split, text, label), stable across parquet writers."""
    digest = hashlib.sha256()
    for name in SPLITS:
        for text, label in zip(splits[name]["text"], splits[name]["label"], strict=True):
            digest.update(f"{name}\t{label}\t{text}\n".encode())
    return digest.hexdigest()


def split_stats(frame: pd.DataFrame) -> dict[str, object]:
    counts = frame["label"].value_counts().reindex(range(len(LABELS)), fill_value=0)
    return {
        "rows": len(frame),
        "products": int(frame["parent_asin"].nunique()),
        "class_counts": {LABELS[i]: int(n) for i, n in counts.items()},
        "class_share": {LABELS[i]: round(int(n) / max(len(frame), 1), 4) for i, n in counts.items()},
    }


def read_sources(config: FreezeConfig) -> tuple[pd.DataFrame, dict[str, int]]:
    """All configured categories' rows (a seeded sample above the cap) and how many each category had."""
    frames, read_counts = [], {}
    for category in config.source.categories:
        raw = read_category(category, config.source)
        read_counts[category] = len(raw)
        cap = config.source.max_rows_per_category
        if cap is not None and len(raw) > cap:
            raw = raw.sample(n=cap, random_state=config.split.seed).sort_index()
        frames.append(raw)
    return pd.concat(frames, ignore_index=True), read_counts


def freeze(config: FreezeConfig, out_dir: Path) -> dict[str, object]:
    """Read, clean, dedupe and split every configured category; write parquet splits and stats.json."""
    raw, read_counts = read_sources(config)
    cleaned, dropped = clean_rows(raw, config.clean)
    if cleaned.empty:
        raise DataSourceError("no usable rows left after cleaning")
    assignment = grouped_split(cleaned, config.split)
    splits = {name: cleaned[assignment == name][FROZEN_COLUMNS].reset_index(drop=True) for name in SPLITS}
    stats = {
        "rows_read": read_counts,
        "rows_used": len(raw),
        "rows_dropped": dict(dropped),
        "splits": {name: split_stats(frame) for name, frame in splits.items()},
        "content_sha256": content_hash(splits),
        "config": config.model_dump(),
    }
    _write_atomically(splits, stats, out_dir)
    logger.info("froze %d rows: %s", len(cleaned), {name: len(frame) for name, frame in splits.items()})
    return stats


def _write_atomically(splits: dict[str, pd.DataFrame], stats: dict[str, object], out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        staging = Path(tmp) / out_dir.name
        staging.mkdir()
        for name, frame in splits.items():
            frame.to_parquet(staging / f"{name}.parquet", index=False)
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
