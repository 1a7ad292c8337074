"""Offline batch prediction: a CSV/Parquet/JSON Lines file with a `text` column in, predictions out.

Upstream rows may carry their `title` too: both go to the model, which prepares them as the training
data was prepared (restar.data.text).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from restar.data.text import TEXT_COLUMN, TITLE_COLUMN
from restar.errors import RestarError
from restar.labels import OUTPUT_COLUMNS, OUTPUT_TYPES, PROBABILITY_COLUMNS
from restar.model.inference import METADATA_FILE, InferenceCore, is_blank
from restar.output_files import atomic_file, write_error

if TYPE_CHECKING:
    import mlflow.pyfunc

logger = logging.getLogger(__name__)

CSV_DECIMALS = 6
FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Inputs only: pandas reads `reviews.jsonl.gz` (the upstream files) or `reviews.csv.bz2` as they are.
COMPRESSIONS = {".gz", ".bz2", ".xz", ".zst"}


class PredictFn(Protocol):
    """Review texts (and, for upstream rows, their titles) -> one prediction row each, in order."""

    def __call__(self, texts: Sequence[str], titles: Sequence[str] | None = None) -> pd.DataFrame: ...


class PredictorError(RestarError, ValueError):
    """Input, output or model problems, described for the person who ran the command."""


def file_format(path: Path, compressed: bool = False) -> str:
    """The format its suffix names: csv, parquet or jsonl; `compressed` also allows .csv.gz and the like."""
    suffix = path.suffix.lower()
    if compressed and suffix in COMPRESSIONS and FORMATS.get(Path(path.stem).suffix.lower()) != "parquet":
        suffix = Path(path.stem).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        also = f", or .csv/.jsonl compressed as {sorted(COMPRESSIONS)}" if compressed else ""
        raise PredictorError(
            f"{path}: unsupported file type {path.suffix!r}; use {sorted(FORMATS)}{also}"
        ) from None


def check_input_file(path: Path) -> str:
    """The input's format, once the checks every engine makes before reading pass: a known file type,
    present and not empty."""
    kind = file_format(path, compressed=True)
    if not path.is_file():
        raise PredictorError(f"{path}: input file not found")
    if path.stat().st_size == 0:
        raise PredictorError(f"{path}: input file is empty")
    return kind


def check_text_column(path: Path, columns: Sequence[object]) -> None:
    if TEXT_COLUMN not in columns:
        found = ", ".join(map(str, columns))
        raise PredictorError(f"{path}: missing 'text' column (found: {found})")


def no_rows_error(path: Path) -> PredictorError:
    return PredictorError(f"{path}: no rows to predict")


def unreadable_error(path: Path, kind: str, exc: BaseException) -> PredictorError:
    return PredictorError(f"{path}: cannot read as {kind}: {exc}")


def passthrough_columns(columns: Sequence[str]) -> list[str]:
    """The input columns an output keeps, in order: all but those the predictions replace."""
    return [column for column in columns if column not in OUTPUT_COLUMNS]


def read_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The input rows, `chunk_rows` at a time, so memory stays flat however long the file is.

    Every way the file can be unusable becomes a PredictorError naming it, including a bad line far
    into the file (raised when that chunk is read).
    """
    kind = check_input_file(path)
    header: pd.DataFrame | None = None
    rows = 0
    try:
        for chunk in _raw_chunks(path, kind, chunk_rows):
            if header is None:
                if not len(chunk.columns):  # blank lines only: not even a header names the columns
                    raise no_rows_error(path)
                check_text_column(path, list(chunk.columns))
                header = chunk.iloc[:0]
            rows += len(chunk)
            if len(chunk):
                yield chunk
    # parser, JSON, encoding, pyarrow and decompression errors (a truncated .gz ends in EOFError,
    # a JSON line that is not an object in TypeError)
    except (ValueError, OSError, EOFError, TypeError, zlib.error) as exc:
        if isinstance(exc, PredictorError):
            raise
        raise unreadable_error(path, kind, exc) from exc
    if header is None:
        raise no_rows_error(path)
    if rows == 0:  # a header and no rows: the output is a header and no rows too
        yield header


def _raw_chunks(path: Path, kind: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if kind == "csv":
        yield from pd.read_csv(
            path,
            dtype={TEXT_COLUMN: object, TITLE_COLUMN: object},
            keep_default_na=False,
            na_values=[""],
            chunksize=chunk_rows,
        )
    elif kind == "parquet":
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows == 0:
            yield parquet.schema_arrow.empty_table().to_pandas()
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
    else:
        with pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows) as reader:
            yield from reader


def load_predict_fn(model_uri: str) -> PredictFn:
    """A Re*Star model directory, or any MLflow model URI (runs:/, models:/name@alias, models:/name/N)."""
    if (Path(model_uri) / METADATA_FILE).is_file():
        return InferenceCore.from_dir(model_uri).predict
    with model_load_errors(model_uri):
        model = load_pyfunc(model_uri)

    def predict(texts: Sequence[str], titles: Sequence[str] | None = None) -> pd.DataFrame:
        columns = {TEXT_COLUMN: list(texts)}
        if titles is not None:
            columns[TITLE_COLUMN] = list(titles)
        return model.predict(pd.DataFrame(columns))

    return predict


