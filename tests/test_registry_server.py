"""Registry and gated promotion against a real `mlflow server` on 127.0.0.1.

Two CI training runs are registered as two versions (SQLite backend); the tests then walk one story
in file order: promote v1, reject v2, force and roll back, serve `production`. Then, on each backend
store (SQLite, and PostgreSQL as docker-compose.yml wires it, the audit log in the same database): a
server with two light versions, promote/reject/force/roll back through `restar-promote`, and ten
promotions racing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect

from promotion.cli import cli as promote_cli
from promotion.policy import Policy
from promotion.promote import Promoter, PromotionConflict
from registry.audit import AuditLog
from registry.service import Registry
from restar.cli import cli as restar_cli
from restar.labels import OUTPUT_COLUMNS
from tests import postgres_kit
from tests.faults_kit import MlflowServer

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` process, started and stopped here."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def project(server: str, reviews_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two CI training runs logged to the server and registered as versions 1 and 2."""
    root = tmp_path_factory.mktemp("registry_project")
    shutil.copytree(REPO_ROOT / "configs", root / "configs")
    second = yaml.safe_load((root / "configs" / "ci.yaml").read_text())
    second["train"].update(seed=7, learning_rate=2.0e-4)
    (root / "configs" / "ci_second.yaml").write_text(yaml.safe_dump(second))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": server,
        "RESTAR_DATA_DIR": str(reviews_dir),
        "RESTAR_AUDIT_DB_URL": f"sqlite:///{root / 'audit.db'}",
    }

    def restar(*args: str) -> None:
        done = subprocess.run([str(BIN / "restar"), *args], cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"restar {' '.join(args)}:\n{done.stderr[-3000:]}"

    restar("fetch-model", "--config", "configs/ci.yaml")
    restar("freeze")
    restar("prepare", "--config", "configs/ci.yaml")
    for config, run_dir in (("configs/ci.yaml", "run1"), ("configs/ci_second.yaml", "run2")):
        restar("train", "--config", config, "--out", run_dir)
        restar("convert", "--config", config, "--checkpoint", f"{run_dir}/checkpoint", "--out", run_dir)
        restar("evaluate", "--model", f"{run_dir}/model", "--out", run_dir)
        restar("register", "--config", config, "--run-dir", run_dir, "--out", f"{run_dir}/registered.json")
    return root, env


@pytest.fixture
def in_project(project, monkeypatch: pytest.MonkeyPatch) -> Path:
    root, env = project
    monkeypatch.chdir(root)
    for key in ("PATH", "MLFLOW_TRACKING_URI", "RESTAR_AUDIT_DB_URL"):
        monkeypatch.setenv(key, env[key])
    return root


def write_policy(root: Path, name: str, gates: list[dict]) -> Path:
    path = root / "configs" / f"policy_{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "gates": gates}))
    return path


def production(server: str) -> int:
    return Registry("restar", server).version("production").version


def audit(root: Path) -> AuditLog:
    return AuditLog(f"sqlite:///{root / 'audit.db'}")


def test_two_versions_registered_with_lineage(server: str, in_project: Path) -> None:
    registry = Registry("restar", server)
    versions = {v.version: v for v in registry.versions()}
    assert set(versions) == {1, 2}
    assert versions[2].aliases == ("staging",)
    for number, run_dir in ((1, "run1"), (2, "run2")):
        record = json.loads((in_project / run_dir / "mlflow_run.json").read_text())
        version = versions[number]
        assert version.run_id == record["run_id"]
        assert not any(key.startswith("metric.") for key in version.tags)  # metrics live on the run
        assert {"restar.config", "restar.model", "restar.git", "restar.data"} <= set(version.tags)
        assert re.fullmatch(r"[0-9a-f]{12} \(train \d+ / dev \d+ / eval \d+\)", version.tags["restar.data"])
        assert version.tags["restar.config"].startswith("ci (")
        assert re.search(r"- \*\*data sha256\*\*: `[0-9a-f]{64}`", version.description)
        assert (
            version.metrics["eval_accuracy"]
            == json.loads((in_project / run_dir / "metrics_eval.json").read_text())["eval_accuracy"]
        )
    result = CliRunner().invoke(restar_cli, ["registry", "compare", "1", "2"])
    assert result.exit_code == 0, result.output
    assert "metric eval_accuracy" in result.output
    assert "param train.seed" in result.output  # the two runs differ in seed


def test_promote_v1_through_the_console_script(server: str, in_project: Path) -> None:
    done = subprocess.run(
        [str(BIN / "restar-promote"), "--version", "1", "--policy", "configs/promotion_ci.yaml"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "latency   PASS" in done.stdout
    assert "production -> v1" in done.stdout
    assert production(server) == 1
    assert audit(in_project).history("restar")[0].decision == "moved"


def test_failing_gate_leaves_production_alone(server: str, in_project: Path) -> None:
    policy = write_policy(in_project, "strict", [{"name": "accuracy", "params": {"min": 0.99}}])
    result = CliRunner().invoke(promote_cli, ["--version", "2", "--policy", str(policy)])
    assert result.exit_code == 1
    assert "accuracy  FAIL" in result.output
    assert "v2 rejected: production stays v1" in result.output
    assert production(server) == 1
    latest = audit(in_project).history("restar")[0]
    assert (latest.decision, latest.version, latest.previous_version) == ("rejected", 2, 1)
    assert latest.gate_results[0]["passed"] is False


def test_force_then_rollback(server: str, in_project: Path) -> None:
    policy = write_policy(in_project, "strict", [{"name": "accuracy", "params": {"min": 0.99}}])
    forced = CliRunner().invoke(
        promote_cli, ["--version", "2", "--policy", str(policy), "--force", "--reason", "test hotfix"]
    )
    assert forced.exit_code == 0, forced.output
    assert production(server) == 2
    rolled = CliRunner().invoke(
        promote_cli, ["--rollback", "--reason", "undo", "--policy", str(policy), "--json"]
    )
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.output)["version"] == 1
    assert production(server) == 1
    rows = audit(in_project).history("restar", limit=2)
    assert [(r.action, r.decision, r.version) for r in rows] == [
        ("rollback", "moved", 1),
        ("force", "moved", 2),
    ]


def test_production_loads_in_a_fresh_process(server: str, in_project: Path) -> None:
    script = (
        "import mlflow, pandas as pd; m = mlflow.pyfunc.load_model('models:/restar@production');"
        "out = m.predict(pd.DataFrame({'text': ['Great box, love it', 'Arrived broken']}));"
        "print(out.to_json(orient='records'))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [set(row) for row in rows] == [set(OUTPUT_COLUMNS)] * 2


def test_errors_have_their_own_exit_codes(server: str, in_project: Path, monkeypatch) -> None:
    unknown = CliRunner().invoke(promote_cli, ["--version", "99", "--policy", "configs/promotion_ci.yaml"])
    assert unknown.exit_code == 3
    assert "99" in unknown.output
    no_staging = write_policy(in_project, "other_model", [{"name": "accuracy"}])
    no_staging.write_text(no_staging.read_text() + "model: nobody\n")
    missing = CliRunner().invoke(promote_cli, ["--policy", str(no_staging)])
    assert missing.exit_code == 3
    assert "staging" in missing.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    down = CliRunner().invoke(promote_cli, ["--version", "1", "--policy", "configs/promotion_ci.yaml"])
    assert down.exit_code == 3
    assert "unreachable" in down.output


def test_status_warns_when_production_moved_outside(server: str, in_project: Path) -> None:
    fine = CliRunner().invoke(promote_cli, ["status", "--policy", "configs/promotion_ci.yaml"])
    assert fine.exit_code == 0, fine.output
    assert "production=v" in fine.output
    assert "WARNING" not in fine.output
    current = production(server)
    Registry("restar", server).set_alias("production", 3 - current)  # e.g. someone clicked in the MLflow UI
    warned = CliRunner().invoke(promote_cli, ["status", "--policy", "configs/promotion_ci.yaml"])
    assert "moved outside restar-promote" in warned.output


def test_predictor_entrypoint_serves_whatever_production_is(server: str, in_project: Path) -> None:
    """`restar predict` exactly as ml-app:v1's ENTRYPOINT runs it, following the alias with no rebuild."""
    import mlflow
    import numpy as np
    import pandas as pd

    from tests.test_containers import entrypoint

    reviews = pd.DataFrame({"text": ["Great box, love it", "Arrived broken", "", "Okay I guess"]})
    reviews.to_csv(in_project / "reviews.csv", index=False)
    program, *args = entrypoint()

    def run_image(output: str) -> pd.DataFrame:
        done = subprocess.run(
            [str(BIN / program), *args, "--input", "reviews.csv", "--output", output],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return pd.read_parquet(in_project / output)

    def expected(version: int) -> np.ndarray:
        model = mlflow.pyfunc.load_model(f"models:/restar/{version}")
        return model.predict(reviews[["text"]])[["p_neg", "p_neu", "p_pos"]].to_numpy(float)

    first = production(server)
    before = run_image("before.parquet")
    assert len(before) == 4 and before.loc[2, "label"] == "abstain"
    np.testing.assert_allclose(
        before[["p_neg", "p_neu", "p_pos"]].to_numpy(float), expected(first), atol=1e-5
    )

    policy = Policy(name="any", gates=[{"name": "accuracy", "params": {"min": 0.0}}])
    Promoter(Registry("restar", server), audit(in_project), policy).promote(3 - first)
    after = run_image("after.parquet")
    np.testing.assert_allclose(
        after[["p_neg", "p_neu", "p_pos"]].to_numpy(float), expected(3 - first), atol=1e-5
    )
    assert not np.allclose(after[["p_pos"]].to_numpy(float)[:2], before[["p_pos"]].to_numpy(float)[:2])


# --- each backend store: SQLite, and PostgreSQL as docker-compose.yml wires it ---------------------


@dataclass(frozen=True)
class Store:
    backend: str
    url: str  # the mlflow server
    audit_url: str
    root: Path  # lenient.yaml (accuracy >= 0.9), strict.yaml (>= 0.95)

    def policy(self, name: str) -> str:
        return str(self.root / f"{name}.yaml")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A real `mlflow server` on each backend store, holding versions 1 (accuracy 0.91) and 2 (0.93) of
    `restar` as light logged models. On PostgreSQL the audit log lives in MLflow's database, as with
    docker-compose.yml's one `postgres` database."""
    root = tmp_path_factory.mktemp(f"{request.param}_store")
    if request.param == "sqlite":
        backend_uri, audit_url = f"sqlite:///{root / 'server.db'}", f"sqlite:///{root / 'audit.db'}"
    else:
        backend_uri = audit_url = request.getfixturevalue("postgres_cluster").create_database("mlflow")
    server = MlflowServer(root, backend_uri)
    url = server.start()
    registry = Registry("restar", url)
    mlflow.set_tracking_uri(url)
    for accuracy in (0.91, 0.93):
        with mlflow.start_run() as run:
            logged = mlflow.initialize_logged_model(name="model")
        registry.register(f"models:/{logged.model_id}", run.info.run_id, {}, {"eval_accuracy": accuracy})
    mlflow.set_tracking_uri(None)
    for name, minimum in (("lenient", 0.9), ("strict", 0.95)):
        policy = {"name": name, "gates": [{"name": "accuracy", "params": {"min": minimum}}]}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(policy))
    yield Store(request.param, url, audit_url, root)
    server.stop()


def test_promotion_through_the_console_script_on_each_backend(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`restar-promote` reads both stores from the environment, as a deployment sets them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.url)
    monkeypatch.setenv("RESTAR_AUDIT_DB_URL", store.audit_url)
    done = subprocess.run(
        [str(BIN / "restar-promote"), "--version", "1", "--policy", store.policy("lenient")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "production -> v1" in done.stdout
    rejected = CliRunner().invoke(promote_cli, ["--version", "2", "--policy", store.policy("strict")])
    assert rejected.exit_code == 1, rejected.output
    forced = CliRunner().invoke(
        promote_cli, ["--version", "2", "--policy", store.policy("strict"), "--force", "--reason", "hotfix"]
    )
    assert forced.exit_code == 0, forced.output
    assert production(store.url) == 2
    rollback = ["--rollback", "--reason", "undo", "--policy", store.policy("strict")]
    rolled = CliRunner().invoke(promote_cli, rollback)
    assert rolled.exit_code == 0, rolled.output
    assert production(store.url) == 1
    rows = AuditLog(store.audit_url).history("restar")
    assert [(r.action, r.decision, r.version, r.previous_version) for r in rows] == [
        ("rollback", "moved", 1, 2),
        ("force", "moved", 2, 1),
        ("promote", "rejected", 2, 1),
        ("promote", "moved", 1, None),
    ]
    assert rows[2].gate_results[0]["passed"] is False
    if store.backend == "postgresql":  # one database holds MLflow's tables and the audit log's
        engine = create_engine(store.audit_url)
        assert {"model_versions", "restar_promotion_audit", "restar_promotion_lock"} <= set(
            inspect(engine).get_table_names()
        )
        engine.dispose()


def test_ten_concurrent_promotions(store: Store) -> None:
    policy = Policy(name="race", gates=[{"name": "accuracy", "params": {"min": 0.0}}])
    before = AuditLog(store.audit_url).history("restar", limit=1000)
    start_version = production(store.url)
    outcomes: list[str] = []
    barrier = threading.Barrier(10)

    def attempt(index: int) -> None:
        registry = Registry("restar", store.url)
        promoter = Promoter(registry, AuditLog(store.audit_url), policy, actor=f"thread-{index}")
        barrier.wait()
        try:
            outcomes.append(promoter.promote(1 + index % 2).decision)
        except PromotionConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    rows = AuditLog(store.audit_url).history("restar", limit=1000)
    new = sorted(rows[: len(rows) - len(before)], key=lambda r: r.id)
    assert len(outcomes) == 10
    assert len(new) == 10  # every attempt left exactly one record
    moved = [r for r in new if r.decision == "moved"]
    assert len(moved) == outcomes.count("moved") >= 1
    holder = start_version
    for row in moved:  # each move starts where the previous one ended: no move lost or doubled
        assert row.previous_version == holder
        holder = row.version
    assert production(store.url) == holder


def test_compose_wires_the_backend_store_as_tested() -> None:
    """docker-compose.yml's MLflow reaches PostgreSQL with the driver tested here, and its image has it."""
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("mlflow", "mlflow-auth"):
        uri = services[name]["environment"]["MLFLOW_BACKEND_STORE_URI"]
        assert uri.startswith(f"{postgres_kit.SCHEME}://"), f"{name}: {uri}"
        assert uri.endswith("@postgres:5432/${POSTGRES_DB:-mlflow}")
    assert "psycopg2-binary" in (REPO_ROOT / "docker" / "mlflow.Dockerfile").read_text()
    # restar-promote on the host keeps its audit log in the same database, on loopback
    assert services["postgres"]["ports"] == ["127.0.0.1:${RESTAR_POSTGRES_PORT:-5432}:5432"]
