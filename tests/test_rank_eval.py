"""The offline ranking A/B (restar.report.rank_eval, `restar rank-eval`).

Most tests use a keyword predictor whose answer is known by construction ("awful" reads negative, "great"
positive, "okay" neutral, anything else abstains), so the expected rankings follow from the data; one test
runs the tiny real model on real rows.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from restar.batch.predictor import PredictorError, load_predict_fn
from restar.cli import cli as restar_cli
from restar.labels import ABSTAIN, LABELS
from restar.report import rank_eval
from restar.report.rank_eval import (
    LOWERS_TARGET,
    NO_DIFFERENCE,
    TOO_FEW,
    RankEvalError,
    RankEvalSettings,
    bounce_at,
    evaluate_rankings,
    held_out_filter,
    ndcg_at,
    shared_discounts,
    spearman,
)
from tests.helpers import strict_json
from tests.keyword_kit import keyword_model, record_loads

KEYWORD_PROBS = {"awful": (0.9, 0.05, 0.05), "great": (0.05, 0.05, 0.9), "okay": (0.1, 0.8, 0.1)}
UNSURE = (0.4, 0.3, 0.3)  # below the 0.65 threshold: abstains
FAST = RankEvalSettings(bootstrap=200, min_products=20)
keyword_predict = keyword_model(KEYWORD_PROBS, UNSURE)


def product(
    asin: str, observed: list[tuple[int, str]], outcome: list[tuple[int, str]], **extra
) -> list[dict]:
    """One product's reviews, one second apart, observed ones first."""
    return [
        {
            "parent_asin": asin,
            "timestamp": 1_600_000_000_000 + 1000 * i,
            "rating": float(stars),
            "text": text,
            **extra,
        }
        for i, (stars, text) in enumerate([*observed, *outcome])
    ]


def honest_product(i: int) -> list[dict]:
    """Stars that the text agrees with; a few bad outcome reviews (0-2 of 10)."""
    fours = 2 + i % 5
    observed = [(4, "great value")] * fours + [(5, "great, love it")] * (10 - fours)
    bad = i % 3
    return product(f"G{i:03d}", observed, [(1, "awful")] * bad + [(5, "great")] * (10 - bad))


def inflated_product(i: int) -> list[dict]:
    """Five stars on negative texts, and the shoppers who came later mostly regretted it."""
    return product(
        f"X{i:03d}", [(5, "awful, broke on day one")] * 10, [(1, "awful")] * 8 + [(5, "great")] * 2
    )


