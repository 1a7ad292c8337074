"""Reviews whose text contradicts their stars: the moderation queue Re*Star exists for.

A review is a *contradiction* when its star class and the class the model reads in its text are both
polar and differ: 4-5 stars on negative text, or 1-2 stars on positive text. Neutral on either side
(3 stars, or text the model calls neutral) never counts: "4 stars, lukewarm text" is a matter of taste,
not a mistake, and the model's neutral class is its weakest, so flagging it would fill the queue with
noise. Abstained reviews are never contradictions: the model was not sure.

Which text class is *confident*: by default the model's own abstention decides (the `abstain` label, at the
threshold stored with the model). `min_confidence` overrides it in both directions: a review is then
confident when its top calibrated probability reaches `min_confidence`, and its class is that argmax.

Rates are contradictions / scored reviews, where a scored review is one with a usable 1-5 rating that
the model read (abstained or not): "3% of this product's reviews contradict their stars". The tables also
give the confident count, so the rate among confident reviews follows. Rows without a usable rating are
counted as `unrated` and cannot be contradictions.

This module also holds the reviews reader that `restar inconsistencies` and `restar rank-eval` share: the
upstream JSON Lines (`.jsonl`, `.jsonl.gz`), CSV or Parquet, with the category named by the file when the
rows carry none (`Subscription_Boxes.jsonl.gz` -> `Subscription_Boxes`).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from restar.batch.predictor import (
    PredictFn,
    PredictorError,
    check_input_file,
    no_rows_error,
    predict_frame,
    unreadable_error,
)
from restar.data.text import TEXT_COLUMN, TITLE_COLUMN
from restar.labels import ABSTAIN, LABELS, OUTPUT_COLUMNS, PROBABILITY_COLUMNS
from restar.output_files import atomic_file, write_error

logger = logging.getLogger(__name__)

CATEGORY_COLUMN = "category"
PRODUCT_COLUMN = "parent_asin"
RATING_COLUMN = "rating"
ROW_COLUMN = "row"  # the review's 0-based position in the input: ties keep input order, users find the row
ALL_CATEGORIES = "all"  # the one category of rows that name none
POLAR = ("negative", "positive")
OUTPUT_FORMATS = (".csv", ".parquet")
CSV_DECIMALS = 6
REQUIRED_COLUMNS = (RATING_COLUMN, TEXT_COLUMN, PRODUCT_COLUMN)


# --- reading reviews ---


def file_category(path: Path) -> str:
    """The category a file's name gives its rows: everything before the first dot
    (`Sports_and_Outdoors.sample.jsonl.gz` -> `Sports_and_Outdoors`)."""
    return path.name.split(".", 1)[0] or ALL_CATEGORIES


def read_reviews(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """All rows of a reviews file, with a `category` column (the file's own, else its name's).

    Every way the file can be unusable (type, missing, empty, unparseable, no rows, missing columns)
    becomes one PredictorError naming the file, before any model is loaded.
    """
    kind = check_input_file(path)
    try:
        frame = _read(path, kind)
    except (ValueError, OSError, EOFError, TypeError, zlib.error) as exc:
        raise unreadable_error(path, kind, exc) from exc
    if frame.empty:
        raise no_rows_error(path)
    require_columns(frame, required, str(path))
    if CATEGORY_COLUMN not in frame.columns:
        frame.insert(0, CATEGORY_COLUMN, file_category(path))
    return frame


def _read(path: Path, kind: str) -> pd.DataFrame:
    if kind == "csv":
        text_like = {
            TEXT_COLUMN: object,
            TITLE_COLUMN: object,
            PRODUCT_COLUMN: object,
            CATEGORY_COLUMN: object,
        }
        return pd.read_csv(path, dtype=text_like, keep_default_na=False, na_values=[""])
    if kind == "parquet":
        return pd.read_parquet(path)
    # dtype=False keeps `timestamp` as ms since the epoch (pandas 3; pandas 2 may still parse it as dates,
    # which restar.report.rank_eval.as_timestamps turns back into ms)
    return pd.read_json(path, lines=True, dtype=False)


def require_columns(frame: pd.DataFrame, required: Sequence[str], source: str = "input") -> None:
    """One error naming every missing column and the columns that are there."""
    missing = [name for name in required if name not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        names = ", ".join(repr(name) for name in missing)
        raise PredictorError(f"{source}: missing column(s) {names} (found: {found})")


def categories(frame: pd.DataFrame) -> pd.Series:
    """Each row's category: its `category` value, else "all"."""
    if CATEGORY_COLUMN not in frame.columns:
        return pd.Series(ALL_CATEGORIES, index=frame.index, dtype=object)
    values = frame[CATEGORY_COLUMN].astype(object)
    return values.where(values.notna() & (values.astype(str) != ""), ALL_CATEGORIES).astype(str)