def load_pyfunc(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """`mlflow.pyfunc.load_model`, downloading into a folder that is gone once the model is in memory.

    Left to itself, MLflow downloads a registry or run URI into a fresh `mkdtemp` folder that nothing
    removes: one model copy per load, for as long as the machine runs.
    """
    import mlflow

    with tempfile.TemporaryDirectory(prefix="restar-model-") as download:
        return mlflow.pyfunc.load_model(model_uri, dst_path=download)


@contextlib.contextmanager
def model_load_errors(model_uri: str) -> Iterator[None]:
    """Point MLflow at the configured registry, then turn a failure to fetch `model_uri` into
    RegistryUnavailable (registry down) or PredictorError (no such model)."""
    from mlflow.exceptions import MlflowException

    from registry.errors import VersionNotFound
    from registry.service import is_unreachable, unreachable
    from restar.tracking import configure_tracking

    uri = configure_tracking()  # an unreachable registry fails here, as RegistryUnavailable
    try:
        yield
    except (MlflowException, OSError) as exc:  # OSError: the connection broke during the download
        if is_unreachable(exc):
            raise unreachable(uri, exc) from exc
        detail = exc.message if isinstance(exc, MlflowException) else str(exc)
        if is_not_found(exc):
            raise VersionNotFound(f"cannot load model {model_uri} from {uri}: {detail}") from exc
        raise PredictorError(f"cannot load model {model_uri}: {detail}") from exc


def is_not_found(exc: BaseException) -> bool:
    """No such registered model, version, alias or run (MLflow words an unknown alias as a bad parameter)."""
    from registry.service import NOT_FOUND_CODES

    code = getattr(exc, "error_code", None)
    alias_missing = code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)
    return code in NOT_FOUND_CODES or alias_missing


# The prediction columns of an input with no rows.
PANDAS_DTYPES = {"string": object, "double": "float64", "boolean": bool}
NO_PREDICTIONS = pd.DataFrame(
    {name: pd.Series(dtype=PANDAS_DTYPES[kind]) for name, kind in OUTPUT_TYPES.items()}
)


def as_strings(values: pd.Series) -> list[str]:
    """A column as the strings the model's input schema takes: "" for missing values."""
    return ["" if is_blank(value) else str(value) for value in values]


def predict_frame(frame: pd.DataFrame, predict_fn: PredictFn, batch_size: int = 256) -> pd.DataFrame:
    """The input columns followed by the prediction columns, one row per input row, in order."""
    texts = as_strings(frame[TEXT_COLUMN])
    titles = as_strings(frame[TITLE_COLUMN]) if TITLE_COLUMN in frame.columns else None
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = slice(start, start + batch_size)
        chunks.append(predict_fn(texts[batch], None if titles is None else titles[batch]))
    predictions = pd.concat(chunks, ignore_index=True) if chunks else NO_PREDICTIONS
    if len(predictions) != len(frame):
        raise PredictorError(f"model returned {len(predictions)} rows for {len(frame)} inputs")
    missing = [column for column in OUTPUT_COLUMNS if column not in predictions.columns]
    if missing:
        raise PredictorError(f"model output lacks the column(s) {', '.join(missing)}")
    passthrough = frame[passthrough_columns(list(frame.columns))].reset_index(drop=True)
    return pd.concat([passthrough, predictions[list(OUTPUT_COLUMNS)]], axis=1)


def _text_if_null(field: pa.Field) -> pa.Field:
    return field.with_type(pa.string()) if pa.types.is_null(field.type) else field


class ChunkWriter:
    """Appends prediction chunks as CSV, Parquet or JSON Lines to one open binary file."""

    def __init__(self, handle: BinaryIO, kind: str):
        self.handle = handle
        self.kind = kind
        self.parquet: pq.ParquetWriter | None = None
        self.started = False

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "parquet":
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if not table.num_rows:  # empty object columns have no type to infer: they are text
                table = table.cast(pa.schema([_text_if_null(field) for field in table.schema]))
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.handle, table.schema)
            # a later chunk may infer another type for a passthrough column (all-null, say): use the first's
            self.parquet.write_table(table.cast(self.parquet.schema))
        elif self.kind == "csv":  # text for people: 6 decimals (Parquet and JSON Lines keep every digit)
            rounded = frame.round({column: CSV_DECIMALS for column in ("confidence", *PROBABILITY_COLUMNS)})
            rounded.to_csv(self.handle, header=not self.started, index=False, encoding="utf-8")
        elif len(frame):  # no rows are no lines; pandas would write one empty line
            self.handle.write(frame.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8"))
        self.started = True

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()

    def abandon(self) -> None:
        """Stop without finishing the file (a Parquet writer left open would try again when collected)."""
        if self.parquet is not None and self.parquet.is_open:
            with contextlib.suppress(Exception):
                self.parquet.close()


def predict_file(
    input_path: Path,
    output_path: Path,
    model_uri: str,
    batch_size: int = 256,
    progress: bool = True,
    chunk_rows: int = 50_000,
) -> int:
    """Predict every row of `input_path` into `output_path`; returns the number of rows written.

    Reads and writes `chunk_rows` rows at a time into an unnamed temporary file beside the output
    (restar.output_files), which takes the output's name only when every row is answered: a failure,
    a full disk or a kill leaves no output file and no partial one. A full disk raises OutputWriteError.
    """
    kind = file_format(output_path)
    chunks = read_chunks(input_path, chunk_rows)
    first = next(chunks)  # input problems surface before the model loads
    predict_fn = load_predict_fn(model_uri)
    rows = 0
    with atomic_file(output_path) as handle:
        writer = ChunkWriter(handle, kind)
        try:
            with tqdm(desc="predict", unit="row", disable=None if progress else True) as bar:  # a tty only
                for chunk in itertools.chain([first], chunks):
                    answered = predict_frame(chunk, predict_fn, batch_size=batch_size)
                    writer.write(answered)
                    rows += len(chunk)
                    bar.update(len(chunk))
            writer.close()
        except OSError as exc:  # reading errors are PredictorErrors by now: this is the output failing
            writer.abandon()
            raise write_error(output_path, exc) from exc
        except BaseException:
            writer.abandon()
            raise
    logger.info("wrote %d predictions to %s", rows, output_path)
    return rows
