"""The bad-input matrix: every hostile input has a defined outcome at the endpoint, the predictor and the
pyfunc (a 4xx JSON error naming the problem, a clear PredictorError, `abstain`, or a prediction), and
whatever it is, the server goes on serving and no good request pays for it.

Methods and paths other than `POST /predictions/restar` are the gateway's (tests/test_gateway.py).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from mlflow.exceptions import MlflowException

from restar.batch.predictor import PredictorError, predict_file
from restar.labels import ABSTAIN
from restar.model.inference import InferenceCore
from restar.serving.serve_local import LocalTorchServe
from tests.helpers import strict_json
from tests.served import logged_pyfunc, register_production, serve_production

pytestmark = pytest.mark.slow
PROBS = ["p_neg", "p_neu", "p_pos"]
GOOD = {"text": "Sturdy, cheap and it arrived early."}

DEEP_LIST = b"[" * 100_000
DEEP_OBJECTS = b'{"a":' * 5_000 + b"1" + b"}" * 5_000
HUGE_INTEGER = b'{"text": 1' + b"0" * 5_000 + b"}"


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTorchServe]:
    uri = register_production(tiny_model_dir, tmp_path_factory.mktemp("bad_input_registry"))
    with serve_production(uri, tmp_path_factory.mktemp("bad_input_torchserve")) as server:
        yield server


def post(
    server: LocalTorchServe, raw: bytes, content_type: str | None = "application/json"
) -> requests.Response:
    headers = {"Authorization": f"Bearer {server.keys['inference']}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return requests.post(f"{server.inference_url}/predictions/restar", data=raw, headers=headers, timeout=60)


def body(value: object) -> bytes:
    return json.dumps(value).encode()


# (case, raw body, HTTP status, fragment of the JSON error)
REFUSED = [
    ("lone surrogate", b'{"text": "\\ud800"}', 400, "lone surrogate \\ud800"),
    ("lone surrogate in a title", b'{"text": "ok", "title": "\\udfff"}', 400, "title is not valid Unicode"),
    ("deep list nesting", DEEP_LIST, 400, "nested too deeply"),
    ("deep object nesting", DEEP_OBJECTS, 400, "nested too deeply"),
    ("invalid UTF-8", b'{"text": "caf\xe9"}', 400, "not valid UTF-8"),
    ("huge integer", HUGE_INTEGER, 400, "not valid JSON"),
    ("NaN", b'{"text": NaN}', 400, "NaN is not a JSON value"),
    (
        "Infinity beside a good text",
        b'{"text": "ok", "stars": Infinity}',
        400,
        "Infinity is not a JSON value",
    ),
    ("broken JSON", b'{"text": broken', 400, "not valid JSON"),
    ("empty body", b"", 400, "body is empty"),
    ("JSON null", b"null", 400, "must be a JSON object"),
    ("JSON array", body(["a", "list"]), 400, "must be a JSON object"),
    ("JSON string", body("just a review"), 400, "must be a JSON object"),
    ("missing text", body({"review": "hi"}), 400, "missing 'text'"),
    ("empty text", body({"text": ""}), 400, "text is empty"),
    ("whitespace-only text", body({"text": " \n\t\u3000 "}), 400, "text is empty"),
    ("number text", body({"text": 42}), 400, "text must be a string, got int"),
    ("null text", body({"text": None}), 400, "text must be a string, got NoneType"),
    ("object text", body({"text": {"nested": "x"}}), 400, "text must be a string, got dict"),
    ("number title", body({"text": "ok", "title": 5}), 400, "title must be a string"),
    ("texts not a list", body({"texts": "abc"}), 400, "non-empty list"),
    ("texts empty", body({"texts": []}), 400, "non-empty list"),
    ("null item in texts", body({"texts": ["ok", None]}), 400, "texts[1] must be a string"),
    (
        "item without text",
        body({"texts": [{"title": "only a title"}]}),
        400,
        "missing 'text' field in texts[0]",
    ),
    ("too many texts", body({"texts": ["x"] * 65}), 413, "too many texts"),
    ("oversized text", body({"text": "word " * 5000}), 413, "too long"),
]


@pytest.mark.parametrize(
    ("raw", "status", "message"), [case[1:] for case in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_with_a_4xx_naming_the_problem(
    served: LocalTorchServe, raw: bytes, status: int, message: str
) -> None:
    response = post(served, raw)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert message in response.json()["error"]
    assert post(served, body(GOOD)).status_code == 200


# (case, raw body, Content-Type, expected label: a class label, "abstain", or None for any prediction)
ANSWERED = [
    ("UTF-8 BOM", b"\xef\xbb\xbf" + body(GOOD), "application/json", None),
    ("NUL characters", body({"text": "good\u0000 value\u0000"}), "application/json", None),
    ("emoji only", body({"text": "😀🔥👍"}), "application/json", None),
    ("mixed scripts", body({"text": "Très bien, очень хорошо, 很好, とても良い"}), "application/json", None),
    ("bidi and zero-width", body({"text": "\u202egood\u200b product\u2066"}), "application/json", None),
    ("HTML only", body({"text": "<br /><br />"}), "application/json", ABSTAIN),
    ("video marker only", body({"text": "[[VIDEOID:abc123]]"}), "application/json", ABSTAIN),
    ("no Content-Type", body(GOOD), None, None),
    ("text/plain", body(GOOD), "text/plain", None),
    ("octet-stream", body(GOOD), "application/octet-stream", None),
]


@pytest.mark.parametrize(
    ("raw", "content_type", "label"), [case[1:] for case in ANSWERED], ids=[c[0] for c in ANSWERED]
)
def test_answered_with_a_prediction(served: LocalTorchServe, raw: bytes, content_type, label) -> None:
    response = post(served, raw, content_type)
    assert response.status_code == 200
    answer = strict_json(response.text)
    assert answer["label"] in ("negative", "neutral", "positive", ABSTAIN)
    if label == ABSTAIN:
        assert answer["label"] == ABSTAIN and answer["confidence"] is None
    else:
        assert sum(answer[p] for p in PROBS) == pytest.approx(1.0)


def test_form_bodies_are_refused_as_unsupported_media(served: LocalTorchServe) -> None:
    response = post(served, b"text=hello", "application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert "send JSON" in response.json()["error"]


def test_oversized_body_is_refused_before_the_handler(served: LocalTorchServe) -> None:
    response = post(served, body({"text": "x" * 1_200_000}))
    assert response.status_code == 413
    assert post(served, body(GOOD)).status_code == 200


def test_explanations_are_not_served(served: LocalTorchServe) -> None:
    response = requests.post(
        f"{served.inference_url}/explanations/restar",
        data=body(GOOD),
        headers={"Authorization": f"Bearer {served.keys['inference']}"},
        timeout=60,
    )
    assert response.status_code == 404
    assert "explanations are not served" in response.json()["error"]


def test_hostile_requests_cost_no_good_request(served: LocalTorchServe) -> None:
    """The issue's reproduction: 10 hostile requests among 80, sent 16 at a time, so they share batches."""
    hostile = [b'{"text": "\\ud800"}', DEEP_LIST, DEEP_OBJECTS, HUGE_INTEGER, b'{"text": NaN}'] * 2
    good = [body({"text": f"Review number {n}: works well enough."}) for n in range(70)]
    mixed = good[:]
    for index, raw in enumerate(hostile):
        mixed.insert(index * 8, raw)
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda raw: post(served, raw).status_code, mixed))
    answered = dict(zip(map(id, mixed), statuses, strict=True))
    assert [answered[id(raw)] for raw in good] == [200] * len(good)
    assert [answered[id(raw)] for raw in hostile] == [400] * len(hostile)


