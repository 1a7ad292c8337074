"""Real upstream rows that need preparing before the model reads them: markup, rating titles, empty bodies."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from restar.config import SourceConfig
from restar.data.freeze import DATA_DIR_ENV, read_category

CATEGORY = "Subscription_Boxes"


def markup_rows(reviews_dir: Path, per_kind: int = 8) -> pd.DataFrame:
    """Upstream rows of one category, as read for freezing: up to `per_kind` rows of each kind that the
    preparation changes, and as many plain ones; numbered 0..n-1."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_DIR_ENV, str(reviews_dir))
        rows = read_category(CATEGORY, SourceConfig(categories=[CATEGORY]))
    text = rows["text"].fillna("")
    title = rows["title"].fillna("")
    kinds = [
        text.str.contains("<br", regex=False),
        text.str.contains(r"&(?:#\d+|[a-z]+);", regex=True),
        text.str.contains("[[VIDEOID:", regex=False),
        title.str.fullmatch(r"(?i)(one|two|three|four|five) stars?"),
        text.str.strip() == "",
        title.str.contains(r"[.!?]$", regex=True),
        pd.Series(True, index=rows.index),
    ]
    picked = pd.Index([])
    for kind in kinds:
        picked = picked.union(rows.index[kind & ~rows.index.isin(picked)][:per_kind])
    return rows.loc[picked].reset_index(drop=True)
