"""Properties that hold for any input (hypothesis): the request parser, the TorchServe handler and the
inference core never let an exception out, answer one row per input, and agree with the threshold."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from restar.labels import ABSTAIN
from restar.model.inference import InferenceCore
from restar.serving.json_requests import MAX_TEXTS, parse_body
from tests.helpers import batch_context, load_handler, strict_json

PROBS = ["p_neg", "p_neu", "p_pos"]
SLOW_OK = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
reviews = st.text() | st.fixed_dictionaries({"text": st.text()}, optional={"title": st.none() | st.text()})
requests_ = (
    st.fixed_dictionaries({"text": st.text()}, optional={"title": st.none() | st.text() | st.integers()})
    | st.fixed_dictionaries({"texts": st.lists(reviews | st.none(), max_size=MAX_TEXTS + 2)})
    | json_values
)
bodies = requests_ | requests_.map(lambda value: json.dumps(value).encode()) | st.binary(max_size=64)


def assert_well_formed(parsed, body) -> None:
    assert parsed.status in (200, 400, 413)
    if parsed.status != 200:
        assert parsed.error and not parsed.texts
        return
    assert parsed.texts and len(parsed.titles) == len(parsed.texts)
    for text in parsed.texts:
        assert isinstance(text, str) and text.strip()
        text.encode("utf-8")  # no lone surrogates reach the model


@given(bodies)
@settings(max_examples=400)
def test_the_parser_never_raises_and_accepts_only_usable_texts(body) -> None:
    assert_well_formed(parse_body(body), body)


@given(requests_)
@settings(max_examples=200)
def test_bytes_and_decoded_json_are_judged_alike(body) -> None:
    raw = json.dumps(body).encode()
    decoded, from_bytes = parse_body(body), parse_body(raw)
    assert (decoded.status, decoded.texts, decoded.titles) == (
        from_bytes.status,
        from_bytes.texts,
        from_bytes.titles,
    )


@pytest.fixture(scope="module")
def core(tiny_model_dir: Path) -> InferenceCore:
    return InferenceCore.from_dir(tiny_model_dir)


@given(
    texts=st.lists(st.text(max_size=200) | st.none(), max_size=8),
    threshold=st.floats(0.0, 1.0),
)
@SLOW_OK
def test_the_core_answers_every_row_and_agrees_with_its_threshold(core, texts, threshold: float) -> None:
    thresholded = InferenceCore(core.scorer, replace(core.metadata, abstain_threshold=threshold))
    out = thresholded.predict(texts)
    assert len(out) == len(texts)
    probs = out[PROBS].to_numpy(float)
    scored = ~np.isnan(probs).any(axis=1)
    np.testing.assert_allclose(probs[scored].sum(axis=1), 1.0, atol=1e-6)
    for row, ok in zip(out.itertuples(index=False), scored, strict=True):
        if not ok:
            assert row.label == ABSTAIN and np.isnan(row.confidence)
            continue
        p = np.array([row.p_neg, row.p_neu, row.p_pos])
        assert row.confidence == pytest.approx(p.max())
        expected = ABSTAIN if row.confidence < threshold else core.metadata.labels[int(p.argmax())]
        assert row.label == expected


@pytest.fixture(scope="module")
def handler(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real TorchServe handler on the tiny model, with TorchServe's own Context."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TS_DECODE_INPUT_REQUEST", "false")
        yield load_handler(tiny_model_dir, tmp_path_factory.mktemp("handler"))


@given(st.lists(bodies, min_size=1, max_size=8))
@SLOW_OK
def test_the_handler_answers_each_request_of_any_batch_without_a_5xx(handler, batch) -> None:
    handler, model_dir = handler
    context = batch_context(model_dir, len(batch))
    raw = [body if isinstance(body, bytes) else json.dumps(body).encode() for body in batch]
    answers = handler.handle([{"body": bytearray(body)} for body in raw], context)
    assert len(answers) == len(batch)
    for index, (body, answer) in enumerate(zip(raw, answers, strict=True)):
        status = context.get_response_status(index)[0] or 200
        parsed = strict_json(answer)
        assert status == parse_body(body).status
        if status == 200:
            rows = parsed if isinstance(parsed, list) else [parsed]
            assert len(rows) == len(parse_body(body).texts)
            assert all(row["model_version"] == "1" for row in rows)
        else:
            assert 400 <= status < 500 and parsed["status"] == status