# --- classes ---


def usable_ratings(ratings: pd.Series) -> pd.Series:
    """Ratings as floats, NaN where missing, not a number or outside 1-5."""
    numbers = pd.to_numeric(ratings, errors="coerce").astype("float64")
    return numbers.where((numbers >= 1) & (numbers <= 5))


def star_classes(ratings: pd.Series) -> pd.Series:
    """The label each rating maps to (restar.labels.rating_to_label): <=2 negative, 3 neutral, >=4
    positive; None where the rating is unusable."""
    stars = usable_ratings(ratings)
    names = np.select([stars <= 2, stars < 4, stars >= 4], list(LABELS), default="")
    return pd.Series(np.where(names == "", None, names), index=ratings.index, dtype=object)


def text_classes(predictions: pd.DataFrame, min_confidence: float | None = None) -> pd.Series:
    """The confident class of each prediction row, None where it abstains.

    With `min_confidence` None the model's own abstention decides; otherwise a row is confident when its
    top probability reaches `min_confidence`, and its class is the argmax of its probabilities.
    """
    if min_confidence is None:
        labels = predictions["label"].astype(object)
        return labels.where(labels != ABSTAIN, None)
    probs = predictions[list(PROBABILITY_COLUMNS)].to_numpy(dtype="float64")
    scored = ~np.isnan(probs).any(axis=1)
    top = np.where(scored, np.nan_to_num(probs).max(axis=1), -1.0)
    names = np.asarray(LABELS, dtype=object)[np.nan_to_num(probs).argmax(axis=1)]
    return pd.Series(np.where(top >= min_confidence, names, None), index=predictions.index, dtype=object)


def contradicts(stars: pd.Series, texts: pd.Series) -> pd.Series:
    """True where both classes are polar (negative/positive) and differ."""
    return stars.isin(POLAR) & texts.isin(POLAR) & (stars != texts)


# --- the analysis ---


@dataclass
class InconsistencyResult:
    """Contradicting reviews, most confident first, and the rates per product and per category."""

    contradictions: pd.DataFrame
    per_product: pd.DataFrame
    per_category: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    min_confidence: float | None = None

    def summary(self) -> pd.DataFrame:
        """Per category and in total: reviews, scored, confident, contradictions, rate (%); prints as is."""
        total = self.per_category.drop(columns=[CATEGORY_COLUMN]).sum(numeric_only=True)
        total[CATEGORY_COLUMN] = "(total)"
        table = pd.concat([self.per_category, total.to_frame().T], ignore_index=True)
        for column in ("reviews", "unrated", "scored", "confident", "contradictions"):
            table[column] = table[column].astype("int64")
        table["rate_pct"] = rate_pct(table["contradictions"], table["scored"])
        return table


def rate_pct(hits: pd.Series, total: pd.Series) -> pd.Series:
    """hits / total in percent, rounded to 2 decimals; NaN where total is 0."""
    return (100 * hits / total.where(total > 0)).astype("float64").round(2)


def classify_reviews(
    frame: pd.DataFrame, predict_fn: PredictFn, min_confidence: float | None = None, batch_size: int = 256
) -> pd.DataFrame:
    """Every input row with its row number, category, star class, predictions, text class and whether
    it contradicts its stars (one row per input row, in input order)."""
    require_columns(frame, REQUIRED_COLUMNS)
    answered = predict_frame(frame.reset_index(drop=True), predict_fn, batch_size=batch_size)
    answered.insert(0, ROW_COLUMN, np.arange(len(answered)))
    answered[CATEGORY_COLUMN] = categories(answered)
    answered["star_class"] = star_classes(answered[RATING_COLUMN])
    answered["text_class"] = text_classes(answered, min_confidence)
    answered["contradiction"] = contradicts(answered["star_class"], answered["text_class"])
    return answered


