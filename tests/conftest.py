from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pytest

from tests import docker_kit, postgres_kit
from tests.helpers import make_tiny_model
from tests.synthetic_reviews import write_dataset

if TYPE_CHECKING:  # pytest-xdist is a dev dependency; the suite also runs without it
    from xdist.remote import Producer
    from xdist.scheduler import LoadScopeScheduling

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "amazon_reviews_2023"


# The modules that build or run the images through a Docker engine. They build and tag the same images,
# so they run one after another, on one pytest-xdist worker; they are the longest chain, so they go first.
DOCKER_MODULES = (
    "tests/test_compose_stack.py",
    "tests/test_image_predictor.py",
    "tests/test_image_torchserve.py",
    "tests/test_readme.py",
)


def work_unit(nodeid: str) -> str:
    """What runs on one pytest-xdist worker: a module (its module fixtures are built once), or all the
    Docker modules."""
    module = nodeid.split("::", 1)[0]
    return "docker" if module in DOCKER_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadScopeScheduling:
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ModuleScheduling(config, log)


def longest_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The Docker unit first, then the units with a slow test, then the rest; each unit's tests keep
    their order (some modules end with a test that stops their shared server)."""
    slow_units = {work_unit(item.nodeid) for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[bool, bool]:
        unit = work_unit(item.nodeid)
        return unit != "docker", unit not in slow_units

    return sorted(items, key=rank)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist the longest work starts first (scripts/test.sh passes --no-loadscope-reorder,
    which keeps this order); a run in one process keeps pytest's own order."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items[:] = longest_first(items)


@pytest.fixture(scope="session", autouse=True)
def scratch_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One temporary folder for whatever the session writes outside tmp_path (MLflow's downloads,
    TorchServe's scratch, subprocesses' TMPDIR), removed when the session ends."""
    tmp_path_factory.getbasetemp()  # pytest's own folders stay where pytest puts them
    scratch = Path(tempfile.mkdtemp(prefix="restar-tests-"))
    scratch.chmod(0o1777)  # as /tmp: other users write here too (initdb runs as postgres)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(scratch))
        patch.setattr(tempfile, "tempdir", str(scratch))
        yield scratch
    shutil.rmtree(scratch, ignore_errors=True)


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