def market(honest: int = 30, inflated: int = 10) -> pd.DataFrame:
    rows = [row for i in range(honest) for row in honest_product(i)]
    rows += [row for i in range(inflated) for row in inflated_product(i)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def inflated_result() -> rank_eval.RankEvalResult:
    return evaluate_rankings(market(), keyword_predict, FAST)


# --- the answer known by construction ---


def test_inflated_products_drop_in_treatment_rankings(inflated_result: rank_eval.RankEvalResult) -> None:
    products = inflated_result.products
    inflated = products["parent_asin"].str.startswith("X")
    assert products.loc[inflated, "control_rank"].max() <= 10  # stars put them on top
    for arm in ("text_score", "restar"):
        assert products.loc[inflated, f"{arm}_rank"].min() > 30, arm  # their texts put them last


def test_bounce_falls_against_control(inflated_result: rank_eval.RankEvalResult) -> None:
    control = inflated_result.arm("control")
    for name in ("text_score", "restar"):
        arm = inflated_result.arm(name)
        for k in FAST.ks:
            assert arm.bounce_pct[k].value < control.bounce_pct[k].value - 2, (name, k)
            assert arm.difference_pp[k].high < 0, (name, k)
            assert arm.ndcg[k] > control.ndcg[k], (name, k)
        assert arm.spearman > control.spearman
        assert arm.verdict == LOWERS_TARGET
    assert inflated_result.verdict == LOWERS_TARGET
    assert inflated_result.verdict_treatment in ("text_score", "restar")


def test_control_puts_the_inflated_products_first(inflated_result: rank_eval.RankEvalResult) -> None:
    # k=1..10 in control are all inflated products: 80% of their later reviews are 1-star
    assert inflated_result.arm("control").bounce_pct[10].value == pytest.approx(80.0)


def test_counts_and_settings_are_recorded(inflated_result: rank_eval.RankEvalResult) -> None:
    counts = inflated_result.counts
    assert counts["rows_read"] == 40 * 20
    assert counts["products_qualified"] == counts["products_ranked"] == 40
    assert counts["observed_reviews"] == counts["outcome_reviews"] == 400
    assert counts["observed_restarred"] == 100  # every inflated product's 10 observed reviews
    record = strict_json(json.dumps(inflated_result.as_dict()))
    assert record["settings"]["prior_weight"] == 5.0
    assert record["settings"]["representative_stars"] == {"negative": 1.5, "neutral": 3.0, "positive": 4.5}
    assert record["product_filter"].startswith("none")
    assert set(record["arms"]) == {"control", "text_score", "restar"}
    assert record["arms"]["restar"]["difference_pp"]["10"]["ci95"][1] < 0


def test_honest_stars_show_no_gain() -> None:
    """Where texts agree with stars, re-starring changes nothing: the output must say so."""
    result = evaluate_rankings(market(honest=30, inflated=0), keyword_predict, FAST)
    restar = result.arm("restar")
    assert restar.verdict == NO_DIFFERENCE
    for k in FAST.ks:
        assert restar.difference_pp[k].value == 0
        assert restar.difference_pp[k].low == restar.difference_pp[k].high == 0


def test_the_bootstrap_is_seeded() -> None:
    frame = market(honest=20, inflated=5)
    first = evaluate_rankings(frame, keyword_predict, FAST).as_dict()
    second = evaluate_rankings(frame, keyword_predict, FAST).as_dict()
    other = evaluate_rankings(
        frame, keyword_predict, RankEvalSettings(bootstrap=200, min_products=20, seed=1)
    )
    assert first == second
    assert first["arms"]["control"]["bounce_pct"] != other.as_dict()["arms"]["control"]["bounce_pct"]


# --- edge cases ---


@pytest.mark.parametrize(
    ("value", "low", "high", "enough", "expected"),
    [
        (-2.5, -4.0, -0.5, True, LOWERS_TARGET),
        (-2.0, -4.0, -0.5, True, LOWERS_TARGET),
        (-1.5, -3.0, -0.1, True, rank_eval.LOWERS_LESS),
        (-3.0, -6.0, 0.5, True, NO_DIFFERENCE),  # a big point gain whose interval spans 0 decides nothing
        (0.0, 0.0, 0.0, True, NO_DIFFERENCE),
        (2.0, 0.5, 4.0, True, rank_eval.RAISES),
        (-9.0, -12.0, -6.0, False, TOO_FEW),
        (math.nan, math.nan, math.nan, True, TOO_FEW),
    ],
)
def test_verdicts(value: float, low: float, high: float, enough: bool, expected: str) -> None:
    assert rank_eval.verdict(rank_eval.Interval(value, low, high), enough) == expected


def test_the_headline_is_the_most_favourable_treatment_verdict() -> None:
    def treatment(name: str, value: float, low: float, high: float) -> rank_eval.ArmResult:
        difference = rank_eval.Interval(value, low, high)
        arm = rank_eval.ArmResult(name, "", {}, {}, math.nan, {10: difference})
        arm.verdict = rank_eval.verdict(difference, True)
        return arm

    wide = treatment("text_score", -5.0, -11.0, 1.0)  # the lower point, but its interval spans 0
    narrow = treatment("restar", -3.0, -5.0, -1.0)
    assert rank_eval.headline([wide, narrow], 10) == (LOWERS_TARGET, "restar")
    assert rank_eval.headline([wide, treatment("restar", 1.0, -1.0, 3.0)], 10) == (
        NO_DIFFERENCE,
        "text_score",
    )


def test_too_few_products_says_so() -> None:
    result = evaluate_rankings(market(honest=4, inflated=2), keyword_predict, FAST)
    assert result.counts["products_ranked"] == 6 < FAST.min_products
    assert result.verdict == TOO_FEW
    assert result.verdict_treatment is None
    assert {arm.verdict for arm in result.arms[1:]} == {TOO_FEW}


def test_no_qualifying_product_is_a_verdict_not_a_crash(tmp_path: Path) -> None:
    frame = pd.DataFrame(product("A", [(5, "great")] * 2, [(1, "awful")]))
    result = evaluate_rankings(frame, keyword_predict, FAST)
    assert result.counts["products_dropped"] == {"fewer_than_min_reviews": 1, "no_review_on_one_side": 0}
    assert result.counts["products_qualified"] == 0
    assert result.verdict == TOO_FEW
    rank_eval.write_rank_eval(result, tmp_path / "r.json")
    assert (
        strict_json((tmp_path / "r.json").read_text())["arms"]["control"]["bounce_pct"]["1"]["value"] is None
    )


def test_a_category_with_one_product_adds_the_same_to_every_arm() -> None:
    frame = market(honest=20, inflated=5).assign(category="Big")
    lone = pd.DataFrame(inflated_product(99)).assign(category="Lone")
    result = evaluate_rankings(pd.concat([frame, lone]), keyword_predict, FAST)
    assert result.counts["categories"] == 2
    assert result.counts["products_qualified"] == 26
    assert result.counts["products_ranked"] == 25  # one product has nothing to be ranked against
    lone_row = next(row for row in result.per_category if row["category"] == "Lone")
    assert set(lone_row["bounce_pct_at_primary_k"].values()) == {80.0}


def test_categories_come_from_the_column_else_all() -> None:
    assert {
        row["category"] for row in evaluate_rankings(market(5, 1), keyword_predict, FAST).per_category
    } == {"all"}


def test_tied_scores_share_their_positions() -> None:
    discounts = shared_discounts(np.array([2.0, 2.0, 1.0]), [1])[0]
    np.testing.assert_allclose(discounts, [0.5, 0.5, 0.0])
    # the attention of a tie does not depend on which tied product comes first in the input
    bounce = np.array([1.0, 0.0, 0.5])
    assert bounce_at(np.array([2.0, 2.0, 1.0]), bounce, 1) == 0.5
    assert bounce_at(np.array([2.0, 2.0, 1.0]), bounce[[1, 0, 2]], 1) == 0.5
    # equal up to float noise counts as tied
    assert bounce_at(np.array([0.1 + 0.2, 0.3, 0.0]), bounce, 1) == 0.5


def test_attention_is_dcg_normalized_over_the_top_k() -> None:
    scores = np.array([3.0, 2.0, 1.0, 0.0])
    weights = 1 / np.log2(np.arange(2, 4))  # ranks 1 and 2
    bounce = np.array([1.0, 0.0, 1.0, 1.0])
    assert bounce_at(scores, bounce, 2) == pytest.approx(weights[0] / weights.sum())
    assert bounce_at(scores, bounce, 10) == pytest.approx(  # fewer products than k: all of them
        (1 + 1 / np.log2(4) + 1 / np.log2(5)) / (1 + 1 / np.log2(3) + 1 / np.log2(4) + 1 / np.log2(5))
    )


def test_ranking_quality_metrics() -> None:
    outcome = np.array([5.0, 4.0, 2.0, 1.0])
    assert ndcg_at(outcome, outcome, 3) == pytest.approx(1.0)
    assert ndcg_at(-outcome, outcome, 3) < 0.5
    assert spearman(outcome, outcome) == pytest.approx(1.0)
    assert spearman(-outcome, outcome) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.ones(4), outcome))
    assert math.isnan(ndcg_at(outcome, np.ones(4), 3))  # every outcome all 1-star: nothing to gain


