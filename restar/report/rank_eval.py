"""Offline ranking A/B: would product rankings built on Re*Star's predictions bounce fewer shoppers?

The business target (issue 25): rankings built on Re*Star should bounce at least 2 percentage points fewer
shoppers than rankings built on stars. There is no live traffic to test on, so this replays history.

**Time split.** Each product's reviews, in time order, are cut at `observed_fraction` (the first
floor(fraction x n) reviews): the earlier part is what the marketplace knew when it ranked (observed), the
later part is what shoppers then met (outcome). Equal timestamps keep input row order (a stable sort, never
random; the 2018 files have day resolution, so same-day reviews are common). A product qualifies with at least
`min_reviews` reviews and at least one on each side; the counts say how many were dropped, and why. The model
reads only observed reviews; outcome reviews count by their stars alone.

**Arms.** Each ranks a category's products by a Bayesian average of one value per observed review, shrunk
toward the category's mean of that value by `prior_weight` pseudo-reviews: (C m + sum x) / (C + n).
- control: x = the review's stars, as marketplaces rank.
- text_score: x = the text's expected star 1.5 p_neg + 3 p_neu + 4.5 p_pos (calibrated probabilities; the
  weights are the middle of each class's star range). Abstained reviews count too: the expected star already
  weighs the model's doubt. Blank texts have no probabilities and carry no evidence (n counts scored texts).
- restar: x = the review's stars, replaced by its text class's representative star (negative 1.5, neutral 3,
  positive 4.5) where the model's confident class differs from the star class (any disagreement, neutral
  included: re-starring trusts confident text over stars); agreeing and abstained reviews keep their stars.

**Bounce proxy.** In each category shoppers see the ranking with DCG attention 1/log2(rank + 1) over the top
k (fewer when the category has fewer products), normalized to sum to 1; a visit to a product bounces with
probability = its share of <= 2-star reviews among its outcome reviews. Products with equal scores (compared
at 9 decimals) share the attention of the positions they span evenly: the expected bounce under a random order
of the tie, so no arbitrary tie-break (name, row) can favour an arm. The bounce rate at k is the mean of the
categories' rates weighted by their number of qualifying products. A category of one product has nothing to
rank: it adds the same to every arm.

**Uncertainty.** A bootstrap over products: each draw resamples every category's products with replacement
(same count; seeded) and recomputes category means, scores, rankings and bounce rates. Intervals are 95%
percentile intervals, for each arm's rate and for treatment - control in percentage points; point values are
on the full sample. **Ranking quality:** NDCG@k with gain = outcome mean rating - 1 (0 for an all-1-star
outcome) and the same tie-shared discounts, and the Spearman correlation of scores with the outcome mean
rating, both within categories (Spearman: >= 3 products, both sides varying) and weighted by product count.

**Verdict**, per treatment at the primary k (the largest k asked for: it keeps the top positions at their DCG
weight and is the least noisy): "too few products to decide" below `min_products` products in categories with
at least two products; "treatment lowers bounce by >= 2 points" when the 95% interval is below 0 and the point
difference is <= -2 points; "treatment lowers bounce by < 2 points" when the interval is below 0 but the point
is above -2; "treatment raises bounce" when the interval is above 0; else "no significant difference". The
top-level verdict is the most favourable treatment verdict (ties: the lower point difference). There is no
correction for testing two treatments: read the top-level verdict with both.

**Never score products the model trained on.** `held_out_filter` reads the frozen split (product-disjoint
train/dev/eval parquet files) and keeps only products of dev+eval that are not in train; the result states the
filter, or that none applied (a file outside the frozen data, such as the 2018 magazines).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from restar.batch.predictor import PredictFn, load_predict_fn, predict_frame
from restar.data.text import TEXT_COLUMN
from restar.errors import RestarError
from restar.output_files import atomic_file, write_error
from restar.report.inconsistencies import (
    CATEGORY_COLUMN,
    PRODUCT_COLUMN,
    RATING_COLUMN,
    ROW_COLUMN,
    categories,
    read_reviews,
    require_columns,
    star_classes,
    text_classes,
    usable_ratings,
)

logger = logging.getLogger(__name__)

TIMESTAMP_COLUMN = "timestamp"
REQUIRED_COLUMNS = (PRODUCT_COLUMN, TIMESTAMP_COLUMN, RATING_COLUMN, TEXT_COLUMN)
EXPECTED_STAR_WEIGHTS = {"p_neg": 1.5, "p_neu": 3.0, "p_pos": 4.5}
REPRESENTATIVE_STARS = {"negative": 1.5, "neutral": 3.0, "positive": 4.5}
BAD_OUTCOME_MAX_STARS = 2
TIE_DECIMALS = 9
SIDE_EPSILON = 1e-9  # floor(0.29 * 100) must be 29, and 0.29 * 100 is 28.999999999999996 in floats
ARMS = ("control", "text_score", "restar")
ARM_DESCRIPTIONS = {
    "control": "Bayesian average of observed stars",
    "text_score": "Bayesian average of the texts' expected star 1.5 p_neg + 3 p_neu + 4.5 p_pos",
    "restar": "Bayesian average of observed stars, replaced by 1.5/3/4.5 where the confident text class "
    "differs from the star class",
}
TOO_FEW = "too few products to decide"
LOWERS_TARGET = "treatment lowers bounce by >= 2 points"
LOWERS_LESS = "treatment lowers bounce by < 2 points"
RAISES = "treatment raises bounce"
NO_DIFFERENCE = "no significant difference"
TARGET_POINTS = 2.0


class RankEvalError(RestarError, ValueError):
    """Settings, split folder or input that make the ranking A/B impossible, worded for the user."""


@dataclass(frozen=True)
class RankEvalSettings:
    """The A/B's knobs; checked when built, so a bad value fails before any file is read."""

    observed_fraction: float = 0.5
    min_reviews: int = 10
    prior_weight: float = 5.0
    ks: tuple[int, ...] = (1, 3, 5, 10)
    bootstrap: int = 1000
    seed: int = 0
    min_products: int = 30
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.observed_fraction < 1:
            raise RankEvalError(f"observed_fraction must be between 0 and 1, not {self.observed_fraction}")
        if self.min_reviews < 2:
            raise RankEvalError(
                f"min_reviews must be at least 2 (one review per side), not {self.min_reviews}"
            )
        if not self.prior_weight >= 0:
            raise RankEvalError(f"prior_weight must be >= 0, not {self.prior_weight}")
        if not self.ks or min(self.ks) < 1:
            raise RankEvalError(f"k values must be >= 1, not {list(self.ks)}")
        if self.bootstrap < 1 or self.min_products < 1 or self.batch_size < 1:
            raise RankEvalError("bootstrap, min_products and batch_size must be >= 1")
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))

    @property
    def primary_k(self) -> int:
        return max(self.ks)


