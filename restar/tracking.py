"""Where runs go: MLFLOW_TRACKING_URI, or the embedded SQLite store with artifacts under mlartifacts/."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from registry.service import ensure_reachable
from registry.store import tracking_uri

DEFAULT_ARTIFACT_DIR = "mlartifacts"
# What the experiment holds, for MLflow's UI: training runs, not GenAI traces. MLflow 3.2-3.1x picks the
# experiment page's tabs from this tag; later 3.x UIs (3.17) from the sidebar's workflow switch or
# the page URL's `?workflowType=machine_learning` (see docs/registry.md, "Comparing models").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def configure_tracking() -> str:
    """Point MLflow at the configured store and return its URI; an unreachable tracking server raises
    RegistryUnavailable here, before any work."""
    uri = tracking_uri()
    ensure_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created on first use (embedded store: artifacts in mlartifacts/),
    marked as a model-training experiment."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
            mlflow.MlflowClient().set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND
            )
        return experiment.experiment_id
    artifact_location = None
    # A local SQLite store keeps artifacts in mlartifacts/ (a server decides for itself). Not read from
    # MLFLOW_TRACKING_URI: mlflow.set_tracking_uri sets that variable too, so it is always there.
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        artifact_location = Path(DEFAULT_ARTIFACT_DIR).resolve().as_uri()
    return mlflow.create_experiment(
        name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND}
    )


def read_run_record(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())
