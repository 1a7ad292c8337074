from pathlib import Path

import pandas as pd
import pytest

from restar.config import CleanConfig, FreezeConfig, SourceConfig, SplitConfig
from restar.data.freeze import (
    DATA_DIR_ENV,
    DataSourceError,
    clean_rows,
    find_category_file,
    freeze,
    grouped_split,
)
from restar.labels import rating_to_label

CATEGORIES = ["Subscription_Boxes", "Sports_and_Outdoors"]


@pytest.fixture(scope="module")
def frozen(reviews_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("frozen") / "frozen"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_DIR_ENV, str(reviews_dir))
        stats = freeze(FreezeConfig(source=SourceConfig(categories=CATEGORIES)), out)
    return out, stats


def load_splits(out: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(out / f"{name}.parquet") for name in ("train", "dev", "eval")}


def test_both_categories_freeze_into_three_splits(frozen) -> None:
    out, stats = frozen
    splits = load_splits(out)
    assert all(len(frame) > 0 for frame in splits.values())
    assert set(pd.concat(splits.values())["category"]) == set(CATEGORIES)
    assert {name: split["rows"] for name, split in stats["splits"].items()} == {
        name: len(frame) for name, frame in splits.items()
    }
    total = sum(len(frame) for frame in splits.values())
    assert 0.05 < len(splits["eval"]) / total < 0.2
    assert (out / "stats.json").is_file()


def test_no_product_in_two_splits(frozen) -> None:
    splits = load_splits(frozen[0])
    products = {name: set(frame["parent_asin"]) for name, frame in splits.items()}
    assert not products["train"] & products["dev"]
    assert not products["train"] & products["eval"]
    assert not products["dev"] & products["eval"]


def test_eval_and_dev_keep_the_natural_class_mix(frozen) -> None:
    splits = load_splits(frozen[0])
    natural = pd.concat(splits.values())["label"].value_counts(normalize=True)
    for name in ("eval", "dev"):
        share = splits[name]["label"].value_counts(normalize=True)
        assert (share - natural).abs().max() < 0.01, name


def test_split_search_keeps_a_large_product_from_skewing_eval() -> None:
    # 270 one-review products and one product with 30 negative reviews: eval holds 10% of the rows, so a
    # shuffle that cuts "big" into eval makes eval all negative.
    labels = [0] * 30 + [0, 1, 2, 2, 2, 2, 2, 2, 2, 2] * 27
    products = ["big"] * 30 + [f"p{i}" for i in range(270)]
    frame = pd.DataFrame({"category": "X", "parent_asin": products, "label": labels})
    natural = frame["label"].value_counts(normalize=True)

    single = grouped_split(frame, SplitConfig(seed=0, shuffles=1))
    assert (single[frame["parent_asin"] == "big"] == "eval").all()  # this seed's first order skews eval

    assignment = grouped_split(frame, SplitConfig(seed=0, shuffles=200))

    assert assignment[frame["parent_asin"] == "big"].nunique() == 1
    for name in ("eval", "dev"):
        share = frame.loc[assignment == name, "label"].value_counts(normalize=True)
        assert (share.reindex(natural.index, fill_value=0) - natural).abs().max() < 0.1, name


def test_no_text_in_two_splits(frozen) -> None:
    splits = load_splits(frozen[0])
    texts = {name: set(frame["text"].str.casefold()) for name, frame in splits.items()}
    assert not texts["train"] & texts["eval"]
    assert not texts["train"] & texts["dev"]


def test_labels_follow_the_rating_mapping(frozen) -> None:
    rows = pd.concat(load_splits(frozen[0]).values())
    assert (rows["label"] == rows["rating"].map(rating_to_label)).all()
    assert set(rows.loc[rows["rating"] <= 2, "label"]) == {0}
    assert set(rows.loc[rows["rating"] == 3, "label"]) == {1}
    assert set(rows.loc[rows["rating"] >= 4, "label"]) == {2}


def test_markup_is_stripped_and_empty_texts_are_dropped_and_counted(frozen) -> None:
    out, stats = frozen
    rows = pd.concat(load_splits(out).values())
    assert not rows["text"].str.contains("<br", regex=False).any()
    assert not rows["text"].str.contains("VIDEOID", regex=False).any()
    assert (rows["text"].str.strip().str.len() > 0).all()
    assert stats["rows_dropped"]["empty_text"] > 0
    assert stats["rows_dropped"]["duplicate_text"] > 0
    kept = sum(split["rows"] for split in stats["splits"].values())
    assert kept == stats["rows_used"] - sum(stats["rows_dropped"].values())


def test_freeze_is_deterministic(reviews_dir: Path, tmp_path: Path, frozen, monkeypatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(reviews_dir))
    again = freeze(FreezeConfig(source=SourceConfig(categories=CATEGORIES)), tmp_path / "frozen")
    assert again["content_sha256"] == frozen[1]["content_sha256"]
    other_seed = freeze(
        FreezeConfig(source=SourceConfig(categories=CATEGORIES), split=SplitConfig(seed=99)),
        tmp_path / "other",
    )
    assert other_seed["content_sha256"] != frozen[1]["content_sha256"]


def test_clean_rows_counts_each_reason() -> None:
    raw = pd.DataFrame(
        {
            "category": "X",
            "rating": [5.0, 1.0, 3.0, None, 4.0, 2.0],
            "title": ["Five Stars", "Awful", "", "t", "", ""],
            "text": ["Great<br />stuff &amp; more", "Broke.", "   ", "x", "great<br />STUFF & more", "fine"],
            "parent_asin": ["a", "b", "c", "d", "e", None],
            "asin": "z",
            "user_id": "u",
            "timestamp": 0,
        }
    )
    cleaned, dropped = clean_rows(raw, CleanConfig())
    assert dropped == {"bad_rating": 1, "missing_parent_asin": 1, "empty_text": 1, "duplicate_text": 1}
    assert cleaned["text"].tolist() == ["Great stuff & more", "Awful. Broke."]
    assert cleaned["label"].tolist() == [2, 0]


def test_rating_titles_are_kept_when_the_config_says_so() -> None:
    raw = pd.DataFrame(
        {
            "category": "X",
            "rating": [5.0, 4.0],
            "title": ["Five Stars", "Four Stars"],
            "text": ["Great<br />stuff", "Good [[VIDEOID:ab12]] stuff"],
            "parent_asin": ["a", "b"],
            "asin": "z",
            "user_id": "u",
            "timestamp": 0,
        }
    )
    kept, _ = clean_rows(raw, CleanConfig(drop_rating_titles=False))
    dropped, _ = clean_rows(raw, CleanConfig())
    assert kept["text"].tolist() == ["Five Stars. Great stuff", "Four Stars. Good stuff"]
    assert dropped["text"].tolist() == ["Great stuff", "Good stuff"]


def test_category_file_resolution(tmp_path: Path) -> None:
    (tmp_path / "A.jsonl").write_text("")
    (tmp_path / "B.sample.jsonl.gz").write_text("")
    assert find_category_file("A", tmp_path).name == "A.jsonl"
    assert find_category_file("B", tmp_path).name == "B.sample.jsonl.gz"
    with pytest.raises(DataSourceError, match=r"no C\.jsonl"):
        find_category_file("C", tmp_path)


def test_no_hub_and_no_data_dir_says_what_to_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataSourceError, match=DATA_DIR_ENV):
        freeze(FreezeConfig(source=SourceConfig(categories=["Subscription_Boxes"])), tmp_path / "frozen")
    assert not (tmp_path / "frozen").exists()
