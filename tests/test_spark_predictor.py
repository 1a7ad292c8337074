"""`restar predict --engine spark` on a real local Spark session: the local engine's output, order and
errors, an output that appears whole or not at all, and a model fetched once on the driver."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner

from registry.errors import VersionNotFound
from restar.batch import spark_predictor
from restar.batch.predictor import PredictorError, predict_file
from restar.batch.spark_predictor import predict_file_spark, read_input, spark_session
from restar.cli import cli
from restar.labels import OUTPUT_COLUMNS
from restar.model.pyfunc import save_pyfunc
from tests.served import register_production

pytestmark = pytest.mark.slow  # a JVM and Python workers: about a minute and a half in all

BOOM_MODEL = '''
import mlflow
import pandas as pd


class Boom(mlflow.pyfunc.PythonModel):
    """Fails on any batch with a text containing BOOM, else predicts neutral."""

    def predict(self, context, model_input, params=None):
        if model_input["text"].str.contains("BOOM").any():
            raise ValueError("boom in the batch")
        n = len(model_input)
        return pd.DataFrame(
            {"label": ["neutral"] * n, "confidence": [1.0] * n, "p_neg": [0.0] * n,
             "p_neu": [1.0] * n, "p_pos": [0.0] * n, "truncated": [False] * n}
        )


mlflow.models.set_model(Boom())
'''

BLANK_ROWS = (3, 20, 37, 54)


@pytest.fixture(scope="module")
def spark():
    # Small files split into several partitions, and three ranges to score: order is really tested.
    session = spark_session(
        "local[2]",
        {
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "3",
            "spark.sql.files.maxPartitionBytes": "2048",
            "spark.sql.files.openCostInBytes": "0",
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def pyfunc_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a saved pyfunc: one model URI both engines load."""
    path = tmp_path_factory.mktemp("pyfunc") / "model"
    save_pyfunc(tiny_model_dir, path)
    return path


def reviews(rows: int) -> pd.DataFrame:
    """Upstream-like rows: blank and missing texts, titles, newlines, quotes, commas and non-ASCII."""
    words = ["broke after a week", "works great", "it's fine, I guess", "terrible\nsupport", 'a "gem"']
    texts: list[str | None] = [f"Review {i}: {words[i % len(words)]} — ünïcode" for i in range(rows)]
    for blank, value in zip(BLANK_ROWS, ["", "   ", None, "\n"], strict=True):
        if blank >= rows:
            break
        texts[blank] = value
    return pd.DataFrame(
        {
            "id": range(rows),
            "title": [f"Title, {i}" if i % 4 else "" for i in range(rows)],
            "text": texts,
            "rating": [float(1 + i % 5) for i in range(rows)],
        }
    )


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False, row_group_size=20)
    else:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True, dtype=False)


def assert_same_predictions(spark_out: Path, local_out: Path, rows: int) -> None:
    got, expected = read(spark_out), read(local_out)
    assert len(got) == rows
    assert list(got.columns) == list(expected.columns)
    assert got["id"].tolist() == list(range(rows))
    pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-5, rtol=0)
    blank = got["id"].isin(BLANK_ROWS)
    assert (got.loc[blank, "label"] == "abstain").all()
    assert got.loc[blank, "p_neg"].isna().all() and got.loc[~blank, "p_neg"].notna().all()


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_spark_matches_the_local_engine(spark, pyfunc_dir: Path, tmp_path: Path, suffix: str) -> None:
    source = write(reviews(150), tmp_path / f"reviews{suffix}")
    assert read_input(spark, source).rdd.getNumPartitions() >= 2  # order across partitions

    rows = predict_file_spark(source, tmp_path / f"spark{suffix}", str(pyfunc_dir), spark, batch_size=16)
    predict_file(source, tmp_path / f"local{suffix}", str(pyfunc_dir), progress=False)

    assert rows == 150
    assert_same_predictions(tmp_path / f"spark{suffix}", tmp_path / f"local{suffix}", 150)


