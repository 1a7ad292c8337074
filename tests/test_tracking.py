"""Where an embedded store's artifacts go: mlartifacts/ beside it, as the README says."""

from __future__ import annotations

from pathlib import Path

import mlflow

from restar.tracking import DEFAULT_ARTIFACT_DIR, configure_tracking, experiment_id


def test_a_sqlite_store_keeps_artifacts_in_mlartifacts(tracking_uri: str, tmp_path: Path) -> None:
    configure_tracking()  # as every command does: it also sets MLFLOW_TRACKING_URI
    experiment = mlflow.get_experiment(experiment_id("restar"))
    assert experiment.artifact_location == (tmp_path / DEFAULT_ARTIFACT_DIR).as_uri()
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        mlflow.log_text("hello", "note.txt")
    assert [path.name for path in (tmp_path / DEFAULT_ARTIFACT_DIR).rglob("note.txt")] == ["note.txt"]
    assert not (tmp_path / "mlruns").exists()
