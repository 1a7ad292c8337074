from pathlib import Path

import pandas as pd
import pytest

from restar.config import FreezeConfig, PrepareConfig, SourceConfig
from restar.data.freeze import DATA_DIR_ENV, freeze
from restar.data.prepare import prepare


@pytest.fixture(scope="module")
def frozen_dir(reviews_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "frozen"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_DIR_ENV, str(reviews_dir))
        freeze(FreezeConfig(source=SourceConfig(categories=["Subscription_Boxes"])), out)
    return out


def test_prepare_is_deterministic_capped_and_stratified(frozen_dir: Path, tmp_path: Path) -> None:
    config = PrepareConfig(train_rows=500, dev_rows=100, eval_rows=None, seed=7)
    first = prepare(config, frozen_dir, tmp_path / "a")
    prepare(config, frozen_dir, tmp_path / "b")
    assert first["rows"]["train"] == 500
    assert first["rows"]["dev"] == 100
    assert first["rows"]["eval"] == len(pd.read_parquet(frozen_dir / "eval.parquet"))
    for split in ("train", "dev", "eval"):
        a = pd.read_parquet(tmp_path / "a" / f"{split}.parquet")
        b = pd.read_parquet(tmp_path / "b" / f"{split}.parquet")
        pd.testing.assert_frame_equal(a, b)

    full = pd.read_parquet(frozen_dir / "train.parquet")["label"].value_counts(normalize=True)
    sample = pd.read_parquet(tmp_path / "a" / "train.parquet")["label"].value_counts(normalize=True)
    assert (full - sample).abs().max() < 0.01
    assert first["frozen_content_sha256"]


def test_another_seed_draws_other_rows(frozen_dir: Path, tmp_path: Path) -> None:
    prepare(PrepareConfig(train_rows=300, seed=1), frozen_dir, tmp_path / "a")
    prepare(PrepareConfig(train_rows=300, seed=2), frozen_dir, tmp_path / "b")
    a = pd.read_parquet(tmp_path / "a" / "train.parquet")
    b = pd.read_parquet(tmp_path / "b" / "train.parquet")
    assert set(a["text"]) != set(b["text"])