# --- which products may be scored ---


@dataclass(frozen=True)
class ProductFilter:
    """The products that may be scored (`keep`; None: all) and, for the record, why."""

    description: str
    keep: frozenset[str] | None = None
    train: frozenset[str] = frozenset()
    source: str | None = None


NO_FILTER = ProductFilter("none: every product of the input is scored (the input is not the frozen data)")


def held_out_filter(frozen_dir: Path, splits: Sequence[str] = ("dev", "eval")) -> ProductFilter:
    """Only products of the frozen `splits` (default dev+eval) that the training split does not hold."""
    named = {name: frozen_dir / f"{name}.parquet" for name in ("train", *splits)}
    missing = [path.name for path in named.values() if not path.is_file()]
    if missing:
        raise RankEvalError(
            f"{frozen_dir}: no frozen split here ({', '.join(missing)} missing); run `restar freeze`, or "
            "skip the filter for a file outside the frozen data (--no-split-filter)"
        )
    try:
        products = {
            name: set(pd.read_parquet(path, columns=[PRODUCT_COLUMN])[PRODUCT_COLUMN].astype(str))
            for name, path in named.items()
        }
    except (OSError, ValueError, KeyError) as exc:
        raise RankEvalError(f"{frozen_dir}: cannot read the frozen split's products: {exc}") from exc
    train = products.pop("train")
    held_out = set().union(*products.values()) - train
    return ProductFilter(
        description=f"held-out products of {frozen_dir} ({'+'.join(splits)}); training products never scored",
        keep=frozenset(held_out),
        train=frozenset(train),
        source=str(frozen_dir),
    )