# The offline predictor: a file in, every row answered, or a PredictorError naming the problem and no output.


def run_predictor(model_dir: Path, input_path: Path, output_name: str = "out.csv") -> pd.DataFrame:
    output_path = input_path.parent / output_name
    rows = predict_file(input_path, output_path, str(model_dir), progress=False)
    out = pd.read_csv(output_path, keep_default_na=False, na_values=[""])
    assert rows == len(out)
    return out


def test_csv_with_embedded_newlines_and_quotes(tiny_model_dir: Path, tmp_path: Path) -> None:
    texts = ['He said "broken"\nand left.', "Line one\r\nline two, with a comma", '""', "plain"]
    path = tmp_path / "in.csv"
    pd.DataFrame({"id": range(4), "text": texts}).to_csv(path, index=False)
    out = run_predictor(tiny_model_dir, path)
    assert out["text"].fillna("").tolist() == [*texts[:2], '""', "plain"]
    assert out["label"].notna().all()


def test_csv_with_a_bom_and_nul_characters(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes("\ufefftext\ngood\x00 stuff\nfine\n".encode())
    out = run_predictor(tiny_model_dir, path)
    assert len(out) == 2 and out["label"].notna().all()


def test_parquet_with_a_non_string_text_column(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": pa.array([5, 4, None], pa.int64())}), path)
    out = run_predictor(tiny_model_dir, path)
    assert len(out) == 3
    assert out["label"].iloc[2] == ABSTAIN  # a missing value is not a review


def test_compressed_jsonl_is_read_as_it_is(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "Loved it", "title": "Great"}\n{"text": "Meh"}\n'))
    assert len(run_predictor(tiny_model_dir, path)) == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("in.jsonl", b"\n \n", "no rows to predict"),
        ("in.csv.gz", gzip.compress(b"text\n" + b"a fine review\n" * 500)[:-40], "cannot read as csv"),
        ("in.csv.gz", b"not gzip at all", "cannot read as csv"),
        ("in.csv", b"text\ncaf\xe9\n", "cannot read as csv"),
        ("in.jsonl", b'{"text": "ok"}\n[1, 2]\n', "cannot read as jsonl"),
        ("in.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
        ("in.csv", b"review\nno text column here\n", "missing 'text' column"),
    ],
    ids=[
        "blank lines only",
        "truncated gzip",
        "not gzip",
        "invalid UTF-8",
        "non-object line",
        "unknown type",
        "no text",
    ],
)
def test_unusable_files_name_the_problem_and_write_nothing(
    tiny_model_dir: Path, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PredictorError, match=message):
        predict_file(path, tmp_path / "out.csv", str(tiny_model_dir), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("name", ["in.csv", "in.parquet"])
def test_a_header_without_rows_is_answered_with_a_header_without_rows(
    tiny_model_dir: Path, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_bytes(b"text,stars\n")
    else:
        pq.write_table(pa.table({"text": pa.array([], pa.string()), "stars": pa.array([], pa.int64())}), path)
    output = tmp_path / "out.csv"
    assert predict_file(path, output, str(tiny_model_dir), progress=False) == 0
    assert output.read_text().splitlines() == ["text,stars,label,confidence,p_neg,p_neu,p_pos,truncated"]


# The MLflow pyfunc, loaded as consumers load it.


@pytest.fixture(scope="module")
def pyfunc(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return logged_pyfunc(tiny_model_dir, tmp_path_factory.mktemp("pyfunc"))


def test_pyfunc_answers_every_row_of_hostile_text(pyfunc) -> None:
    texts = ["\u202eab\u200b", "", "   ", "<p></p>", "\x00", "😀", "ok " * 5000, "Très bien 很好"]
    out = pyfunc.predict(pd.DataFrame({"text": texts}))
    assert len(out) == len(texts)
    blank = out["confidence"].isna()
    assert blank.tolist() == [False, True, True, True, False, False, False, False]
    assert (out.loc[blank, "label"] == ABSTAIN).all()
    np.testing.assert_allclose(out.loc[~blank, PROBS].sum(axis=1), 1.0, atol=1e-6)


def test_pyfunc_schema_refuses_lone_surrogates_and_the_core_answers_them(
    pyfunc, tiny_model_dir: Path
) -> None:
    """MLflow's string schema stores text as UTF-8 and refuses a lone surrogate by name; the inference
    core behind it reads one as U+FFFD, as every caller that reaches it directly does."""
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        pyfunc.predict(pd.DataFrame({"text": ["a\ud800b"]}))
    out = InferenceCore.from_dir(tiny_model_dir).predict(["a\ud800b", "a\ufffdb"])
    np.testing.assert_allclose(out.loc[0, PROBS].astype(float), out.loc[1, PROBS].astype(float), atol=1e-6)


def test_pyfunc_missing_values_abstain(pyfunc) -> None:
    out = pyfunc.predict(pd.DataFrame({"text": ["fine", None], "title": [None, "Great"]}))
    assert out["confidence"].notna().tolist() == [True, False]  # a title alone is not a review
    assert out["label"].iloc[1] == ABSTAIN


def test_pyfunc_without_a_text_column_names_it(pyfunc) -> None:
    with pytest.raises(MlflowException, match="text"):
        pyfunc.predict(pd.DataFrame({"review": ["fine"]}))


def test_pyfunc_empty_frame_gives_an_empty_answer(pyfunc) -> None:
    out = pyfunc.predict(pd.DataFrame({"text": pd.Series([], dtype=object)}))
    assert len(out) == 0 and "label" in out.columns
