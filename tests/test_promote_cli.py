"""restar-promote through its CLI on an embedded MLflow store: which policy is in force (and why),
and the exit code of a dry run that would be rejected."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner

from promotion.cli import cli as promote_cli
from registry.audit import AuditLog
from registry.service import Registry
from restar.cli import cli as restar_cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_policy(folder: Path, name: str, accuracy_min: float) -> Path:
    path = folder / f"{name}.yaml"
    gates = [{"name": "accuracy", "params": {"min": accuracy_min}}]
    path.write_text(yaml.safe_dump({"name": name, "gates": gates}))
    return path


def register(accuracy: float) -> int:
    """A new version of `restar` (no weights: the accuracy gate reads only its metrics), alias staging."""
    with mlflow.start_run() as run:
        logged = mlflow.initialize_logged_model(name="model")
    version = Registry("restar").register(
        f"models:/{logged.model_id}", run.info.run_id, {}, {"eval_accuracy": accuracy}
    )
    return version.version


def production() -> int | None:
    holder = Registry("restar").alias_version("production")
    return holder.version if holder else None


@pytest.fixture
def store(tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Version 1 (accuracy 0.95) in production through restar-promote, version 2 (0.70) in staging;
    policies `lenient` (accuracy >= 0.5) and `strict` (>= 0.9) in tmp_path/policies."""
    monkeypatch.delenv("RESTAR_PROMOTION_POLICY", raising=False)
    monkeypatch.setenv("RESTAR_AUDIT_DB_URL", f"sqlite:///{tmp_path / 'audit.db'}")
    (tmp_path / "policies").mkdir()
    lenient = write_policy(tmp_path / "policies", "lenient", 0.5)
    write_policy(tmp_path / "policies", "strict", 0.9)
    register(0.95)
    moved = CliRunner().invoke(promote_cli, ["--version", "1", "--policy", str(lenient)])
    assert moved.exit_code == 0, moved.output
    register(0.70)
    return tmp_path


def audit(store: Path) -> AuditLog:
    return AuditLog(f"sqlite:///{store / 'audit.db'}")


def test_rejected_dry_run_exits_1_and_moves_nothing(store: Path) -> None:
    strict = store / "policies" / "strict.yaml"
    result = CliRunner().invoke(promote_cli, ["--dry-run", "--policy", str(strict)])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[0] == f"policy {strict} ('strict'), from --policy"
    assert "accuracy  FAIL" in result.output
    assert production() == 1
    latest = audit(store).history("restar")[0]
    assert (latest.action, latest.decision, latest.version) == ("dry_run", "rejected", 2)

    lenient = store / "policies" / "lenient.yaml"
    passing = CliRunner().invoke(promote_cli, ["--dry-run", "--policy", str(lenient)])
    assert passing.exit_code == 0, passing.output
    assert "v2 would pass" in passing.output
    assert production() == 1