def apply_filter(reviews: pd.DataFrame, product_filter: ProductFilter) -> tuple[pd.DataFrame, dict]:
    """The reviews of allowed products, and how many products the filter kept and removed."""
    products = reviews[PRODUCT_COLUMN].drop_duplicates()
    if product_filter.keep is None:
        return reviews, {"products_kept": len(products), "products_removed": 0}
    in_train = products.isin(product_filter.train)
    kept = products.isin(product_filter.keep)
    counts = {
        "products_kept": int(kept.sum()),
        "products_removed": int((~kept).sum()),
        "products_removed_in_train": int(in_train.sum()),
        "products_removed_not_in_split": int((~kept & ~in_train).sum()),
    }
    if len(products) and not kept.any():
        raise RankEvalError(
            f"none of the input's {len(products)} products is a held-out product of {product_filter.source} "
            f"({counts['products_removed_in_train']} are in the training split, "
            f"{counts['products_removed_not_in_split']} not in the split at all); for a file outside the "
            "frozen data skip the filter (--no-split-filter)"
        )
    return reviews[reviews[PRODUCT_COLUMN].isin(product_filter.keep)], counts


# --- reviews -> observed and outcome sides ---


def as_timestamps(values: pd.Series) -> pd.Series:
    """Timestamps as numbers in time order (upstream: ms since the epoch; dates become ms); NaN where
    unreadable."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    if not pd.api.types.is_datetime64_any_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().sum() == values.notna().sum():
            return numbers.astype("float64")
    dates = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    return ((dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(milliseconds=1)).astype("float64")


def clean_reviews(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows with a usable rating, product and timestamp, numbered by input position (`row`), with a
    category; and the count of rows dropped per reason (each row counted once, first reason first)."""
    require_columns(frame, REQUIRED_COLUMNS)
    reviews = frame.reset_index(drop=True)
    reviews = reviews.assign(
        **{
            ROW_COLUMN: np.arange(len(reviews)),
            CATEGORY_COLUMN: categories(reviews),
            RATING_COLUMN: usable_ratings(reviews[RATING_COLUMN]),
            TIMESTAMP_COLUMN: as_timestamps(reviews[TIMESTAMP_COLUMN]),
        }
    )
    product = reviews[PRODUCT_COLUMN]
    bad_rating = reviews[RATING_COLUMN].isna()
    no_product = ~bad_rating & (product.isna() | (product.astype(str).str.strip() == ""))
    bad_time = ~bad_rating & ~no_product & reviews[TIMESTAMP_COLUMN].isna()
    kept = reviews[~(bad_rating | no_product | bad_time)]
    kept = kept.assign(**{PRODUCT_COLUMN: kept[PRODUCT_COLUMN].astype(str)})
    dropped = {
        "bad_rating": int(bad_rating.sum()),
        "missing_product": int(no_product.sum()),
        "bad_timestamp": int(bad_time.sum()),
    }
    return kept, dropped


def assign_sides(reviews: pd.DataFrame, settings: RankEvalSettings) -> tuple[pd.DataFrame, dict[str, int]]:
    """The reviews of qualifying products in (category, product, time, row) order with an `observed`
    flag, and how many products were dropped per reason."""
    keys = [CATEGORY_COLUMN, PRODUCT_COLUMN]
    ordered = reviews.sort_values([*keys, TIMESTAMP_COLUMN, ROW_COLUMN], kind="stable")
    grouped = ordered.groupby(keys, sort=False)
    size = grouped[ROW_COLUMN].transform("size").to_numpy()
    position = grouped.cumcount().to_numpy()
    n_observed = np.floor(size * settings.observed_fraction + SIDE_EPSILON).astype(int)
    too_few = size < settings.min_reviews
    one_sided = ~too_few & ((n_observed == 0) | (n_observed == size))
    first = position == 0  # one row per product, for counting products
    dropped = {
        "fewer_than_min_reviews": int((too_few & first).sum()),
        "no_review_on_one_side": int((one_sided & first).sum()),
    }
    qualifies = ~too_few & ~one_sided
    sided = ordered[qualifies].assign(observed=(position < n_observed)[qualifies])
    return sided, dropped


# --- scoring ---


def expected_stars(predictions: pd.DataFrame) -> pd.Series:
    """1.5 p_neg + 3 p_neu + 4.5 p_pos; NaN for texts the model did not score (blank)."""
    return sum(predictions[name] * weight for name, weight in EXPECTED_STAR_WEIGHTS.items())


def restarred(ratings: pd.Series, stars: pd.Series, texts: pd.Series) -> pd.Series:
    """The rating, or the text class's representative star where the confident text class differs."""
    replace_it = texts.notna() & (texts != stars)
    return ratings.where(~replace_it, texts.map(REPRESENTATIVE_STARS)).astype("float64")


