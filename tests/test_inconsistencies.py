"""Reviews whose text contradicts their stars (restar.report.inconsistencies, `restar inconsistencies`).

A keyword predictor stands in for the model, so which reviews contradict their stars is known by
construction: "awful" reads negative (0.9), "great" positive (0.9, or 0.7 with "rather"), "okay" neutral,
anything else abstains, blank texts are not scored.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from restar.cli import cli as restar_cli
from restar.report import inconsistencies
from restar.report.inconsistencies import (
    PredictorError,
    contradicts,
    file_category,
    find_inconsistencies,
    read_reviews,
    star_classes,
    write_contradictions,
)
from tests.helpers import strict_json
from tests.keyword_kit import keyword_model, record_loads

PROBS = {
    "rather great": (0.15, 0.15, 0.7),
    "awful": (0.9, 0.0512345678, 0.0487654322),
    "great": (0.05, 0.05, 0.9),
    "okay": (0.1, 0.8, 0.1),
}
UNSURE = (0.5, 0.1, 0.4)  # top 0.5: abstains at the model's 0.65
keyword_predict = keyword_model(PROBS, UNSURE)


# (product, stars, text, contradiction?)
REVIEWS = [
    ("A", 5, "awful, broke at once", True),  # 5 stars, negative text
    ("A", 4, "awful smell", True),  # 4 stars count as positive stars too
    ("A", 5, "great", False),
    ("A", 3, "awful", False),  # 3 stars: neutral stars never contradict
    ("B", 1, "rather great actually", True),  # 1 star, positive text (less confident)
    ("B", 2, "okay I guess", False),  # neutral text never contradicts
    ("B", 1, "meh whatever", False),  # abstained
    ("B", 5, "   ", False),  # blank text: not scored
    ("C", None, "awful", False),  # no rating: unrated
    ("C", 2, "awful", False),
]


def reviews_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "parent_asin": [product for product, *_ in REVIEWS],
            "rating": [stars for _, stars, *_ in REVIEWS],
            "text": [text for _, _, text, _ in REVIEWS],
            "title": "",
            "category": ["Toys"] * 8 + ["Books"] * 2,
        }
    )


@pytest.fixture(scope="module")
def result() -> inconsistencies.InconsistencyResult:
    return find_inconsistencies(reviews_frame(), keyword_predict)


def test_contradictions_are_the_polar_disagreements(result: inconsistencies.InconsistencyResult) -> None:
    expected = [i for i, (*_, hit) in enumerate(REVIEWS) if hit]
    assert sorted(result.contradictions["row"]) == expected
    assert result.counts["contradictions"] == 3


def test_contradictions_are_ranked_by_confidence(result: inconsistencies.InconsistencyResult) -> None:
    found = result.contradictions
    assert list(found["row"]) == [0, 1, 4]  # 0.9, 0.9 (input order), then 0.7
    assert found["confidence"].is_monotonic_decreasing
    assert list(found.columns[:6]) == ["row", "category", "parent_asin", "rating", "star_class", "text_class"]
    assert list(found["text_class"]) == ["negative", "negative", "positive"]


def test_rates_per_product_and_category(result: inconsistencies.InconsistencyResult) -> None:
    products = result.per_product.set_index("parent_asin")
    assert products.loc["A", ["reviews", "scored", "confident", "contradictions"]].tolist() == [4, 4, 4, 2]
    assert products.loc["A", "rate_pct"] == 50.0
    assert products.loc["B", ["reviews", "scored", "confident", "contradictions"]].tolist() == [4, 4, 2, 1]
    assert products.loc["C", ["reviews", "unrated", "scored", "contradictions"]].tolist() == [2, 1, 1, 0]
    assert list(result.per_product["parent_asin"]) == ["A", "B", "C"]  # highest rate first
    categories = result.per_category.set_index("category")
    assert categories.loc["Toys", "rate_pct"] == 37.5  # 3 of 8
    assert categories.loc["Books", "rate_pct"] == 0.0
    assert result.contradictions["product_rate_pct"].tolist() == [50.0, 50.0, 25.0]


def test_summary_has_a_total_row(result: inconsistencies.InconsistencyResult) -> None:
    summary = result.summary()
    total = summary.set_index("category").loc["(total)"]
    assert total[["reviews", "unrated", "scored", "contradictions"]].tolist() == [10, 1, 9, 3]
    assert total["rate_pct"] == pytest.approx(33.33)
    assert "(total)" in summary.to_string()


def test_min_confidence_overrides_the_models_abstention() -> None:
    lower = find_inconsistencies(reviews_frame(), keyword_predict, min_confidence=0.5)
    # "meh whatever" (1 star) now reads confidently negative at 0.5: agrees, still no contradiction
    assert lower.per_product.set_index("parent_asin").loc["B", "confident"] == 3
    higher = find_inconsistencies(reviews_frame(), keyword_predict, min_confidence=0.8)
    assert list(higher.contradictions["row"]) == [0, 1]  # the 0.7 one is no longer confident


def test_min_confidence_outside_0_1_is_refused() -> None:
    with pytest.raises(PredictorError, match="between 0 and 1"):
        find_inconsistencies(reviews_frame(), keyword_predict, min_confidence=1.5)


def test_star_classes_and_contradicts() -> None:
    stars = star_classes(pd.Series([1, 2, 2.5, 3, 3.5, 4, 5, 0, 6, None, "x"]))
    assert stars.tolist() == ["negative"] * 2 + ["neutral"] * 3 + ["positive"] * 2 + [None] * 4
    flags = contradicts(pd.Series(["positive", "negative", "neutral", None]), pd.Series(["negative"] * 4))
    assert flags.tolist() == [True, False, False, False]


def test_every_row_is_answered_even_without_contradictions() -> None:
    frame = pd.DataFrame({"parent_asin": ["A", "B"], "rating": [5, 1], "text": ["great", "awful"]})
    found = find_inconsistencies(frame, keyword_predict)
    assert found.contradictions.empty
    assert found.counts["reviews"] == 2
    assert found.per_category["category"].tolist() == ["all"]


def test_missing_columns_are_named() -> None:
    with pytest.raises(PredictorError, match="missing column\\(s\\) 'rating'"):
        find_inconsistencies(reviews_frame().drop(columns=["rating"]), keyword_predict)


def test_csv_rounds_probabilities(result: inconsistencies.InconsistencyResult, tmp_path: Path) -> None:
    assert write_contradictions(result, tmp_path / "c.csv") == 3
    written = pd.read_csv(tmp_path / "c.csv")
    assert len(written) == 3
    for column in ("confidence", "p_neg", "p_neu", "p_pos"):
        assert (written[column].round(6) == written[column]).all()
    raw = (tmp_path / "c.csv").read_text().splitlines()[1]
    assert "0.051235" in raw and "0.0512345678" not in raw


def test_parquet_keeps_full_precision(result: inconsistencies.InconsistencyResult, tmp_path: Path) -> None:
    write_contradictions(result, tmp_path / "c.parquet")
    written = pd.read_parquet(tmp_path / "c.parquet")
    pd.testing.assert_series_equal(written["confidence"], result.contradictions["confidence"])


def test_an_unknown_output_type_is_refused(
    result: inconsistencies.InconsistencyResult, tmp_path: Path
) -> None:
    with pytest.raises(PredictorError, match="unsupported output type"):
        write_contradictions(result, tmp_path / "c.xlsx")
    assert list(tmp_path.iterdir()) == []


def test_the_category_comes_from_the_file_name(tmp_path: Path) -> None:
    assert file_category(Path("Sports_and_Outdoors.sample.jsonl.gz")) == "Sports_and_Outdoors"
    path = tmp_path / "Garden.jsonl"
    reviews_frame().drop(columns=["category"]).to_json(path, orient="records", lines=True)
    assert set(read_reviews(path, ["text"])["category"]) == {"Garden"}
    reviews_frame().to_json(path, orient="records", lines=True)
    assert set(read_reviews(path, ["text"])["category"]) == {"Toys", "Books"}  # the rows' own wins


# --- the command ---


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The model URIs the command loaded; each load gives the keyword predictor."""
    return record_loads(monkeypatch, "restar.batch.predictor.load_predict_fn", keyword_predict)


