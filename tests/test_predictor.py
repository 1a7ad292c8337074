import json
import os
import stat
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from registry.errors import VersionNotFound
from registry.service import RegistryUnavailable
from restar.batch.predictor import CSV_DECIMALS, PredictorError, predict_file, predict_frame
from restar.labels import ABSTAIN, OUTPUT_COLUMNS
from restar.model.inference import InferenceCore
from restar.model.pyfunc import log_pyfunc
from tests.faults_kit import MlflowServer

HARD_TEXTS = [
    "Great product, works as described.",
    "",
    None,
    "😀🔥👍",
    "word " * 10_000,
    "Terrible. Broke after a day.",
    "   ",
]


def hard_frame() -> pd.DataFrame:
    return pd.DataFrame({"id": range(len(HARD_TEXTS)), "text": HARD_TEXTS})


def write_input(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def read_output(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (".csv", ".parquet"),
        (".parquet", ".csv"),
        (".jsonl", ".jsonl"),
    ],
)
def test_every_row_answered_in_order(tiny_model_dir: Path, tmp_path: Path, source: str, target: str) -> None:
    input_path = write_input(hard_frame(), tmp_path / f"in{source}")
    output_path = tmp_path / f"out{target}"
    rows = predict_file(input_path, output_path, str(tiny_model_dir), batch_size=3, progress=False)
    out = read_output(output_path)
    assert rows == len(HARD_TEXTS) == len(out)
    assert out["id"].tolist() == list(range(len(HARD_TEXTS)))
    assert set(OUTPUT_COLUMNS) <= set(out.columns)
    assert out.loc[[1, 2, 6], "label"].tolist() == [ABSTAIN] * 3
    answered = out.drop(index=[1, 2, 6])
    assert answered["label"].isin(["negative", "neutral", "positive", ABSTAIN]).all()
    assert not answered[["p_neg", "p_neu", "p_pos"]].isna().any().any()
    assert out["truncated"].tolist() == [text == "word " * 10_000 for text in HARD_TEXTS]
    assert not list(tmp_path.glob(".out*"))  # no temporary file left behind


def test_a_model_whose_output_lacks_a_column_is_named() -> None:
    def old_model(texts: list[str], titles: list[str] | None) -> pd.DataFrame:
        columns = {"label": ["neutral"] * len(texts), "confidence": 1.0, "p_neg": 0.0, "p_neu": 1.0}
        return pd.DataFrame(columns)

    with pytest.raises(PredictorError, match=r"model output lacks the column\(s\) p_pos, truncated"):
        predict_frame(pd.DataFrame({"text": ["a", "b"]}), old_model)


def test_csv_probabilities_have_six_decimals_and_parquet_every_digit(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    input_path = write_input(hard_frame(), tmp_path / "in.parquet")
    for suffix in (".csv", ".parquet"):
        predict_file(input_path, tmp_path / f"out{suffix}", str(tiny_model_dir), progress=False)
    cells = pd.read_csv(tmp_path / "out.csv", dtype=str)[["confidence", "p_neg", "p_neu", "p_pos"]]
    digits = [
        len(cell.split(".")[1]) for cell in cells.to_numpy().ravel() if isinstance(cell, str) and "." in cell
    ]
    assert digits and max(digits) <= 6
    full = pd.read_parquet(tmp_path / "out.parquet")["p_pos"].dropna()
    assert (full.round(6) != full).any()  # Parquet keeps what the model said
    csv = pd.read_csv(tmp_path / "out.csv")["p_pos"].dropna()
    np.testing.assert_allclose(csv.to_numpy(), full.to_numpy(), atol=5e-7)


def test_predictions_match_the_core(tiny_model_dir: Path, tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["Loved it", "Meh.", "Worst purchase", "ok"] * 5})
    predict_file(
        write_input(frame, tmp_path / "in.parquet"),
        tmp_path / "out.parquet",
        str(tiny_model_dir),
        batch_size=4,
        progress=False,
    )
    out = pd.read_parquet(tmp_path / "out.parquet")
    expected = InferenceCore.from_dir(tiny_model_dir).predict(frame["text"].tolist())
    np.testing.assert_allclose(
        out[["p_neg", "p_neu", "p_pos"]], expected[["p_neg", "p_neu", "p_pos"]], atol=1e-5
    )