def rates(reviews: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Counts and the contradiction rate per group of `keys`, highest rate first (ties: most reviews)."""
    flags = reviews.assign(
        unrated=reviews["star_class"].isna(),
        scored=reviews["star_class"].notna(),
        confident=reviews["star_class"].notna() & reviews["text_class"].notna(),
    )
    table = (
        flags.groupby(keys, sort=True)
        .agg(
            reviews=(ROW_COLUMN, "size"),
            unrated=("unrated", "sum"),
            scored=("scored", "sum"),
            confident=("confident", "sum"),
            contradictions=("contradiction", "sum"),
        )
        .reset_index()
    )
    table["rate_pct"] = rate_pct(table["contradictions"], table["scored"])
    return table.sort_values(["rate_pct", "reviews"], ascending=False, kind="stable", na_position="last")


def find_inconsistencies(
    frame: pd.DataFrame, predict_fn: PredictFn, min_confidence: float | None = None, batch_size: int = 256
) -> InconsistencyResult:
    """Score every review and collect those whose confident text contradicts their stars.

    Contradictions are ordered by confidence, highest first; equal confidences keep input order.
    """
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise PredictorError(f"min_confidence must be between 0 and 1, not {min_confidence}")
    reviews = classify_reviews(frame, predict_fn, min_confidence, batch_size)
    per_product = rates(reviews, [CATEGORY_COLUMN, PRODUCT_COLUMN])
    per_category = rates(reviews, [CATEGORY_COLUMN]).sort_values(CATEGORY_COLUMN, kind="stable")
    found = reviews[reviews["contradiction"]].sort_values(
        ["confidence", ROW_COLUMN], ascending=[False, True], kind="stable"
    )
    product_rates = per_product[[CATEGORY_COLUMN, PRODUCT_COLUMN, "rate_pct"]].rename(
        columns={"rate_pct": "product_rate_pct"}
    )
    found = found.merge(product_rates, on=[CATEGORY_COLUMN, PRODUCT_COLUMN], how="left", validate="m:1")
    counts = {
        "reviews": len(reviews),
        "unrated": int(reviews["star_class"].isna().sum()),
        "abstained": int(reviews["text_class"].isna().sum()),
        "contradictions": int(reviews["contradiction"].sum()),
        "products": len(per_product),
        "categories": len(per_category),
    }
    logger.info("%d contradictions in %d reviews", counts["contradictions"], counts["reviews"])
    return InconsistencyResult(
        contradictions=output_columns(found).reset_index(drop=True),
        per_product=per_product.reset_index(drop=True),
        per_category=per_category.reset_index(drop=True),
        counts=counts,
        min_confidence=min_confidence,
    )


def output_columns(found: pd.DataFrame) -> pd.DataFrame:
    """The row number, where the review sits, its stars and the text's verdict first; then the rest of
    the input's columns."""
    first = [
        ROW_COLUMN,
        CATEGORY_COLUMN,
        PRODUCT_COLUMN,
        RATING_COLUMN,
        "star_class",
        "text_class",
        *OUTPUT_COLUMNS,
        "product_rate_pct",
    ]
    rest = [column for column in found.columns if column not in first and column != "contradiction"]
    return found[first + rest]


# --- writing ---


def check_output_path(path: Path) -> str:
    """The output's format (csv or parquet) by its suffix; checked before any work is done."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise PredictorError(f"{path}: unsupported output type {path.suffix!r}; use {list(OUTPUT_FORMATS)}")
    return suffix.lstrip(".")


def write_contradictions(result: InconsistencyResult, path: Path) -> int:
    """Write the contradictions as CSV (probabilities rounded to 6 decimals) or Parquet, atomically:
    the file appears whole or not at all. Returns the number of rows written."""
    kind = check_output_path(path)
    frame = result.contradictions
    with atomic_file(path) as handle:
        try:
            if kind == "csv":
                rounded = frame.round({name: CSV_DECIMALS for name in ("confidence", *PROBABILITY_COLUMNS)})
                rounded.to_csv(handle, index=False, encoding="utf-8")
            else:
                frame.to_parquet(handle, index=False)
        except OSError as exc:
            raise write_error(path, exc) from exc
    logger.info("wrote %d contradictions to %s", len(frame), path)
    return len(frame)
