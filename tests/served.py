"""The tiny test model logged as a pyfunc, registered as `restar@production`, and served by TorchServe."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from registry.service import PRODUCTION, Registry
from restar.model.pyfunc import log_pyfunc
from restar.serving.export_torchserve import export_torchserve
from restar.serving.serve_local import LocalTorchServe, torchserve

REPO_ROOT = Path(__file__).resolve().parents[1]


def register_production(model_dir: Path, root: Path) -> str:
    """An embedded MLflow store in `root` whose `restar` version 1 = production; returns its URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)
        publish_production(model_dir, uri)
    return uri


def publish_production(model_dir: Path, uri: str) -> int:
    """`model_dir` logged as a pyfunc to the MLflow at `uri` (a store or a server), registered as a new
    `restar` version and given the alias production; returns the version."""
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run() as run:
            info = log_pyfunc(model_dir)
        registry = Registry("restar", uri)
        version = registry.register(info.model_uri, run.info.run_id, {}, {"eval_accuracy": 0.5})
        registry.set_alias(PRODUCTION, version.version)
        return int(version.version)
    finally:
        mlflow.set_tracking_uri(None)


def logged_pyfunc(model_dir: Path, root: Path) -> mlflow.pyfunc.PyFuncModel:
    """`model_dir` logged as a pyfunc into an embedded store in `root`, loaded back through MLflow."""
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        with mlflow.start_run():
            info = log_pyfunc(model_dir)
        return mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(None)


LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"text": json.loads(sys.argv[2])}))
print(out.to_json(orient="records"))
"""


def predict_in_fresh_process(model_uri: str, texts: Sequence[str]) -> pd.DataFrame:
    """`texts` predicted by the pyfunc at `model_uri`, loaded through MLflow in a new Python process (as
    a server would load it: nothing of this process's imports or state)."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, model_uri, json.dumps(list(texts))],
        capture_output=True,
        text=True,
        check=True,
    )
    return pd.DataFrame(json.loads(done.stdout.strip().splitlines()[-1]))


def export_production(uri: str, work: Path, model_config: Path | None = None) -> Path:
    """Export models:/restar@production from the store at `uri` into work/, with the repository's
    model-config.yaml unless `model_config` is given; returns the model store."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        export_torchserve(
            "models:/restar@production",
            work / "artifacts",
            work / "model-store",
            REPO_ROOT / "torchserve" / "handler.py",
            model_config or REPO_ROOT / "torchserve" / "model-config.yaml",
        )
    return work / "model-store"


@contextmanager
def serve_production(uri: str, work: Path) -> Iterator[LocalTorchServe]:
    """Export models:/restar@production from `uri` and serve it with the repository's config."""
    export_production(uri, work)
    with torchserve(
        work / "model-store", REPO_ROOT / "torchserve" / "config.properties", work / "run"
    ) as server:
        yield server