def test_restar_replaces_every_confident_disagreement() -> None:
    ratings = pd.Series([5.0, 5.0, 1.0, 3.0, 4.0, 2.0])
    texts = pd.Series(["negative", "neutral", "positive", "positive", "positive", None])
    stars = rank_eval.star_classes(ratings)
    assert rank_eval.restarred(ratings, stars, texts).tolist() == [1.5, 3.0, 4.5, 4.5, 4.0, 2.0]


def test_the_expected_star_weighs_the_class_stars() -> None:
    probs = pd.DataFrame(
        {"p_neg": [1.0, 0.2, np.nan], "p_neu": [0.0, 0.3, np.nan], "p_pos": [0.0, 0.5, np.nan]}
    )
    stars = rank_eval.expected_stars(probs)
    assert stars.iloc[:2].tolist() == pytest.approx([1.5, 0.2 * 1.5 + 0.3 * 3 + 0.5 * 4.5])
    assert math.isnan(stars.iloc[2])


def test_products_whose_reviews_all_abstain_keep_their_stars() -> None:
    frame = market(honest=20, inflated=0)
    unsure = pd.DataFrame(product("U001", [(2, "hmm")] * 10, [(1, "hmm")] * 10))
    result = evaluate_rankings(pd.concat([frame, unsure]), keyword_predict, FAST)
    row = result.products.set_index("parent_asin").loc["U001"]
    assert row["restar_score"] == row["control_score"]
    assert row["text_score_n"] == 10  # abstained texts still have an expected star
    assert result.counts["observed_abstained"] == 10


