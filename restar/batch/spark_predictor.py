"""Distributed batch prediction: `restar predict --engine spark`.

The same input checks, output columns, row order and output formats as restar.batch.predictor; the rows are
scored by `mlflow.pyfunc.spark_udf` on any Spark master (`local[*]` by default).
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException, PythonException
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from restar.batch.predictor import (
    ChunkWriter,
    PredictorError,
    check_input_file,
    check_text_column,
    file_format,
    model_load_errors,
    passthrough_columns,
    predict_frame,
    unreadable_error,
)
from restar.data.text import TEXT_COLUMN, TITLE_COLUMN
from restar.labels import OUTPUT_COLUMNS, OUTPUT_TYPES
from restar.model.inference import METADATA_FILE
from restar.output_files import atomic_file, staging_dir, write_error

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

logger = logging.getLogger(__name__)

DEFAULT_MASTER = "local[*]"
ROW_INDEX = "__restar_row"
PREDICTION = "__restar_prediction"
# The struct spark_udf returns: the pyfunc's output DataFrame, column for column.
RESULT_TYPE = ", ".join(f"{name} {kind}" for name, kind in OUTPUT_TYPES.items())
SPARK_ERRORS = (PySparkException, Py4JJavaError)
OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def spark_session(master: str | None, conf: Mapping[str, str]) -> SparkSession:
    """A session on `master` (else the conf's `spark.master`, else local[*]) with `conf` applied.

    A local master keeps the driver on 127.0.0.1 without a web UI (`conf` can turn these back), and
    runs its Python workers with this interpreter, the one that has restar installed, unless
    PYSPARK_PYTHON names another (pyspark reads only that variable when it starts from Python).
    """
    master = master or conf.get("spark.master") or DEFAULT_MASTER
    settings: dict[str, str] = {}
    if master.startswith("local"):
        settings = {
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.host": "127.0.0.1",
            "spark.ui.enabled": "false",
        }
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings.update(conf)
    builder = SparkSession.builder.master(master).appName("restar-predict")
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def resolve_model(model_uri: str, work: Path) -> Path:
    """A local pyfunc folder for `model_uri`, fetched once, on the driver.

    `models:/restar@production` is resolved to the version the alias names now, and that version's
    files are downloaded once: every executor scores with the same version even if the alias moves
    during the job. A Re*Star model folder is saved as a pyfunc first.
    """
    if (Path(model_uri) / METADATA_FILE).is_file():
        from restar.model.pyfunc import save_pyfunc

        save_pyfunc(Path(model_uri), work / "model")
        return work / "model"
    import mlflow

    with model_load_errors(model_uri):
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(work)))
    logger.info("model %s fetched to %s", model_uri, path)
    return path


def model_udf(spark: SparkSession, model_dir: Path):
    """The pyfunc in `model_dir` as a pandas UDF returning a struct of the output columns.

    spark_udf (mlflow.pyfunc, read in the installed version) copies `model_dir` into a temporary folder
    on the driver. On a local master the executors share the driver's disk and load the model from
    that folder; on a cluster it zips the folder and ships it with SparkContext.addFile, and each
    executor's Python worker unzips it from SparkFiles and loads it once (SparkModelCache). Either way
    no executor talks to the registry. env_manager="local": executors use the interpreter they run
    in, with no conda or virtualenv built per model.
    """
    import mlflow.pyfunc

    return mlflow.pyfunc.spark_udf(spark, str(model_dir), result_type=RESULT_TYPE, env_manager="local")


def json_column_order(path: Path, columns: Sequence[str]) -> list[str]:
    """Spark sorts JSON fields by name; the local engine keeps the file's order: the first record's keys
    first, then any that appear only later."""
    opener = OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "{}")
        keys = list(json.loads(first))
    except (OSError, ValueError, EOFError, TypeError):
        return list(columns)
    return [key for key in keys if key in columns] + [column for column in columns if column not in keys]


def read_input(spark: SparkSession, path: Path) -> DataFrame:
    """The input rows as a DataFrame, after the same checks, with the same messages, as the local
    engine. FAILFAST: a malformed row fails the job instead of becoming nulls."""
    kind = check_input_file(path)
    reader = spark.read.option("mode", "FAILFAST")
    try:
        if kind == "csv":
            frame = reader.csv(str(path), header=True, multiLine=True, escape='"', inferSchema=True)
        elif kind == "parquet":
            frame = reader.parquet(str(path))
        else:
            frame = reader.json(str(path))
            frame = frame.select(*json_column_order(path, frame.columns))
    except SPARK_ERRORS as exc:
        raise unreadable_error(path, kind, exc) from exc
    check_text_column(path, frame.columns)
    return frame


def in_order_partitions(frame: DataFrame, partitions: int) -> DataFrame:
    """`frame` with a row index, split into `partitions` ranges of it, each sorted by it.

    The index is taken when the file is read, so it follows the file's order; ranging and sorting
    happen before scoring so that the sampling pass that ranging needs never runs the model.
    """
    indexed = frame.withColumn(ROW_INDEX, F.monotonically_increasing_id())
    return indexed.repartitionByRange(partitions, ROW_INDEX).sortWithinPartitions(ROW_INDEX)


def as_string(frame: DataFrame, column: str) -> Column:
    """What restar.batch.predictor.as_strings does: a string column, "" for missing values."""
    return F.coalesce(frame[column].cast("string"), F.lit("")).alias(column)


def scored(frame: DataFrame, udf) -> DataFrame:
    """The row index, the passthrough columns, then the prediction columns."""
    inputs = [as_string(frame, TEXT_COLUMN)]
    if TITLE_COLUMN in frame.columns:
        inputs.append(as_string(frame, TITLE_COLUMN))
    keep = passthrough_columns([c for c in frame.columns if c != ROW_INDEX])
    predicted = frame.withColumn(PREDICTION, udf(F.struct(*inputs)))
    prediction = predicted[PREDICTION]
    return predicted.select(
        predicted[ROW_INDEX],
        *[predicted[column] for column in keep],
        *[prediction.getField(name).alias(name) for name in OUTPUT_COLUMNS],
    )


def job_error(input_path: Path, exc: BaseException) -> PredictorError:
    """One line for a failed Spark job: a Python worker's own exception where there is one."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    summary = lines[-1] if isinstance(exc, PythonException) and lines else (lines or [repr(exc)])[0]
    return PredictorError(f"{input_path}: spark job failed: {summary.strip()}")


def part_files(directory: Path) -> list[Path]:
    """Spark's output parts in partition order (their names number them)."""
    return sorted(directory.glob("part-*.parquet"))


def ordered_batches(parts: Sequence[Path], batch_rows: int) -> Iterator[pd.DataFrame]:
    """Each part's rows in pandas batches, checking that the row index only ever increases."""
    last = -1
    for part in parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=batch_rows):
            frame = batch.to_pandas()
            index = frame.pop(ROW_INDEX)
            if len(index) and (index.iloc[0] <= last or not index.is_monotonic_increasing):
                raise RuntimeError(f"{part}: rows out of order")  # a bug here, not a user error
            last = index.iloc[-1] if len(index) else last
            yield frame


