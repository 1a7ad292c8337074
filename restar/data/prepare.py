"""Sample the frozen splits into data/raw: stratified by label, deterministic, capped per split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from restar.config import PrepareConfig
from restar.data.freeze import SPLITS, split_stats

logger = logging.getLogger(__name__)


def sample_split(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """At most `cap` rows with the label mix of `frame`, in their frozen order."""
    if cap is None or len(frame) <= cap:
        return frame.reset_index(drop=True)
    kept, _ = train_test_split(frame, train_size=cap, stratify=frame["label"], random_state=seed)
    return kept.sort_index().reset_index(drop=True)


def prepare(config: PrepareConfig, frozen_dir: Path, out_dir: Path) -> dict[str, object]:
    caps = {"train": config.train_rows, "dev": config.dev_rows, "eval": config.eval_rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = {}
    for name in SPLITS:
        frame = pd.read_parquet(frozen_dir / f"{name}.parquet")
        samples[name] = sample_split(frame, caps[name], config.seed)
        samples[name].to_parquet(out_dir / f"{name}.parquet", index=False)
    frozen = json.loads((frozen_dir / "stats.json").read_text())
    stats = {
        "rows": {name: len(sample) for name, sample in samples.items()},
        "splits": {name: split_stats(sample) for name, sample in samples.items()},
        "frozen_content_sha256": frozen["content_sha256"],
        # how freeze composed titles and texts: the model must prepare what it is sent the same way
        "drop_rating_titles": frozen["config"]["clean"]["drop_rating_titles"],
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    logger.info("prepared %s", stats["rows"])
    return stats


def drop_rating_titles(data_dir: Path) -> bool:
    """Whether the prepared data in `data_dir` dropped rating titles ("Five Stars"); True for data
    prepared before its stats.json recorded it (freeze has always dropped them by default)."""
    return json.loads((data_dir / "stats.json").read_text()).get("drop_rating_titles", True)