def score_observed(observed: pd.DataFrame, predict_fn: PredictFn, batch_size: int) -> pd.DataFrame:
    """The observed reviews with the model's predictions and each arm's value (one row per review)."""
    answered = predict_frame(observed.reset_index(drop=True), predict_fn, batch_size=batch_size)
    stars = star_classes(answered[RATING_COLUMN])
    texts = text_classes(answered)
    return answered.assign(
        star_class=stars,
        text_class=texts,
        control=answered[RATING_COLUMN],
        text_score=expected_stars(answered),
        restar=restarred(answered[RATING_COLUMN], stars, texts),
    )


def product_table(observed: pd.DataFrame, outcome: pd.DataFrame) -> pd.DataFrame:
    """One row per product: each arm's sum and count over observed reviews, and the outcome's bounce
    probability (share of <= 2-star reviews) and mean rating."""
    keys = [CATEGORY_COLUMN, PRODUCT_COLUMN]
    arms = {
        f"{arm}_{stat}": (arm, "sum" if stat == "sum" else "count") for arm in ARMS for stat in ("sum", "n")
    }
    seen = observed.groupby(keys, sort=True).agg(observed_reviews=(ROW_COLUMN, "size"), **arms)
    bad = outcome.assign(bad=outcome[RATING_COLUMN] <= BAD_OUTCOME_MAX_STARS)
    later = bad.groupby(keys, sort=True).agg(
        outcome_reviews=(ROW_COLUMN, "size"),
        bounce=("bad", "mean"),
        outcome_mean_rating=(RATING_COLUMN, "mean"),
    )
    return seen.join(later, how="inner").reset_index()


# --- rankings and metrics on one category ---


@dataclass(frozen=True)
class Category:
    """One category's products as arrays: per arm the sums and counts of observed values; per product
    the outcome bounce probability and mean rating."""

    name: str
    sums: np.ndarray  # [arm, product]
    counts: np.ndarray  # [arm, product]
    bounce: np.ndarray  # [product]
    outcome_mean: np.ndarray  # [product]

    @property
    def size(self) -> int:
        return len(self.bounce)

    def take(self, index: np.ndarray) -> Category:
        return replace(
            self,
            sums=self.sums[:, index],
            counts=self.counts[:, index],
            bounce=self.bounce[index],
            outcome_mean=self.outcome_mean[index],
        )


def category_arrays(products: pd.DataFrame) -> list[Category]:
    """The product table as one Category per category, in name order (the bootstrap draws in that order)."""
    found = []
    for name, part in products.groupby(CATEGORY_COLUMN, sort=True):
        found.append(
            Category(
                name=str(name),
                sums=np.vstack([part[f"{arm}_sum"].to_numpy(dtype="float64") for arm in ARMS]),
                counts=np.vstack([part[f"{arm}_n"].to_numpy(dtype="float64") for arm in ARMS]),
                bounce=part["bounce"].to_numpy(dtype="float64"),
                outcome_mean=part["outcome_mean_rating"].to_numpy(dtype="float64"),
            )
        )
    return found


def bayesian_scores(sums: np.ndarray, counts: np.ndarray, prior_weight: float) -> np.ndarray:
    """(C m + sum) / (C + n) per product, m the category's mean value; m itself where C + n is 0."""
    total = counts.sum()
    mean = sums.sum() / total if total > 0 else 0.0
    weight = prior_weight + counts
    return np.where(weight > 0, (prior_weight * mean + sums) / np.where(weight > 0, weight, 1.0), mean)


def position_weights(n: int, ks: Sequence[int]) -> np.ndarray:
    """DCG discount 1/log2(rank + 1) of ranks 1..n, 0 past rank k: one row per k."""
    ranks = np.arange(1, n + 1)
    return np.where(ranks <= np.asarray(ks)[:, None], 1.0 / np.log2(ranks + 1), 0.0)