def test_blank_texts_carry_no_text_evidence() -> None:
    frame = pd.concat(
        [market(honest=20, inflated=0), pd.DataFrame(product("B001", [(5, " ")] * 10, [(5, "")] * 10))]
    )
    result = evaluate_rankings(frame, keyword_predict, FAST)
    row = result.products.set_index("parent_asin").loc["B001"]
    assert row["text_score_n"] == 0
    assert result.counts["observed_unscored_blank"] == 10
    text_scores = result.products["text_score_score"]
    assert row["text_score_score"] == pytest.approx(
        result.products["text_score_sum"].sum() / 200
    )  # the prior
    assert text_scores.notna().all()


def test_equal_timestamps_keep_input_row_order() -> None:
    rows = product("S001", [(5, "great")] * 5, [(1, "awful")] * 5)
    frame = pd.DataFrame(rows).assign(timestamp=1_600_000_000_000)
    frame["text"] = [f"great {i}" for i in range(10)]
    result = evaluate_rankings(frame, keyword_predict, RankEvalSettings(bootstrap=10))
    assert list(result.reviews["row"]) == [0, 1, 2, 3, 4]
    assert list(result.reviews["text"]) == [f"great {i}" for i in range(5)]
    reversed_result = evaluate_rankings(frame.iloc[::-1], keyword_predict, RankEvalSettings(bootstrap=10))
    assert list(reversed_result.reviews["text"]) == [f"great {i}" for i in range(9, 4, -1)]


def test_time_order_decides_the_sides_not_the_file_order() -> None:
    frame = pd.DataFrame(product("T001", [(5, "great")] * 5, [(1, "awful")] * 5)).iloc[::-1]
    result = evaluate_rankings(frame, keyword_predict, RankEvalSettings(bootstrap=10))
    assert set(result.reviews["rating"]) == {5.0}
    assert result.products.loc[0, "bounce"] == 1.0


def test_products_need_reviews_on_both_sides() -> None:
    frame = pd.concat(
        [
            pd.DataFrame(product("A", [(5, "great")] * 10, [(1, "awful")] * 10)),
            pd.DataFrame(product("B", [(5, "great")] * 3, [])),
        ]
    )
    settings = RankEvalSettings(bootstrap=10, min_reviews=2, observed_fraction=0.1)
    result = evaluate_rankings(frame, keyword_predict, settings)
    # B: floor(0.1 x 3) = 0 observed reviews; A: 2 observed, 18 outcome
    assert result.counts["products_dropped"] == {"fewer_than_min_reviews": 0, "no_review_on_one_side": 1}
    assert result.counts["observed_reviews"] == 2
    assert result.counts["outcome_reviews"] == 18