def test_cli_spark_engine_on_csv_with_embedded_newlines(spark, pyfunc_dir: Path, tmp_path: Path) -> None:
    source = write(reviews(60), tmp_path / "reviews.csv")
    assert len(source.read_text().splitlines()) > 61  # quoted newlines inside rows
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            "--engine",
            "spark",
            "--master",
            "local[2]",
            "--conf",
            "spark.sql.shuffle.partitions=2",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "spark.csv"),
            "--model-uri",
            str(pyfunc_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 60 predictions" in result.output
    predict_file(source, tmp_path / "local.csv", str(pyfunc_dir), progress=False)
    assert_same_predictions(tmp_path / "spark.csv", tmp_path / "local.csv", 60)


def test_the_model_is_resolved_once_on_the_driver(
    spark, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    uri = register_production(tiny_model_dir, registry)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    source = write(reviews(40), tmp_path / "reviews.parquet")
    predict_file(source, tmp_path / "local.parquet", "models:/restar@production", progress=False)

    downloads: list[str] = []
    udf_uris: list[str] = []
    real_download = mlflow.artifacts.download_artifacts
    real_udf = mlflow.pyfunc.spark_udf

    def download(artifact_uri: str, **kwargs) -> str:
        downloads.append(artifact_uri)
        path = real_download(artifact_uri=artifact_uri, **kwargs)
        # From here on the registry is gone: anything but the copy on the driver would fail.
        (registry / "mlflow.db").rename(registry / "gone.db")
        return path

    def udf(session, model_uri: str, **kwargs):
        udf_uris.append(model_uri)
        assert (Path(model_uri) / "MLmodel").is_file()  # a local copy, not a registry URI
        return real_udf(session, model_uri, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    monkeypatch.setattr(mlflow.pyfunc, "spark_udf", udf)
    predict_file_spark(source, tmp_path / "spark.parquet", "models:/restar@production", spark)

    assert downloads == ["models:/restar@production"]
    assert len(udf_uris) == 1
    assert_same_predictions(tmp_path / "spark.parquet", tmp_path / "local.parquet", 40)


def test_one_model_call_per_row_in_the_plan(spark, pyfunc_dir: Path, tmp_path: Path) -> None:
    # Five output columns come out of one struct: the UDF must run once per row, not once per column.
    frame = read_input(spark, write(reviews(10), tmp_path / "reviews.parquet"))
    udf = spark_predictor.model_udf(spark, pyfunc_dir)
    plan = spark_predictor.scored(spark_predictor.in_order_partitions(frame, 2), udf)
    physical = plan._jdf.queryExecution().executedPlan().toString()
    assert physical.count("ArrowEvalPython") == 1
    assert plan.columns[-len(OUTPUT_COLUMNS) :] == list(OUTPUT_COLUMNS)


def left_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_a_failing_job_leaves_no_output_and_the_old_one_as_it_was(spark, tmp_path: Path) -> None:
    code = tmp_path / "boom.py"
    code.write_text(BOOM_MODEL)
    mlflow.pyfunc.save_model(str(tmp_path / "boom"), python_model=str(code))
    frame = reviews(120)
    frame.loc[100, "text"] = "BOOM"
    source = write(frame, tmp_path / "reviews.jsonl")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "predictions.parquet").write_text("earlier output")

    with pytest.raises(PredictorError, match=r"spark job failed: .*boom in the batch"):
        predict_file_spark(source, out_dir / "predictions.parquet", str(tmp_path / "boom"), spark)

    assert left_in(out_dir) == ["predictions.parquet"]
    assert (out_dir / "predictions.parquet").read_text() == "earlier output"
    # the same model scores a file without BOOM: the failure above was the job's, not the setup's
    frame.loc[100, "text"] = "fine"
    rows = predict_file_spark(write(frame, source), out_dir / "new.csv", str(tmp_path / "boom"), spark)
    assert rows == 120 and len(read(out_dir / "new.csv")) == 120


def test_a_missing_model_leaves_no_output(spark, tracking_uri: str, tmp_path: Path) -> None:
    source = write(reviews(10), tmp_path / "reviews.csv")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "predictions.jsonl").write_text("earlier output")

    with pytest.raises(VersionNotFound, match="cannot load model models:/restar@production"):  # exit 3
        predict_file_spark(source, out_dir / "predictions.jsonl", "models:/restar@production", spark)

    assert left_in(out_dir) == ["predictions.jsonl"]
    assert (out_dir / "predictions.jsonl").read_text() == "earlier output"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("no_text.csv", "review,rating\ngood,5\n"),
        ("empty.jsonl", ""),
        ("reviews.txt", "text\ngood\n"),
        ("missing.parquet", None),
    ],
)
def test_input_errors_match_the_local_engine(
    spark, pyfunc_dir: Path, tmp_path: Path, name: str, content: str | None
) -> None:
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    with pytest.raises(PredictorError) as local:
        predict_file(source, tmp_path / "local.csv", str(pyfunc_dir), progress=False)
    with pytest.raises(PredictorError) as distributed:
        predict_file_spark(source, tmp_path / "spark.csv", str(pyfunc_dir), spark)
    assert str(distributed.value) == str(local.value)
    assert left_in(tmp_path) == ([] if content is None else [name])


@pytest.mark.parametrize("name", ["header_only.csv", "header_only.parquet"])
def test_a_header_without_rows_gives_the_columns_and_no_rows(
    spark, pyfunc_dir: Path, tmp_path: Path, name: str
) -> None:
    source = write(reviews(0), tmp_path / name)
    rows = predict_file_spark(source, tmp_path / "spark.jsonl", str(pyfunc_dir), spark)
    predict_file(source, tmp_path / "local.csv", str(pyfunc_dir), progress=False)
    predict_file_spark(source, tmp_path / "spark.csv", str(pyfunc_dir), spark)

    assert rows == 0 and (tmp_path / "spark.jsonl").read_bytes() == b""
    assert (tmp_path / "spark.csv").read_text() == (tmp_path / "local.csv").read_text()
    header = "id,title,text,rating,label,confidence,p_neg,p_neu,p_pos,truncated\n"
    assert (tmp_path / "spark.csv").read_text() == header