def shared_discounts(scores: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """Each product's DCG discount at each k [k, product] when ranked by `scores`, highest first; products
    with equal scores (at TIE_DECIMALS) share the discounts of the positions they span evenly."""
    rounded = np.round(scores, TIE_DECIMALS)
    order = np.argsort(-rounded, kind="stable")
    ranked = rounded[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    sizes = np.diff(np.r_[starts, len(ranked)])
    groups = np.add.reduceat(position_weights(len(ranked), ks), starts, axis=1) / sizes
    discounts = np.empty((len(ks), len(ranked)))
    discounts[:, order] = np.repeat(groups, sizes, axis=1)
    return discounts


def bounce_by_k(scores: np.ndarray, bounce: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """The attention-weighted bounce probability of one category's ranking over its top k, per k."""
    discounts = shared_discounts(scores, ks)
    return discounts @ bounce / discounts.sum(axis=1)


def bounce_at(scores: np.ndarray, bounce: np.ndarray, k: int) -> float:
    return float(bounce_by_k(scores, bounce, [k])[0])


def ndcg_at(scores: np.ndarray, outcome_mean: np.ndarray, k: int) -> float:
    """NDCG@k with gain = outcome mean rating - 1; NaN where every gain is 0."""
    gains = outcome_mean - 1.0
    ideal = float(np.sort(gains)[::-1] @ position_weights(len(gains), [k])[0])
    return float(shared_discounts(scores, [k])[0] @ gains / ideal) if ideal > 0 else math.nan


def spearman(scores: np.ndarray, outcome_mean: np.ndarray) -> float:
    """Rank correlation (average ranks for ties); NaN below 3 products or when either side is constant."""
    if len(scores) < 3:
        return math.nan
    left = pd.Series(np.round(scores, TIE_DECIMALS)).rank().to_numpy()
    right = pd.Series(outcome_mean).rank().to_numpy()
    if left.std() == 0 or right.std() == 0:
        return math.nan
    return float(np.corrcoef(left, right)[0, 1])


def scored_products(products: pd.DataFrame, prior_weight: float) -> pd.DataFrame:
    """The product table with each arm's score and rank in its category (1 = top; ties: the mean rank)."""
    scored = products.copy()
    for arm in ARMS:
        score = pd.Series(np.nan, index=products.index, dtype="float64")
        for _, part in products.groupby(CATEGORY_COLUMN, sort=False):
            sums, counts = part[f"{arm}_sum"].to_numpy("float64"), part[f"{arm}_n"].to_numpy("float64")
            score[part.index] = bayesian_scores(sums, counts, prior_weight)
        scored[f"{arm}_score"] = score
        ranks = score.round(TIE_DECIMALS).groupby(products[CATEGORY_COLUMN]).rank(ascending=False)
        scored[f"{arm}_rank"] = ranks
    return scored


def arm_scores(category: Category, prior_weight: float) -> list[np.ndarray]:
    return [
        bayesian_scores(sums, counts, prior_weight)
        for sums, counts in zip(category.sums, category.counts, strict=True)
    ]


def bounce_table(category: Category, settings: RankEvalSettings) -> np.ndarray:
    """Bounce probability per [arm, k] for one category."""
    scores = arm_scores(category, settings.prior_weight)
    return np.array([bounce_by_k(arm, category.bounce, settings.ks) for arm in scores])


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The mean over the first axis weighted by `weights`, ignoring NaN entries (their weight drops out)."""
    present = ~np.isnan(values)
    shaped = weights.reshape((-1,) + (1,) * (values.ndim - 1))
    total = (shaped * present).sum(axis=0)
    summed = (np.where(present, values, 0.0) * shaped).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, summed / np.where(total > 0, total, 1.0), np.nan)


# --- across categories ---


def overall_bounce(found: list[Category], settings: RankEvalSettings) -> np.ndarray:
    """Bounce probability per [arm, k], categories weighted by their product count."""
    if not found:
        return np.full((len(ARMS), len(settings.ks)), np.nan)
    tables = np.stack([bounce_table(category, settings) for category in found])
    return weighted_mean(tables, np.array([category.size for category in found], dtype="float64"))


def bootstrap_bounce(found: list[Category], settings: RankEvalSettings) -> np.ndarray:
    """Bounce probability per [draw, arm, k]: each draw resamples every category's products with
    replacement (same count), under `settings.seed`."""
    rng = np.random.default_rng(settings.seed)
    draws = np.empty((settings.bootstrap, len(ARMS), len(settings.ks)))
    for draw in range(settings.bootstrap):
        sample = [category.take(rng.integers(0, category.size, category.size)) for category in found]
        draws[draw] = overall_bounce(sample, settings)
    return draws


def quality(found: list[Category], settings: RankEvalSettings) -> tuple[np.ndarray, np.ndarray]:
    """NDCG per [arm, k] and Spearman per arm, within categories, weighted by product count."""
    if not found:
        return np.full((len(ARMS), len(settings.ks)), np.nan), np.full(len(ARMS), np.nan)
    ndcg, rho = [], []
    for category in found:
        scores = arm_scores(category, settings.prior_weight)
        ndcg.append([[ndcg_at(s, category.outcome_mean, k) for k in settings.ks] for s in scores])
        rho.append([spearman(s, category.outcome_mean) for s in scores])
    sizes = np.array([category.size for category in found], dtype="float64")
    return weighted_mean(np.array(ndcg), sizes), weighted_mean(np.array(rho), sizes)


# --- the result ---


@dataclass(frozen=True)
class Interval:
    """A point value with its bootstrap 95% interval, in percent or percentage points."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, object]:
        return {"value": rounded(self.value), "ci95": [rounded(self.low), rounded(self.high)]}


def rounded(value: float, digits: int = 4) -> float | None:
    """A JSON-safe number: None for NaN."""
    return None if value is None or math.isnan(value) else round(float(value), digits)


def interval(point: float, draws: np.ndarray) -> Interval:
    finite = draws[~np.isnan(draws)]
    if not len(finite) or math.isnan(point):
        return Interval(point, math.nan, math.nan)
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(float(point), float(low), float(high))


def verdict(difference: Interval, enough_products: bool) -> str:
    """The plain reading of one treatment's difference in bounce (points) at the primary k."""
    if not enough_products or math.isnan(difference.low):
        return TOO_FEW
    if difference.high < 0:
        return LOWERS_TARGET if difference.value <= -TARGET_POINTS else LOWERS_LESS
    if difference.low > 0:
        return RAISES
    return NO_DIFFERENCE


@dataclass
class ArmResult:
    """One arm: bounce (%) per k with intervals; for treatments the difference to control (points) and a
    verdict; NDCG per k and Spearman."""

    name: str
    description: str
    bounce_pct: dict[int, Interval]
    ndcg: dict[int, float]
    spearman: float
    difference_pp: dict[int, Interval] = field(default_factory=dict)
    verdict: str | None = None

    def as_dict(self) -> dict[str, object]:
        record: dict[str, object] = {
            "description": self.description,
            "bounce_pct": {str(k): value.as_dict() for k, value in self.bounce_pct.items()},
            "ndcg": {str(k): rounded(value) for k, value in self.ndcg.items()},
            "spearman": rounded(self.spearman),
        }
        if self.difference_pp:
            record["difference_pp"] = {str(k): value.as_dict() for k, value in self.difference_pp.items()}
            record["verdict"] = self.verdict
        return record


@dataclass
class RankEvalResult:
    """What the A/B found, with everything needed to read it: settings, model, filter and counts.

    `products` (one row per qualifying product) and `reviews` (the observed reviews with predictions) are
    for analysis in Python; the JSON holds aggregates only, never review text or product ids.
    """

    settings: RankEvalSettings
    model_uri: str
    source: str
    product_filter: str
    counts: dict[str, object]
    arms: list[ArmResult]
    per_category: list[dict[str, object]]
    verdict: str
    verdict_treatment: str | None
    products: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    reviews: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    def arm(self, name: str) -> ArmResult:
        return next(arm for arm in self.arms if arm.name == name)

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "verdict_treatment": self.verdict_treatment,
            "primary_k": self.settings.primary_k,
            "model_uri": self.model_uri,
            "input": self.source,
            "product_filter": self.product_filter,
            "counts": self.counts,
            "arms": {arm.name: arm.as_dict() for arm in self.arms},
            "per_category": self.per_category,
            "settings": {**asdict(self.settings), "primary_k": self.settings.primary_k, **METHOD},
        }


METHOD = {
    "observed": "a product's first floor(observed_fraction x n) reviews in time order; ties keep row order",
    "expected_star_weights": EXPECTED_STAR_WEIGHTS,
    "representative_stars": REPRESENTATIVE_STARS,
    "bounce": f"share of outcome reviews with rating <= {BAD_OUTCOME_MAX_STARS}",
    "attention": "DCG 1/log2(rank + 1) over the top k, normalized to 1; tied scores share their positions",
    "category_weights": "number of qualifying products",
    "interval": "bootstrap 95% percentile interval, products resampled within category",
    "ndcg_gain": "outcome mean rating - 1",
    "verdict_rule": "at primary_k: interval below 0 and difference <= -2 points lowers bounce by >= 2 points",
}


def arm_results(found: list[Category], settings: RankEvalSettings, enough: bool) -> list[ArmResult]:
    """Point values on all products, intervals from the bootstrap, verdicts at the primary k."""
    point = overall_bounce(found, settings) * 100
    draws = (
        bootstrap_bounce(found, settings) * 100
        if found
        else np.full((1, len(ARMS), len(settings.ks)), np.nan)
    )
    ndcg, rho = quality(found, settings)
    results = []
    for a, name in enumerate(ARMS):
        result = ArmResult(
            name=name,
            description=ARM_DESCRIPTIONS[name],
            bounce_pct={k: interval(point[a, j], draws[:, a, j]) for j, k in enumerate(settings.ks)},
            ndcg={k: float(ndcg[a, j]) for j, k in enumerate(settings.ks)},
            spearman=float(rho[a]),
        )
        if a:
            result.difference_pp = {
                k: interval(point[a, j] - point[0, j], draws[:, a, j] - draws[:, 0, j])
                for j, k in enumerate(settings.ks)
            }
            result.verdict = verdict(result.difference_pp[settings.primary_k], enough)
        results.append(result)
    return results


VERDICT_ORDER = (LOWERS_TARGET, LOWERS_LESS, NO_DIFFERENCE, RAISES, TOO_FEW)  # most favourable first


def headline(arms: list[ArmResult], primary_k: int) -> tuple[str, str | None]:
    """The most favourable treatment verdict at the primary k (ties: the lower point difference), and the
    treatment it belongs to (None when there are too few products)."""
    treatments = [arm for arm in arms if arm.difference_pp]

    def rank(arm: ArmResult) -> tuple[int, float]:
        point = arm.difference_pp[primary_k].value
        return VERDICT_ORDER.index(arm.verdict or TOO_FEW), np.inf if math.isnan(point) else point

    best = min(treatments, key=rank)
    return best.verdict or TOO_FEW, None if best.verdict == TOO_FEW else best.name


def category_rows(found: list[Category], settings: RankEvalSettings) -> list[dict[str, object]]:
    """Per category: its products and each arm's bounce (%) at the primary k."""
    rows = []
    for category in found:
        table = bounce_table(category, settings)[:, settings.ks.index(settings.primary_k)] * 100
        rows.append(
            {
                "category": category.name,
                "products": category.size,
                "bounce_pct_at_primary_k": {
                    arm: rounded(value) for arm, value in zip(ARMS, table, strict=True)
                },
            }
        )
    return rows


# --- the whole A/B ---


@dataclass
class PreparedReviews:
    """The qualifying products' reviews split into sides, and what was dropped on the way."""

    sided: pd.DataFrame
    counts: dict[str, object]


def prepare_reviews(
    frame: pd.DataFrame, settings: RankEvalSettings, product_filter: ProductFilter = NO_FILTER
) -> PreparedReviews:
    """Clean, filter and split the reviews: everything the A/B needs before the model is loaded."""
    reviews, dropped_rows = clean_reviews(frame)
    products_in_input = int(reviews[PRODUCT_COLUMN].nunique())
    reviews, filtered = apply_filter(reviews, product_filter)
    sided, dropped_products = assign_sides(reviews, settings)
    counts: dict[str, object] = {
        "rows_read": len(frame),
        "rows_dropped": dropped_rows,
        "products_in_input": products_in_input,
        "filter": filtered,
        "products_dropped": dropped_products,
        "products_qualified": int(sided.groupby([CATEGORY_COLUMN, PRODUCT_COLUMN]).ngroups),
        "observed_reviews": int(sided["observed"].sum()),
        "outcome_reviews": int((~sided["observed"]).sum()),
    }
    return PreparedReviews(sided, counts)


def evaluate_prepared(
    prepared: PreparedReviews,
    predict_fn: PredictFn,
    settings: RankEvalSettings,
    model_uri: str,
    source: str,
    product_filter: ProductFilter,
) -> RankEvalResult:
    """Score the observed reviews, rank every category under each arm and compare the bounce proxy."""
    sided = prepared.sided
    observed = score_observed(sided[sided["observed"]], predict_fn, settings.batch_size)
    products = product_table(observed, sided[~sided["observed"]])
    found = category_arrays(products)
    ranked = sum(category.size for category in found if category.size >= 2)
    arms = arm_results(found, settings, enough=ranked >= settings.min_products)
    verdict_text, treatment = headline(arms, settings.primary_k)
    counts = {
        **prepared.counts,
        "categories": len(found),
        "products_ranked": ranked,
        "min_products": settings.min_products,
        "observed_abstained": int(observed["text_class"].isna().sum()),
        "observed_restarred": int((observed["restar"] != observed["control"]).sum()),
        "observed_unscored_blank": int(observed["text_score"].isna().sum()),
    }
    logger.info("rank-eval on %d products: %s", len(products), verdict_text)
    return RankEvalResult(
        settings=settings,
        model_uri=model_uri,
        source=source,
        product_filter=product_filter.description,
        counts=counts,
        arms=arms,
        per_category=category_rows(found, settings),
        verdict=verdict_text,
        verdict_treatment=treatment,
        products=scored_products(products, settings.prior_weight),
        reviews=observed,
    )


def evaluate_rankings(
    frame: pd.DataFrame,
    predict_fn: PredictFn,
    settings: RankEvalSettings | None = None,
    product_filter: ProductFilter = NO_FILTER,
    model_uri: str = "(a predict function)",
    source: str = "(a data frame)",
) -> RankEvalResult:
    """The A/B on a reviews frame with parent_asin, timestamp, rating and text (title, category optional)."""
    settings = settings or RankEvalSettings()
    prepared = prepare_reviews(frame, settings, product_filter)
    return evaluate_prepared(prepared, predict_fn, settings, model_uri, source, product_filter)


def rank_eval_file(
    input_paths: Path | Sequence[Path], model_uri: str, settings: RankEvalSettings, frozen_dir: Path | None
) -> RankEvalResult:
    """The A/B on a reviews file (several files are read as one); `frozen_dir` None skips the held-out
    product filter. Input, split and settings problems surface before the model loads."""
    paths = [input_paths] if isinstance(input_paths, Path) else list(input_paths)
    frame = pd.concat([read_reviews(path, REQUIRED_COLUMNS) for path in paths], ignore_index=True)
    product_filter = NO_FILTER if frozen_dir is None else held_out_filter(frozen_dir)
    prepared = prepare_reviews(frame, settings, product_filter)
    predict_fn = load_predict_fn(model_uri)
    source = " + ".join(str(path) for path in paths)
    return evaluate_prepared(prepared, predict_fn, settings, model_uri, source, product_filter)


# --- writing ---


def check_output_path(path: Path) -> Path:
    """The PNG's path beside the JSON output; a non-.json output is refused before any work."""
    if path.suffix.lower() != ".json":
        raise RankEvalError(f"{path}: the rank-eval output must be a .json file (the plot goes beside it)")
    return path.with_suffix(".png")


def plot_title(result: RankEvalResult) -> str:
    """The verdict and, because the bars' intervals are per arm, the paired differences at the primary k."""
    k = result.settings.primary_k
    differences = ", ".join(
        f"{arm.name} {arm.difference_pp[k].value:+.2f} pp [{arm.difference_pp[k].low:+.2f}, "
        f"{arm.difference_pp[k].high:+.2f}]"
        for arm in result.arms
        if arm.difference_pp
    )
    products = result.counts["products_qualified"]
    return f"Bounce proxy, {products} products: {result.verdict}\nvs control at k={k}: {differences}"


def plot_png(result: RankEvalResult) -> bytes:
    """Bounce rate by k, one bar per arm with its 95% interval as an error bar, as PNG bytes."""
    from matplotlib.figure import Figure

    ks = result.settings.ks
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    width = 0.8 / len(result.arms)
    for a, arm in enumerate(result.arms):
        values = np.array([arm.bounce_pct[k].value for k in ks])
        low = np.array([arm.bounce_pct[k].low for k in ks])
        high = np.array([arm.bounce_pct[k].high for k in ks])
        # a percentile interval need not contain the point value (few draws, skewed draws): clip at 0
        errors = np.clip(np.nan_to_num(np.vstack([values - low, high - values])), 0, None)
        positions = np.arange(len(ks)) + (a - (len(result.arms) - 1) / 2) * width
        ax.bar(positions, np.nan_to_num(values), width, yerr=errors, capsize=3, label=arm.name)
    ax.set_xticks(np.arange(len(ks)), [f"k={k}" for k in ks])
    ax.set_ylabel("bounce rate (%)")
    ax.set_title(f"{plot_title(result)}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_bytes(path: Path, payload: bytes) -> None:
    """`payload` as `path`, whole or not at all (restar.output_files)."""
    with atomic_file(path) as handle:
        try:
            handle.write(payload)
        except OSError as exc:
            raise write_error(path, exc) from exc


def write_rank_eval(result: RankEvalResult, json_path: Path) -> Path:
    """Write the JSON and, beside it, the PNG; returns the PNG's path.

    Both are rendered before either is written, each is written atomically, and the JSON goes last: if it
    cannot be written the new PNG is removed, so a run leaves both files or neither.
    """
    png_path = check_output_path(json_path)
    record = json.dumps(result.as_dict(), indent=2, allow_nan=False) + "\n"
    image = plot_png(result)
    write_bytes(png_path, image)
    try:
        write_bytes(json_path, record.encode("utf-8"))
    except BaseException:
        png_path.unlink(missing_ok=True)
        raise
    return png_path
