"""ml-app:v1 built from the repository and run through a real Docker engine (tests/docker_kit.py).

It resolves models:/restar@production from a real `mlflow server` (on 127.0.0.1; the container shares
the host's network), scores 300 real reviews exactly as the local `restar predict` does, runs as a
non-root user on a read-only root, refuses bad input without writing anything, and its baked variant
scores with no network at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from restar.config import SourceConfig
from restar.data.freeze import DATA_DIR_ENV, read_category
from tests import docker_kit
from tests.faults_kit import MlflowServer
from tests.served import publish_production
from tests.upstream_rows import CATEGORY

BIN = Path(sys.executable).parent
PROBABILITIES = ["p_neg", "p_neu", "p_pos"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (SQLite, served artifacts) whose restar version 1 is production."""
    docker_kit.require_engine()
    server = MlflowServer(tmp_path_factory.mktemp("image_registry"))
    url = server.start()
    try:
        publish_production(tiny_model_dir, url)
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def data_dir(reviews_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real reviews as CSV, in a folder the image's user (uid 10001) may write to."""
    folder = tmp_path_factory.mktemp("image_data")
    folder.chmod(0o777)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_DIR_ENV, str(reviews_dir))
        rows = read_category(CATEGORY, SourceConfig(categories=[CATEGORY]))
    rows = rows[rows["text"].fillna("").str.strip() != ""].head(300)
    assert len(rows) == 300, f"only {len(rows)} upstream rows with text"
    rows[["title", "text"]].to_csv(folder / "reviews.csv", index=False)
    pd.DataFrame({"body": ["no text column here"]}).to_csv(folder / "no_text.csv", index=False)
    return folder


def run_predictor(
    image: str, data: Path, *args: str, run_args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`docker run` of the image on `data` (as /data), read-only, with a tmpfs at /tmp."""
    return docker_kit.docker(
        "run", "--rm", "--label", docker_kit.TEST_LABEL, "--read-only", "--tmpfs", "/tmp",
        "-v", f"{data}:/data", *run_args, image, *args,
        check=False,
    )  # fmt: skip


def local_predict(data: Path, output: str, env: dict[str, str]) -> pd.DataFrame:
    done = subprocess.run(
        [str(BIN / "restar"), "predict", "--input", "reviews.csv", "--output", output],
        cwd=data,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return pd.read_csv(data / output)


def assert_same_predictions(container: pd.DataFrame, local: pd.DataFrame) -> None:
    assert len(container) == len(local) == 300
    assert container["label"].tolist() == local["label"].tolist()
    np.testing.assert_allclose(
        container[PROBABILITIES].to_numpy(float), local[PROBABILITIES].to_numpy(float), atol=1e-5, rtol=0
    )


def test_resolves_production_and_scores_as_the_local_predictor(
    predictor_image: str, registry_url: str, data_dir: Path
) -> None:
    done = run_predictor(
        predictor_image, data_dir, "--input", "/data/reviews.csv", "--output", "/data/container.csv",
        run_args=("--network", "host", "-e", f"MLFLOW_TRACKING_URI={registry_url}"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    container = pd.read_csv(data_dir / "container.csv")
    local = local_predict(data_dir, "local.csv", {"MLFLOW_TRACKING_URI": registry_url})
    assert_same_predictions(container, local)
    assert container[PROBABILITIES].std().max() > 1e-3  # each review scored on its own


def test_runs_as_a_non_root_user(predictor_image: str) -> None:
    assert docker_kit.inspect(predictor_image)["Config"]["User"] == "10001"
    done = docker_kit.docker(
        "run", "--rm", "--label", docker_kit.TEST_LABEL, "--entrypoint", "id", predictor_image, "-u"
    )  # fmt: skip
    assert done.stdout.strip() == "10001"


@pytest.mark.parametrize(
    ("input_name", "message"),
    [("missing.csv", "missing.csv"), ("no_text.csv", "text")],
    ids=["missing-file", "no-text-column"],
)
def test_bad_input_exits_non_zero_and_writes_nothing(
    predictor_image: str, registry_url: str, data_dir: Path, input_name: str, message: str
) -> None:
    before = set(os.listdir(data_dir))
    done = run_predictor(
        predictor_image, data_dir, "--input", f"/data/{input_name}", "--output", "/data/bad.parquet",
        run_args=("--network", "host", "-e", f"MLFLOW_TRACKING_URI={registry_url}"),
    )  # fmt: skip
    assert done.returncode != 0
    error = done.stderr.strip().splitlines()[-1]
    assert message in error and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert set(os.listdir(data_dir)) == before  # no partial output, no temporary file left


def test_baked_variant_scores_with_no_network(
    baked_predictor_image: str, registry_url: str, data_dir: Path
) -> None:
    done = run_predictor(
        baked_predictor_image, data_dir, "--input", "/data/reviews.csv", "--output", "/data/baked.csv",
        run_args=("--network", "none"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    local = local_predict(data_dir, "local_baked.csv", {"MLFLOW_TRACKING_URI": registry_url})
    assert_same_predictions(pd.read_csv(data_dir / "baked.csv"), local)
