"""The MLflow pyfunc: a Re*Star model directory served through the one inference core."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema

from restar.data.text import TEXT_COLUMN, TITLE_COLUMN
from restar.labels import OUTPUT_TYPES
from restar.model.inference import InferenceCore

ENTRY_SCRIPT = Path(__file__).with_name("pyfunc_entry.py")
INPUT_EXAMPLE = pd.DataFrame(  # upstream rows: the title is optional, markup is cleaned as in training
    {
        TEXT_COLUMN: ["Arrived broken<br />and support never answered.", "Does the job, nothing special."],
        TITLE_COLUMN: ["Do not buy", ""],
    }
)
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", TEXT_COLUMN), ColSpec("string", TITLE_COLUMN, required=False)]),
    outputs=Schema([ColSpec(kind, name) for name, kind in OUTPUT_TYPES.items()]),
)


class RestarPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the model directory artifact once; `predict` takes a DataFrame with a `text` column and,
    for upstream rows, an optional `title` column."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.core = InferenceCore.from_dir(context.artifacts["model_dir"])

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params=None):
        return self.core.predict_frame(model_input)


def requirements() -> list[str]:
    """Pins for the serving environment; the restar distribution itself carries the inference core."""
    packages = ["restar", "torch", "transformers", "mlflow", "pandas", "scikit-learn", "onnxruntime"]
    return [f"{name}=={version(name).split('+')[0]}" for name in packages]


def pyfunc_arguments(model_dir: Path) -> dict[str, object]:
    """What log_model and save_model both take: models-from-code, so no pickled classes."""
    return {
        "python_model": str(ENTRY_SCRIPT),
        "artifacts": {"model_dir": str(model_dir)},
        "signature": SIGNATURE,
        "input_example": INPUT_EXAMPLE,
        "pip_requirements": requirements(),
    }


def log_pyfunc(model_dir: Path, name: str = "model") -> ModelInfo:
    """Log `model_dir` as a pyfunc into the active run."""
    return mlflow.pyfunc.log_model(name=name, **pyfunc_arguments(model_dir))


def save_pyfunc(model_dir: Path, path: Path) -> None:
    """Save `model_dir` as a pyfunc in a local folder, outside any tracking store (benchmarks)."""
    mlflow.pyfunc.save_model(str(path), **pyfunc_arguments(model_dir))


def log_run_model(run: mlflow.ActiveRun, model_dir: Path, out_dir: Path, tracking_uri: str) -> dict[str, str]:
    """Log `model_dir` as the run's pyfunc and write out_dir/mlflow_run.json, which later stages
    (evaluate, register) read to log into the same run and register its model."""
    model_info = log_pyfunc(model_dir)
    record = {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": tracking_uri,
        "model_uri": model_info.model_uri,
        "run_model_uri": f"runs:/{run.info.run_id}/model",
    }
    (out_dir / "mlflow_run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