def no_rows_output(frame: DataFrame) -> pd.DataFrame:
    """What the local engine writes for a header without rows: the same columns, no rows."""
    return predict_frame(frame.limit(0).toPandas(), _no_model)


def _no_model(texts: Sequence[str], titles: Sequence[str] | None = None) -> pd.DataFrame:
    raise RuntimeError("predict_frame called the model for no rows")


def publish(frames: Iterable[pd.DataFrame], output_path: Path) -> int:
    """Write `frames` as the one output file the local engine would write."""
    rows = 0
    with atomic_file(output_path) as handle:
        writer = ChunkWriter(handle, file_format(output_path))
        try:
            for frame in frames:
                writer.write(frame)
                rows += len(frame)
            writer.close()
        except OSError as exc:
            writer.abandon()
            raise write_error(output_path, exc) from exc
        except BaseException:
            writer.abandon()
            raise
    return rows


def predict_file_spark(
    input_path: Path,
    output_path: Path,
    model_uri: str,
    spark: SparkSession,
    batch_size: int = 256,
    chunk_rows: int = 50_000,
) -> int:
    """Predict every row of `input_path` into `output_path` with Spark; returns the rows written.

    Spark writes into a hidden folder beside the output; the output file appears, whole, only after
    the job succeeded: a failed job leaves no output and an earlier output file as it was.
    """
    file_format(output_path)  # an unknown output type fails before any work
    frame = read_input(spark, input_path)
    try:
        empty = frame.isEmpty()
    except SPARK_ERRORS as exc:
        raise unreadable_error(input_path, file_format(input_path, compressed=True), exc) from exc
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    partitions = max(spark.sparkContext.defaultParallelism, frame.rdd.getNumPartitions())
    with staging_dir(output_path) as staging:
        model_dir = resolve_model(model_uri, staging / "model")  # a missing model fails here either way
        if empty:
            return publish([no_rows_output(frame)], output_path)
        try:
            scored(in_order_partitions(frame, partitions), model_udf(spark, model_dir)).write.parquet(
                str(staging / "parts")
            )
        except SPARK_ERRORS as exc:
            logger.debug("spark job failed", exc_info=True)
            raise job_error(input_path, exc) from exc
        rows = publish(ordered_batches(part_files(staging / "parts"), chunk_rows), output_path)
    logger.info("wrote %d predictions to %s", rows, output_path)
    return rows