def test_the_cut_is_the_floor_of_the_fraction_without_float_noise() -> None:
    frame = pd.DataFrame(product("A", [(5, "great")] * 50, [(1, "awful")] * 50))
    result = evaluate_rankings(frame, keyword_predict, RankEvalSettings(bootstrap=5, observed_fraction=0.29))
    assert result.counts["observed_reviews"] == 29  # 0.29 * 100 is 28.999999999999996 in floats


def test_unusable_rows_are_dropped_and_counted() -> None:
    frame = pd.DataFrame(product("A", [(5, "great")] * 10, [(1, "awful")] * 10))
    frame.loc[0, "rating"] = 7
    frame.loc[1, "parent_asin"] = None
    frame.loc[2, "timestamp"] = None
    result = evaluate_rankings(frame, keyword_predict, RankEvalSettings(bootstrap=10))
    assert result.counts["rows_dropped"] == {"bad_rating": 1, "missing_product": 1, "bad_timestamp": 1}
    assert result.counts["observed_reviews"] + result.counts["outcome_reviews"] == 17


def test_timestamps_of_any_kind_sort_in_time_order() -> None:
    ms = rank_eval.as_timestamps(pd.Series([1_600_000_000_000, 1_600_000_001_000]))
    assert ms.tolist() == [1_600_000_000_000, 1_600_000_001_000]
    dates = rank_eval.as_timestamps(pd.Series(pd.to_datetime(["2020-01-01", "2020-01-02"])))
    assert dates.tolist() == [1_577_836_800_000, 1_577_923_200_000]
    text = rank_eval.as_timestamps(pd.Series(["2020-01-01", "not a date", None]))
    assert text.iloc[0] == 1_577_836_800_000 and text.iloc[1:].isna().all()


def test_missing_columns_are_named() -> None:
    frame = market(3, 0).drop(columns=["timestamp", "rating"])
    with pytest.raises(PredictorError, match="missing column\\(s\\) 'timestamp', 'rating'"):
        evaluate_rankings(frame, keyword_predict, FAST)


@pytest.mark.parametrize(
    "settings",
    [
        {"observed_fraction": 1.0},
        {"observed_fraction": 0},
        {"min_reviews": 1},
        {"prior_weight": -1},
        {"ks": (0, 3)},
        {"bootstrap": 0},
    ],
)
def test_bad_settings_fail_when_built(settings: dict) -> None:
    with pytest.raises(RankEvalError):
        RankEvalSettings(**settings)


def test_ks_are_sorted_and_the_largest_is_primary() -> None:
    settings = RankEvalSettings(ks=(5, 1, 5, 3))
    assert settings.ks == (1, 3, 5)
    assert settings.primary_k == 5


# --- never score training products ---


def write_frozen(folder: Path, splits: dict[str, list[str]]) -> Path:
    folder.mkdir()
    for name, products in splits.items():
        pd.DataFrame({"parent_asin": products, "text": "x"}).to_parquet(folder / f"{name}.parquet")
    return folder


def test_the_split_filter_keeps_only_held_out_products(tmp_path: Path) -> None:
    frozen = write_frozen(
        tmp_path / "frozen", {"train": ["G000", "G001"], "dev": ["G002", "X000"], "eval": ["G003"]}
    )
    product_filter = held_out_filter(frozen)
    result = evaluate_rankings(market(honest=6, inflated=1), keyword_predict, FAST, product_filter)
    assert set(result.products["parent_asin"]) == {"G002", "G003", "X000"}
    assert result.counts["filter"] == {
        "products_kept": 3,
        "products_removed": 4,
        "products_removed_in_train": 2,
        "products_removed_not_in_split": 2,
    }
    assert "dev+eval" in result.product_filter


def test_a_product_in_train_is_never_kept_even_if_listed_elsewhere(tmp_path: Path) -> None:
    frozen = write_frozen(tmp_path / "frozen", {"train": ["G000"], "dev": ["G000", "G001"], "eval": []})
    assert held_out_filter(frozen).keep == frozenset({"G001"})


