"""`restar export-torchserve` builds an archive of `production` only if restar-promote put it there.

Against a real `mlflow server`: the alias is moved the way the MLflow UI moves it (a plain
`set_registered_model_alias`), and the export must refuse it unless --force.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from promotion.cli import cli as promote_cli
from registry.audit import AuditLog
from registry.service import Registry
from restar.cli import cli as restar_cli
from restar.config import BaselineConfig
from restar.labels import LABELS, rating_to_label
from restar.model.inference import ModelMetadata
from restar.model.pyfunc import log_pyfunc
from restar.model.tfidf import KIND, fit
from tests.faults_kit import MlflowServer

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKING = [
    *("--handler", str(REPO_ROOT / "torchserve" / "handler.py")),
    *("--model-config", str(REPO_ROOT / "torchserve" / "model-config.yaml")),
]


@pytest.fixture(scope="module")
def tfidf_model_dir(reviews_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Re*Star model of the TF-IDF kind (fast to log, download and pack), fitted on real rows."""
    rows = pd.read_json(sorted(reviews_dir.glob("*.jsonl*"))[0], lines=True, nrows=600)
    frame = pd.DataFrame({"text": rows["text"], "label": rows["rating"].map(rating_to_label)})
    model_dir = tmp_path_factory.mktemp("tfidf") / "model"
    model_dir.mkdir()
    fit(frame, BaselineConfig(max_ngram=1)).save(model_dir)
    ModelMetadata(max_length=0, base_model="tfidf-logreg", kind=KIND, labels=LABELS).save(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def server(tfidf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` with versions 1 and 2 of `restar` (both the TF-IDF model), no alias yet."""
    server = MlflowServer(tmp_path_factory.mktemp("export_guard"))
    server.start()
    mlflow.set_tracking_uri(server.url)
    for _ in range(2):
        with mlflow.start_run() as run:
            info = log_pyfunc(tfidf_model_dir)
        Registry("restar", server.url).register(info.model_uri, run.info.run_id, {}, {"eval_accuracy": 0.9})
    mlflow.set_tracking_uri(None)
    policy = {"name": "lenient", "gates": [{"name": "accuracy", "params": {"min": 0.5}}]}
    (server.root / "policy.yaml").write_text(yaml.safe_dump(policy))
    yield server
    server.stop()


def environment(server: MlflowServer) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": server.url, "RESTAR_AUDIT_DB_URL": audit_url(server)}


def audit_url(server: MlflowServer) -> str:
    return f"sqlite:///{server.root / 'audit.db'}"


def promote(server: MlflowServer, version: int) -> None:
    args = ["--version", str(version), "--policy", str(server.root / "policy.yaml")]
    result = CliRunner().invoke(promote_cli, args, env=environment(server))
    assert result.exit_code == 0, result.output


def export(server: MlflowServer, out: Path, *args: str, env: dict[str, str] | None = None):
    command = ["export-torchserve", "--artifacts", str(out / "a"), "--model-store", str(out / "m")]
    return CliRunner().invoke(
        restar_cli, [*command, *PACKING, *args, "--json"], env=env or environment(server)
    )


def archived_version(out: Path) -> int:
    with zipfile.ZipFile(out / "m" / "restar.mar") as archive:
        return json.loads(archive.read("registry.json"))["version"]


def ui_moves_production(server: MlflowServer, version: int) -> None:
    """What the MLflow UI's "Promote model" button and alias editor do: set the alias, nothing else."""
    mlflow.MlflowClient(server.url).set_registered_model_alias("restar", "production", str(version))


def test_export_refuses_production_set_outside_the_gates_unless_forced(
    server: MlflowServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    promote(server, 1)
    first = export(server, tmp_path)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["promotion"] == "audited"
    assert archived_version(tmp_path) == 1
    archive_before = (tmp_path / "m" / "restar.mar").read_bytes()
    records_before = len(AuditLog(audit_url(server)).history("restar", limit=1000))

    ui_moves_production(server, 2)
    refused = export(server, tmp_path)
    assert refused.exit_code == 1, refused.output
    assert "v2 of restar holds production" in refused.output
    assert "the last audited move set v1" in refused.output
    assert "restar-promote --rollback" in refused.output
    assert "restar-promote --version 2" in refused.output
    assert "--force" in refused.output
    assert (tmp_path / "m" / "restar.mar").read_bytes() == archive_before  # nothing was rebuilt

    with caplog.at_level(logging.WARNING, logger="restar.serving.export_torchserve"):
        forced = export(server, tmp_path, "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["promotion"] == "unaudited, forced"
    assert archived_version(tmp_path) == 2
    assert any("exporting anyway (--force): v2 of restar" in r.getMessage() for r in caplog.records)
    assert len(AuditLog(audit_url(server)).history("restar", limit=1000)) == records_before

    promote(server, 2)  # the repair: put the UI's choice through the gates
    repaired = export(server, tmp_path)
    assert repaired.exit_code == 0, repaired.output
    assert json.loads(repaired.stdout)["promotion"] == "audited"


def test_a_version_not_in_production_is_not_checked(server: MlflowServer, tmp_path: Path) -> None:
    ui_moves_production(server, 2)
    by_number = export(server, tmp_path, "--model-uri", "models:/restar/1")
    assert by_number.exit_code == 0, by_number.output
    assert json.loads(by_number.stdout)["promotion"] == "not production"
    assert archived_version(tmp_path) == 1


def test_without_an_audit_log_production_is_refused_and_no_log_is_created(
    server: MlflowServer, tmp_path: Path
) -> None:
    ui_moves_production(server, 2)
    missing = tmp_path / "never_promoted.db"
    env = {**environment(server), "RESTAR_AUDIT_DB_URL": f"sqlite:///{missing}"}
    refused = export(server, tmp_path, env=env)
    assert refused.exit_code == 1, refused.output
    assert "the last audited move set nothing" in refused.output
    assert not missing.exists()
    assert not (tmp_path / "m").exists()