def test_mlflow_model_uri(tiny_model_dir: Path, tracking_uri: str, tmp_path: Path) -> None:
    with mlflow.start_run() as run:
        log_pyfunc(tiny_model_dir)
    input_path = write_input(hard_frame(), tmp_path / "in.csv")
    predict_file(input_path, tmp_path / "out.csv", f"runs:/{run.info.run_id}/model", progress=False)
    out = pd.read_csv(tmp_path / "out.csv")
    assert len(out) == len(HARD_TEXTS)
    assert out.loc[[1, 2, 6], "label"].tolist() == [ABSTAIN] * 3


def test_a_registry_model_leaves_no_download_behind(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real `mlflow server` (artifacts proxied, so every load is a download): the copy is gone
    once the model is loaded. MLflow alone leaves one model copy in the temp folder per load."""
    server = MlflowServer(tmp_path)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.start())
        mlflow.set_tracking_uri(server.url)
        with mlflow.start_run() as run:
            log_pyfunc(tiny_model_dir)
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        input_path = write_input(hard_frame(), tmp_path / "in.csv")
        rows = predict_file(
            input_path, tmp_path / "out.csv", f"runs:/{run.info.run_id}/model", progress=False
        )
    finally:
        server.stop()
    assert rows == len(HARD_TEXTS)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("in.csv", "review,stars\nnice,5\n", "missing 'text' column"),
        ("in.csv", "", "input file is empty"),
        ("in.jsonl", "\n\n", "no rows to predict"),
        ("in.jsonl", '{"text": "ok"}\n{"text": broken\n', "cannot read as jsonl"),
        ("in.parquet", "not parquet at all", "cannot read as parquet"),
        ("in.txt", "text\nhello\n", "unsupported file type '.txt'"),
    ],
)
def test_bad_input_names_the_problem_and_writes_nothing(
    tiny_model_dir: Path, tmp_path: Path, name: str, content: str, message: str
) -> None:
    input_path = tmp_path / name
    input_path.write_text(content)
    output_path = tmp_path / "out.csv"
    with pytest.raises(PredictorError, match=message):
        predict_file(input_path, output_path, str(tiny_model_dir), progress=False)
    assert not output_path.exists()
    assert not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("output_name", ["out.csv", "out.parquet", "out.jsonl"])
def test_a_header_without_rows_gives_the_columns_without_rows(
    tiny_model_dir: Path, tmp_path: Path, output_name: str
) -> None:
    input_path = tmp_path / "in.csv"
    input_path.write_text("id,text,title\n")
    output_path = tmp_path / output_name
    assert predict_file(input_path, output_path, str(tiny_model_dir), progress=False) == 0
    if output_path.suffix == ".jsonl":
        assert output_path.read_bytes() == b""  # JSON Lines has no header: no rows are no lines
        return
    out = read_output(output_path)
    assert len(out) == 0
    assert list(out.columns) == ["id", "text", "title", *OUTPUT_COLUMNS]
    if output_path.suffix == ".parquet":
        schema = pq.read_schema(output_path)
        assert str(schema.field("label").type) == "string"
        assert str(schema.field("text").type) == "string"
        assert str(schema.field("confidence").type) == "double"


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named-temp"])
@pytest.mark.parametrize("umask", [0o027, 0o002, 0o077])
def test_outputs_are_created_as_the_umask_says(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unnamed: bool, umask: int
) -> None:
    if not unnamed:  # as on a kernel or file system without unnamed files
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    input_path = write_input(hard_frame(), tmp_path / "in.csv")
    output_path = tmp_path / "out.csv"
    previous = os.umask(umask)
    try:
        predict_file(input_path, output_path, str(tiny_model_dir), progress=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(output_path.stat().st_mode) == 0o666 & ~umask


def test_missing_input_and_unknown_model_version(tracking_uri: str, tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="input file not found"):
        predict_file(tmp_path / "nope.csv", tmp_path / "out.csv", "models:/restar/1", progress=False)
    input_path = write_input(hard_frame(), tmp_path / "in.csv")
    for uri in ("models:/restar/7", "models:/restar@nope", "models:/no-such-model/1"):
        with pytest.raises(VersionNotFound, match=f"cannot load model {uri}"):  # exit 3, as restar-promote's
            predict_file(input_path, tmp_path / "out.csv", uri, progress=False)
    assert not (tmp_path / "out.csv").exists()


def test_unreachable_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    input_path = write_input(hard_frame(), tmp_path / "in.csv")
    with pytest.raises(RegistryUnavailable, match=r"registry at http://127\.0\.0\.1:9 is unreachable"):
        predict_file(input_path, tmp_path / "out.csv", "models:/restar@production", progress=False)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_chunked_streaming_matches_one_chunk(tiny_model_dir: Path, tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(
        {
            "id": range(23),
            "text": [f"review number {i} " * (i % 5) for i in range(23)],
            "note": [None] * 3 + ["x"] * 20,
        }
    )  # a column whose first chunk is all null
    input_path = write_input(frame, tmp_path / f"in{suffix}")
    predict_file(input_path, tmp_path / f"one{suffix}", str(tiny_model_dir), progress=False)
    rows = predict_file(
        input_path, tmp_path / f"many{suffix}", str(tiny_model_dir), progress=False, chunk_rows=3
    )
    assert rows == 23
    # Chunks pad to their own longest text, which moves probabilities in the last float bits; CSV's
    # rounding can turn that into one unit of its last decimal (0.0338605 -> 0.03386 or 0.033861).
    atol = 1.5 * 10**-CSV_DECIMALS if suffix == ".csv" else 1e-8
    pd.testing.assert_frame_equal(
        read_output(tmp_path / f"one{suffix}"), read_output(tmp_path / f"many{suffix}"), atol=atol
    )


def test_bad_line_deep_in_the_file_leaves_no_output(tiny_model_dir: Path, tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"fine review {i}"}) for i in range(10)] + ['{"text": broken']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(PredictorError, match="cannot read as jsonl"):
        predict_file(
            tmp_path / "in.jsonl", tmp_path / "out.parquet", str(tiny_model_dir), progress=False, chunk_rows=4
        )
    assert not list(tmp_path.glob("*out*"))


def upstream_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(5),
            "title": ["Not worth it", "Five Stars", None, "Great!", "Terrible"],
            "text": [
                "Broke in a day.<br /><br />Support &amp; refund: none.",
                "Love it<br />",
                "[[VIDEOID:abc123]] Does the job",
                "Works &quot;fine&quot;",
                "<br />",
            ],
        }
    )


PREPARED = [
    "Not worth it. Broke in a day. Support & refund: none.",
    "Love it",
    "Does the job",
    'Great! Works "fine"',
]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_upstream_rows_are_prepared_as_in_training(tiny_model_dir: Path, tmp_path: Path, suffix: str) -> None:
    frame = upstream_frame()
    predict_file(
        write_input(frame, tmp_path / f"in{suffix}"),
        tmp_path / "out.parquet",
        str(tiny_model_dir),
        progress=False,
    )
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out["id"].tolist() == list(range(5))
    assert out["text"].tolist() == frame["text"].tolist()  # the input columns pass through as they were
    expected = InferenceCore.from_dir(tiny_model_dir).probabilities(PREPARED)
    np.testing.assert_allclose(out.loc[:3, ["p_neg", "p_neu", "p_pos"]].to_numpy(float), expected, atol=1e-5)
    assert out.loc[4, "label"] == ABSTAIN  # markup and a title, but no words in the body


def test_upstream_rows_through_an_mlflow_model_uri(
    tiny_model_dir: Path, tracking_uri: str, tmp_path: Path
) -> None:
    with mlflow.start_run() as run:
        log_pyfunc(tiny_model_dir)
    input_path = write_input(upstream_frame(), tmp_path / "in.csv")
    predict_file(input_path, tmp_path / "uri.csv", f"runs:/{run.info.run_id}/model", progress=False)
    predict_file(input_path, tmp_path / "dir.csv", str(tiny_model_dir), progress=False)
    served, local = pd.read_csv(tmp_path / "uri.csv"), pd.read_csv(tmp_path / "dir.csv")
    assert served["label"].tolist() == local["label"].tolist()
    np.testing.assert_allclose(
        served[["p_neg", "p_neu", "p_pos"]].to_numpy(float),
        local[["p_neg", "p_neu", "p_pos"]].to_numpy(float),
        atol=1e-5,
    )