def test_json_carries_the_policy_instead_of_a_first_line(store: Path, monkeypatch) -> None:
    monkeypatch.setenv("RESTAR_PROMOTION_POLICY", str(store / "policies" / "strict.yaml"))
    result = CliRunner().invoke(promote_cli, ["--dry-run", "--json"])
    assert result.exit_code == 1, result.output
    payload = json.loads(result.output)  # nothing but the JSON
    assert payload["policy"] == {
        "path": str(store / "policies" / "strict.yaml"),
        "name": "strict",
        "source": "env",
        "origin": "RESTAR_PROMOTION_POLICY",
    }
    assert payload["decision"] == "rejected"
    status = CliRunner().invoke(promote_cli, ["status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["policy"]["name"] == "strict"


def pipeline_config(store: Path, policy: Path) -> Path:
    """configs/ci.yaml with its promotion policy pointed at `policy`."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "ci.yaml").read_text())
    config["promotion"] = {"policy": str(policy.relative_to(store))}
    path = store / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_last_pipeline_runs_policy_is_the_default(store: Path, monkeypatch) -> None:
    """`restar promote` (the DVC stage) records its policy; restar-promote without --policy uses it."""
    config = pipeline_config(store, store / "policies" / "lenient.yaml")
    (store / "registered.json").write_text(json.dumps({"version": 2}))
    record = store / "outputs" / "dvc_run" / "promotion.json"
    stage = ["promote", "--config", str(config), "--registered", "registered.json", "--out", str(record)]
    promoted = CliRunner().invoke(restar_cli, stage)
    assert promoted.exit_code == 0, promoted.output
    assert promoted.output.splitlines()[0] == (
        f"policy policies/lenient.yaml ('lenient'), from the run config ({config} promotion.policy)"
    )
    assert json.loads(record.read_text())["policy"]["path"] == "policies/lenient.yaml"
    assert production() == 2

    register(0.70)  # v3: passes lenient (the pipeline's policy), fails strict
    dry = CliRunner().invoke(promote_cli, ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines()[0] == (
        "policy policies/lenient.yaml ('lenient'), from the last pipeline run "
        "(outputs/dvc_run/promotion.json)"
    )
    status = CliRunner().invoke(promote_cli, ["status"])
    assert status.output.splitlines()[0].endswith(
        "from the last pipeline run (outputs/dvc_run/promotion.json)"
    )

    monkeypatch.setenv("RESTAR_PROMOTION_POLICY", "policies/strict.yaml")  # the variable beats the record
    dry = CliRunner().invoke(promote_cli, ["--dry-run"])
    assert dry.exit_code == 1, dry.output
    assert (
        dry.output.splitlines()[0] == "policy policies/strict.yaml ('strict'), from $RESTAR_PROMOTION_POLICY"
    )

    monkeypatch.delenv("RESTAR_PROMOTION_POLICY")
    (store / "policies" / "lenient.yaml").unlink()  # the record names a policy that is gone: the default
    gone = CliRunner().invoke(promote_cli, ["--dry-run"])
    assert gone.exit_code == 2
    assert "configs/promotion.yaml: policy file not found (the built-in default)" in gone.output
    assert production() == 2


def test_rollback_and_repromotion_repair_a_move_outside_restar_promote(store: Path) -> None:
    lenient = ["--policy", str(store / "policies" / "lenient.yaml")]
    mlflow.MlflowClient().set_registered_model_alias("restar", "production", "2")  # as the MLflow UI does
    warned = CliRunner().invoke(promote_cli, ["status", *lenient])
    assert "moved outside restar-promote" in warned.output
    assert "restar-promote --rollback returns it to v1" in warned.output

    rolled = CliRunner().invoke(promote_cli, ["--rollback", "--reason", "UI click", *lenient])
    assert rolled.exit_code == 0, rolled.output
    assert production() == 1
    assert (
        "v2 was set outside restar-promote; back to the last audited v1"
        in audit(store).history("restar")[0].reason
    )

    mlflow.MlflowClient().set_registered_model_alias("restar", "production", "2")
    adopted = CliRunner().invoke(promote_cli, ["--version", "2", *lenient])  # gate the UI's choice
    assert adopted.exit_code == 0, adopted.output
    assert "production -> v2" in adopted.output
    assert audit(store).last_move("restar", "production").version == 2
    again = CliRunner().invoke(promote_cli, ["--version", "2", *lenient])
    assert "v2 already holds production" in again.output
    clean = CliRunner().invoke(promote_cli, ["status", *lenient])
    assert "WARNING" not in clean.output


def test_three_rollbacks_walk_three_moves_back_each_with_its_reason(store: Path) -> None:
    lenient = ["--policy", str(store / "policies" / "lenient.yaml")]
    for accuracy in (0.96, 0.97):
        register(accuracy)
    for version in (2, 3, 4):  # v1 is in production already: three promotions on top of it
        moved = CliRunner().invoke(promote_cli, ["--version", str(version), *lenient])
        assert moved.exit_code == 0, moved.output
    with_to = CliRunner().invoke(promote_cli, ["--to", "2", *lenient])
    assert with_to.exit_code == 2 and "--to goes with --rollback" in with_to.output

    for reason, expected in (("v4 slow", 3), ("v3 sarcasm", 2), ("v2 drifts", 1)):
        rolled = CliRunner().invoke(promote_cli, ["--rollback", "--reason", reason, *lenient])
        assert rolled.exit_code == 0, rolled.output
        assert f"rollback: production -> v{expected}" in rolled.output
        assert "a rollback runs no gates" in rolled.output
        assert production() == expected
    refused = CliRunner().invoke(promote_cli, ["--rollback", *lenient])
    assert refused.exit_code == 3 and "no earlier production version before v1" in refused.output

    rollbacks = [row for row in reversed(audit(store).history("restar")) if row.action == "rollback"]
    assert [(row.previous_version, row.version, row.reason) for row in rollbacks] == [
        (4, 3, "v4 slow"),
        (3, 2, "v3 sarcasm"),
        (2, 1, "v2 drifts"),
    ]