def test_an_input_outside_the_split_asks_for_no_filter(tmp_path: Path) -> None:
    frozen = write_frozen(tmp_path / "frozen", {"train": ["A"], "dev": ["B"], "eval": ["C"]})
    with pytest.raises(RankEvalError, match="--no-split-filter"):
        evaluate_rankings(market(3, 0), keyword_predict, FAST, held_out_filter(frozen))


def test_a_missing_split_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(RankEvalError, match="no frozen split here"):
        held_out_filter(tmp_path / "nowhere")


# --- the real model on real rows ---


def test_real_model_answers_every_observed_review(
    tiny_model_dir: Path, reviews_dir: Path, tmp_path: Path
) -> None:
    frame = rank_eval.read_reviews(reviews_dir / "Subscription_Boxes.jsonl.gz", rank_eval.REQUIRED_COLUMNS)
    counts = frame["parent_asin"].value_counts()
    chosen = counts[counts >= 12].index[:6]
    rows = frame[frame["parent_asin"].isin(chosen)].groupby("parent_asin").head(12)
    settings = RankEvalSettings(bootstrap=50)
    result = evaluate_rankings(rows, load_predict_fn(str(tiny_model_dir)), settings, source="real rows")

    assert result.counts["products_qualified"] == 6
    assert result.counts["observed_reviews"] == result.counts["outcome_reviews"] == 36
    reviews = result.reviews
    assert len(reviews) == 36 and reviews["row"].is_unique
    assert reviews["label"].isin([*LABELS, ABSTAIN]).all()
    texts = reviews["text"].fillna("").str.strip() != ""
    assert reviews.loc[texts, ["confidence", "p_neg", "p_neu", "p_pos"]].notna().all().all()
    assert (reviews.groupby("parent_asin").size() == 6).all()
    assert set(result.products["category"]) == {"Subscription_Boxes"}  # from the file's name
    assert result.verdict == TOO_FEW  # 6 products decide nothing, whatever the model says
    png = rank_eval.write_rank_eval(result, tmp_path / "real.json")
    record = strict_json((tmp_path / "real.json").read_text())
    assert record["counts"]["products_qualified"] == 6
    assert png.read_bytes().startswith(b"\x89PNG")


