from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tests import docker_kit, postgres_kit
from tests.helpers import make_tiny_model
from tests.synthetic_reviews import write_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "amazon_reviews_2023"


@pytest.fixture(scope="session")
def reviews_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Amazon Reviews 2023 rows where the shared folder exists, generated ones otherwise."""
    configured = os.environ.get("RESTAR_DATA_DIR")
    if configured:
        return Path(configured)
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    return write_dataset(tmp_path_factory.mktemp("reviews"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer MiniLM classifier (pretrained encoder, untrained head) with Re*Star metadata."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(autouse=True)
def _forget_mlflow_uris():
    """Code under test sets MLflow's process-wide URIs; no test may inherit another's."""
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh embedded MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres_kit.PostgresCluster]:
    """A throwaway PostgreSQL server on 127.0.0.1 for the session (tests/postgres_kit.py).

    Skipped where none can start (no server binaries or driver), except in CI, where it must run."""
    reason = postgres_kit.unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = postgres_kit.PostgresCluster(postgres_kit.find_bin_dir())
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database for one test, on each backend: a SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_cluster").create_database(request.node.name)


@pytest.fixture(scope="session")
def images(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[docker_kit.BuiltImages]:
    """The compose file's images, built once through a real Docker engine around the tiny model
    (tests/docker_kit.py); skipped where no engine runs, except in CI."""
    docker_kit.require_engine()
    docker_kit.remove_leftovers()
    with docker_kit.built_images(tiny_model_dir, tmp_path_factory.mktemp("images")) as built:
        yield built
    docker_kit.remove_leftovers()


@pytest.fixture(scope="session")
def predictor_image(images: docker_kit.BuiltImages) -> str:
    return images.predictor


@pytest.fixture(scope="session")
def baked_predictor_image(images: docker_kit.BuiltImages) -> str:
    return images.baked_predictor


@pytest.fixture(scope="session")
def torchserve_image(images: docker_kit.BuiltImages) -> str:
    return images.torchserve
