"""The business proxy as a promotion gate (report only unless enforced) and in the release report, through
a real registered model on an embedded MLflow store."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner

from promotion.cli import cli as promote_cli
from registry.audit import AuditLog
from registry.service import Registry
from restar.cli import cli as restar_cli
from restar.model.pyfunc import log_pyfunc
from tests.test_rank_eval import market


@pytest.fixture
def candidate(
    tracking_uri: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    monkeypatch.setenv("RESTAR_AUDIT_DB_URL", f"sqlite:///{tmp_path / 'audit.db'}")
    with mlflow.start_run() as run:
        info = log_pyfunc(tiny_model_dir)
    market().to_json(tmp_path / "reviews.jsonl", orient="records", lines=True)
    return Registry("restar").register(info.model_uri, run.info.run_id, {}, {"eval_accuracy": 0.9}).version


def policy(tmp_path: Path, **params: object) -> str:
    gate = {"name": "rank_eval", "params": {"input": str(tmp_path / "reviews.jsonl"), "frozen": None}}
    gate["params"].update({"bootstrap": 50, **params})
    path = tmp_path / "business.yaml"
    path.write_text(yaml.safe_dump({"name": "business", "gates": [gate]}))
    return str(path)


def test_report_only_by_default_logged_and_shown_in_the_release_report(
    candidate: int, tmp_path: Path
) -> None:
    # a threshold no ranking meets: reported as failed, yet the version moves
    moved = CliRunner().invoke(
        promote_cli, ["--version", str(candidate), "--policy", policy(tmp_path, max_difference_pp=-1000)]
    )
    assert moved.exit_code == 0, moved.output
    assert re.search(r"rank_eval\s+FAIL \(report\)", moved.output)
    assert "production -> v1" in moved.output
    (record,) = AuditLog().history("restar")
    assert record.gate_results[0]["advisory"] is True
    assert record.gate_results[0]["detail"].endswith("(report only)")

    run_id = Registry("restar").version(candidate).run_id
    logged = {item.path for item in mlflow.MlflowClient().list_artifacts(run_id, "rank_eval")}
    assert logged == {"rank_eval/rank_eval.json", "rank_eval/rank_eval.png"}

    out = tmp_path / "report.html"
    shown = CliRunner().invoke(
        restar_cli, ["report", str(candidate), "--policy", policy(tmp_path), "--out", str(out)]
    )
    assert shown.exit_code == 0, shown.output
    page = out.read_text()
    assert "Business proxy" in page and "40 products" in page
    assert "FAIL</span> (report only)" in page
    assert page.count("data:image/png;base64,") >= 1


def test_enforced_it_decides(candidate: int, tmp_path: Path) -> None:
    rejected = CliRunner().invoke(
        promote_cli,
        ["--version", str(candidate), "--policy", policy(tmp_path, max_difference_pp=-1000, enforce=True)],
    )
    assert rejected.exit_code == 1, rejected.output
    assert "v1 rejected" in rejected.output
    assert Registry("restar").alias_version("production") is None


def test_several_input_files_are_read_as_one(candidate: int, tmp_path: Path) -> None:
    """The release policy names the frozen dev and eval files; a product's reviews may span both (the
    rows name their category, as the frozen files do: else each file's name would be its category)."""
    reviews = market().assign(category="Magazines")
    halves = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    reviews.iloc[::2].to_json(halves[0], orient="records", lines=True)
    reviews.iloc[1::2].to_json(halves[1], orient="records", lines=True)
    moved = CliRunner().invoke(
        promote_cli,
        ["--version", str(candidate), "--policy", policy(tmp_path, input=[str(path) for path in halves])],
    )
    assert moved.exit_code == 0, moved.output
    (record,) = AuditLog().history("restar")
    assert "over 40 products" in record.gate_results[0]["detail"]