def run(group: click.Group, *args: str):
    return CliRunner().invoke(group, ["inconsistencies", *args])


def test_the_command_writes_the_file_and_prints_the_summary(loads: list[str], tmp_path: Path) -> None:
    source = tmp_path / "Toys.jsonl.gz"
    with gzip.open(source, "wt", encoding="utf-8") as handle:
        handle.write(reviews_frame().drop(columns=["category"]).to_json(orient="records", lines=True))
    out = tmp_path / "out" / "contradictions.csv"
    result = run(restar_cli, "--input", str(source), "--out", str(out), "--model-uri", "/models/m")
    assert result.exit_code == 0, result.output
    assert loads == ["/models/m"]
    assert "(total)" in result.output and "Toys" in result.output
    assert "wrote 3 contradictions" in result.output
    assert pd.read_csv(out)["row"].tolist() == [0, 1, 4]


def test_the_command_prints_json(loads: list[str], tmp_path: Path) -> None:
    source = tmp_path / "reviews.parquet"
    unrated = pd.DataFrame({"parent_asin": ["Z"], "rating": [None], "text": ["awful"], "category": ["Void"]})
    pd.concat([reviews_frame(), unrated]).to_parquet(source)  # Void: no scored review, no rate
    out = tmp_path / "c.parquet"
    result = run(restar_cli, "--input", str(source), "--out", str(out), "--json", "--min-confidence", "0.8")
    assert result.exit_code == 0, result.output
    record = strict_json(result.stdout)
    assert record["counts"]["contradictions"] == 2
    assert next(row for row in record["per_category"] if row["category"] == "Void")["rate_pct"] is None
    assert len(pd.read_parquet(out)) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("parent_asin,text\nA,great\n", "missing column(s) 'rating'"),
        ("", "input file is empty"),
        ('{"parent_asin": "A", "rating": 5, "text": "ok"}\n{"rating": \n', "cannot read as jsonl"),
    ],
    ids=["missing column", "empty file", "bad JSON line"],
)
def test_bad_input_is_exit_1_with_nothing_written(
    content: str, message: str, loads: list[str], tmp_path: Path
) -> None:
    source = tmp_path / ("in.jsonl" if content.startswith("{") or not content else "in.csv")
    source.write_text(content)
    out = tmp_path / "out.csv"
    result = run(restar_cli, "--input", str(source), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert loads == [] and not out.exists()


def test_a_bad_output_type_is_refused_before_work(loads: list[str], tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    reviews_frame().to_parquet(source)
    result = run(restar_cli, "--input", str(source), "--out", str(tmp_path / "out.json"))
    assert result.exit_code == 1
    assert "unsupported output type" in result.output
    assert loads == []


def test_an_unwritable_output_is_exit_6(loads: list[str], tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    reviews_frame().to_parquet(source)
    (tmp_path / "blocker").write_text("not a folder")
    result = run(restar_cli, "--input", str(source), "--out", str(tmp_path / "blocker" / "out.csv"))
    assert result.exit_code == 6, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blocker", "in.parquet"]


def test_min_confidence_out_of_range_is_usage_error(loads: list[str], tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    reviews_frame().to_parquet(source)
    result = run(
        restar_cli, "--input", str(source), "--out", str(tmp_path / "o.csv"), "--min-confidence", "2"
    )
    assert result.exit_code == 2
    assert loads == []


def test_an_unreachable_registry_is_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    source = tmp_path / "in.parquet"
    reviews_frame().to_parquet(source)
    result = run(restar_cli, "--input", str(source), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 3, result.output
    assert "unreachable" in result.output
    assert not (tmp_path / "o.csv").exists()