# --- the command ---


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The model URIs the command loaded; each load gives the keyword predictor."""
    return record_loads(monkeypatch, "restar.report.rank_eval.load_predict_fn", keyword_predict)


def write_jsonl_gz(path: Path, frame: pd.DataFrame) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(frame.to_json(orient="records", lines=True))
    return path


def run(group: click.Group, *args: str):
    return CliRunner().invoke(group, ["rank-eval", *args])


def run_unfiltered(group: click.Group, source: Path, *args: str):
    """`restar rank-eval` of every product in `source` (a file outside the frozen split)."""
    return run(group, "--input", str(source), "--no-split-filter", *args)


def test_the_command_writes_json_and_png(loads: list[str], tmp_path: Path) -> None:
    source = write_jsonl_gz(tmp_path / "Gadgets.jsonl.gz", market())
    out = tmp_path / "out" / "ab.json"
    result = run_unfiltered(
        restar_cli, source, "--bootstrap", "100", "--min-products", "20",
        "--model-uri", "models:/restar@staging", "--k", "1", "--k", "5", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"verdict: {LOWERS_TARGET}" in result.output
    assert loads == ["models:/restar@staging"]
    record = strict_json(out.read_text())
    assert record["settings"]["ks"] == [1, 5]
    assert record["model_uri"] == "models:/restar@staging"
    assert record["per_category"][0]["category"] == "Gadgets"
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert sorted(path.name for path in out.parent.iterdir()) == ["ab.json", "ab.png"]


def test_the_command_prints_json(loads: list[str], tmp_path: Path) -> None:
    source = tmp_path / "reviews.csv"
    market(5, 1).to_csv(source, index=False)
    out = tmp_path / "ab.json"
    result = run_unfiltered(restar_cli, source, "--bootstrap", "20", "--json", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert strict_json(result.stdout)["verdict"] == TOO_FEW


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    no_time = tmp_path / "no_time.csv"
    market(3, 0).drop(columns=["timestamp"]).to_csv(no_time, index=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"parent_asin": "A", "timestamp": 1, "rating": 5, "text": "ok"}\n{"parent_asin": \n')
    header_only = tmp_path / "header.csv"
    header_only.write_text("parent_asin,timestamp,rating,text\n")
    return {
        "missing column": (no_time, "missing column(s) 'timestamp'"),
        "empty file": (empty, "input file is empty"),
        "bad JSON line": (broken, "cannot read as jsonl"),
        "no rows": (header_only, "no rows"),
        "not found": (tmp_path / "nope.jsonl", "input file not found"),
        "unknown type": (tmp_path / "reviews.txt", "unsupported file type"),
    }


@pytest.mark.parametrize(
    "case", ["missing column", "empty file", "bad JSON line", "no rows", "not found", "unknown type"]
)
def test_bad_input_is_one_line_and_exit_1(case: str, loads: list[str], tmp_path: Path) -> None:
    source, message = bad_inputs(tmp_path)[case]
    out = tmp_path / "out" / "ab.json"
    result = run_unfiltered(restar_cli, source, "--out", str(out))
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert loads == []  # input problems surface before the model loads
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_missing_split_folder_is_exit_1(loads: list[str], tmp_path: Path) -> None:
    source = write_jsonl_gz(tmp_path / "Gadgets.jsonl.gz", market(3, 0))
    out = tmp_path / "ab.json"
    result = run(restar_cli, "--input", str(source), "--frozen", str(tmp_path / "frozen"), "--out", str(out))
    assert result.exit_code == 1
    assert "no frozen split here" in result.output and "--no-split-filter" in result.output
    assert loads == [] and not out.exists()


def test_bad_usage_is_exit_2(loads: list[str], tmp_path: Path) -> None:
    source = write_jsonl_gz(tmp_path / "Gadgets.jsonl.gz", market(3, 0))
    result = run(restar_cli, "--input", str(source), "--observed-fraction", "1.5")
    assert result.exit_code == 2
    assert loads == []


def test_a_non_json_output_is_refused_before_work(loads: list[str], tmp_path: Path) -> None:
    source = write_jsonl_gz(tmp_path / "Gadgets.jsonl.gz", market(3, 0))
    result = run_unfiltered(restar_cli, source, "--out", str(tmp_path / "ab.csv"))
    assert result.exit_code == 1
    assert "must be a .json file" in result.output
    assert loads == []


def test_an_unwritable_output_is_exit_6_and_leaves_nothing(loads: list[str], tmp_path: Path) -> None:
    source = write_jsonl_gz(tmp_path / "Gadgets.jsonl.gz", market(3, 0))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    result = run_unfiltered(restar_cli, source, "--bootstrap", "5", "--out", str(blocker / "ab.json"))
    assert result.exit_code == 6, result.output
    assert "cannot write" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["Gadgets.jsonl.gz", "blocker"]


def test_a_failed_json_write_removes_the_new_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = evaluate_rankings(market(5, 1), keyword_predict, RankEvalSettings(bootstrap=5))
    real_write = rank_eval.write_bytes

    def failing(path: Path, payload: bytes) -> None:
        if path.suffix == ".json":
            raise rank_eval.write_error(path, OSError(28, "No space left on device"))
        real_write(path, payload)

    monkeypatch.setattr(rank_eval, "write_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        rank_eval.write_rank_eval(result, tmp_path / "ab.json")
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_registry_is_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    source = write_jsonl_gz(tmp_path / "Gadgets.jsonl.gz", market(3, 0))
    out = tmp_path / "ab.json"
    result = run_unfiltered(restar_cli, source, "--out", str(out))
    assert result.exit_code == 3, result.output
    assert "unreachable" in result.output
    assert not out.exists() and not out.with_suffix(".png").exists()
