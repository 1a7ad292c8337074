"""Offline batch prediction: a CSV/Parquet/JSON Lines file with a `text` column in, predictions out."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from restar.inference import METADATA_FILE, InferenceCore, is_blank
from restar.labels import OUTPUT_COLUMNS

logger = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
PredictFn = Callable[[Sequence[str]], pd.DataFrame]


class PredictorError(ValueError):
    """Input, output or model problems, described for the person who ran the command."""


def file_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise PredictorError(
            f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(FORMATS)}"
        ) from None


def read_input(path: Path) -> pd.DataFrame:
    """The input rows; every way the file can be unusable becomes a PredictorError naming it."""
    kind = file_format(path)
    if not path.is_file():
        raise PredictorError(f"{path}: input file not found")
    if path.stat().st_size == 0:
        raise PredictorError(f"{path}: input file is empty")
    try:
        if kind == "csv":
            frame = pd.read_csv(path, dtype={"text": object}, keep_default_na=False, na_values=[""])
        elif kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True, dtype=False)
    except (ValueError, OSError) as exc:  # parser, JSON, encoding and pyarrow errors all derive from these
        raise PredictorError(f"{path}: cannot read as {kind}: {exc}") from exc
    if "text" not in frame.columns:
        raise PredictorError(f"{path}: missing 'text' column (found: {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise PredictorError(f"{path}: no rows to predict")
    return frame


def load_predict_fn(model_uri: str) -> PredictFn:
    """A Re*Star model directory, or any MLflow model URI (runs:/, models:/name@alias, models:/name/N)."""
    if (Path(model_uri) / METADATA_FILE).is_file():
        return InferenceCore.from_dir(model_uri).predict
    import mlflow
    from mlflow.exceptions import MlflowException

    from restar.tracking import configure_tracking

    configure_tracking()
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise PredictorError(f"cannot load model {model_uri}: {exc.message}") from exc
    except OSError as exc:  # includes connection errors to an unreachable tracking server
        raise PredictorError(f"cannot load model {model_uri}: {exc}") from exc
    return lambda texts: model.predict(pd.DataFrame({"text": list(texts)}))


def predict_frame(
    frame: pd.DataFrame, predict_fn: PredictFn, batch_size: int = 256, progress: bool = True
) -> pd.DataFrame:
    """The input columns followed by the prediction columns, one row per input row, in order."""
    texts = ["" if is_blank(text) else str(text) for text in frame["text"]]
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="predict", unit="batch", disable=not progress):
        chunks.append(predict_fn(texts[start : start + batch_size]))
    predictions = pd.concat(chunks, ignore_index=True)
    if len(predictions) != len(frame):
        raise PredictorError(f"model returned {len(predictions)} rows for {len(frame)} inputs")
    passthrough = frame.drop(columns=[c for c in OUTPUT_COLUMNS if c in frame.columns]).reset_index(drop=True)
    return pd.concat([passthrough, predictions[list(OUTPUT_COLUMNS)]], axis=1)


def write_atomically(frame: pd.DataFrame, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    kind = file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if kind == "csv":
            frame.to_csv(tmp_name, index=False)
        elif kind == "parquet":
            frame.to_parquet(tmp_name, index=False)
        else:
            frame.to_json(tmp_name, orient="records", lines=True, force_ascii=False)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def predict_file(
    input_path: Path, output_path: Path, model_uri: str, batch_size: int = 256, progress: bool = True
) -> int:
    """Predict every row of `input_path` into `output_path`; returns the number of rows written."""
    file_format(output_path)
    frame = read_input(input_path)
    predict_fn = load_predict_fn(model_uri)
    result = predict_frame(frame, predict_fn, batch_size=batch_size, progress=progress)
    write_atomically(result, output_path)
    logger.info("wrote %d predictions to %s", len(result), output_path)
    return len(result)
