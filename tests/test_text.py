"""The one text preparation, and the serving side's use of it: JSON requests and the TorchServe handler."""

import json
from pathlib import Path

import numpy as np
import pytest

from restar.config import CleanConfig
from restar.data.freeze import clean_rows
from restar.data.text import clean_markup, compose_text, prepare_text, prepare_texts
from restar.serving.json_requests import parse_body
from tests.helpers import batch_context, load_handler, strict_json
from tests.upstream_rows import markup_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBS = ["p_neg", "p_neu", "p_pos"]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Great box.<br /><br />Would buy again", "Great box. Would buy again"),
        ("a<br/>b<BR>c", "a b c"),
        ("Tom &amp; Jerry&#39;s &quot;box&quot; &lt;3", 'Tom & Jerry\'s "box" <3'),
        ("[[VIDEOID:a1b2c3d4]] Watch this", "Watch this"),
        ("  lots \n\t of   space  ", "lots of space"),
        ("<a href='x'>link</a> text", "link text"),
        ("<br /> [[VIDEOID:x]] ", ""),
    ],
)
def test_markup_is_cleaned(raw: str, clean: str) -> None:
    assert clean_markup(raw) == clean
    assert prepare_text(raw) == clean


@pytest.mark.parametrize("value", [None, float("nan"), 5, 4.0, b"bytes", ["a"]])
def test_non_strings_prepare_to_nothing(value) -> None:
    assert clean_markup(value) == ""
    assert prepare_text(value) == ""
    assert prepare_text("Works.", title=value) == "Works."


def test_title_composition() -> None:
    assert compose_text("Great!", "Works.") == "Great! Works."
    assert compose_text("Great", "Works.") == "Great. Works."
    assert compose_text("", "Works.") == "Works."
    assert prepare_text("Works.", "Great!") == "Great! Works."
    assert prepare_text("Works.", "Really great?") == "Really great? Works."
    assert prepare_text("Works.", "Good value") == "Good value. Works."
    assert prepare_text("Works<br />well", "Good &amp; cheap") == "Good & cheap. Works well"
    assert prepare_text("Works.", "<br />") == "Works."


@pytest.mark.parametrize("title", ["Five Stars", "five stars", "One Star", "THREE STARS", " Four Stars "])
def test_rating_titles_are_dropped(title: str) -> None:
    assert prepare_text("Nice box.", title) == "Nice box."
    assert prepare_text("Nice box.", title, drop_rating_titles=False) == f"{title.strip()}. Nice box."


@pytest.mark.parametrize("title", ["Five Stars!", "Five stars for this", "Six Stars", "5 stars"])
def test_other_titles_are_kept(title: str) -> None:
    assert prepare_text("Nice box.", title).startswith(title)


def test_a_title_without_a_body_is_no_review() -> None:
    assert prepare_text("", "Terrible") == ""
    assert prepare_text("<br />", "Terrible") == ""
    assert prepare_text(None, "Terrible") == ""


def test_prepare_texts_takes_columns() -> None:
    texts = ["a<br />b", "Works.", None]
    assert prepare_texts(texts) == ["a b", "Works.", ""]
    assert prepare_texts(texts, ["T", "Five Stars", "T"]) == ["T. a b", "Works.", ""]
    assert prepare_texts(iter(texts), (t for t in ["T", None, "T"])) == ["T. a b", "Works.", ""]
    with pytest.raises(ValueError, match="2 titles for 3 texts"):
        prepare_texts(texts, ["a", "b"])


def test_freeze_writes_what_serving_prepares(reviews_dir: Path) -> None:
    raw = markup_rows(reviews_dir)
    frozen, _ = clean_rows(raw, CleanConfig())
    assert len(frozen) > 20
    expected = prepare_texts(raw.loc[frozen.index, "text"], raw.loc[frozen.index, "title"])
    assert frozen["text"].tolist() == expected
    assert not frozen["text"].str.contains("<br|VIDEOID|&#39;|&amp;", regex=True).any()


# --- serving: JSON requests and the TorchServe handler ---


def test_requests_carry_an_optional_title() -> None:
    single = parse_body({"text": "Works.", "title": "Great", "rating": 5, "asin": "B0"})  # an upstream row
    assert (single.status, single.texts, single.titles, single.many) == (200, ["Works."], ["Great"], False)
    plain = parse_body(b'{"text": "Works."}')
    assert (plain.texts, plain.titles, plain.many) == (["Works."], [None], False)
    mixed = parse_body({"texts": ["One", {"text": "Two", "title": "T"}, {"text": "Three", "title": None}]})
    assert (mixed.status, mixed.texts, mixed.titles, mixed.many) == (
        200,
        ["One", "Two", "Three"],
        [None, "T", None],
        True,
    )
    assert parse_body({"text": "Works.", "title": ""}).titles == [""]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"text": "ok", "title": 5}, 400, "title must be a string, got int"),
        ({"texts": [{"title": "T"}]}, 400, "missing 'text' field in texts[0]"),
        ({"texts": ["ok", {"text": "", "title": "T"}]}, 400, "texts[1].text is empty"),
        ({"texts": [{"text": "ok", "title": ["T"]}]}, 400, "texts[0].title must be a string"),
        ({"text": "ok", "title": "x" * 20_001}, 413, "title is too long"),
        ({"texts": ["ok", None]}, 400, "texts[1] must be a string"),
        ({"text": ""}, 400, "text is empty"),
    ],
)
def test_bad_titles_and_texts_name_the_problem(body: dict, status: int, message: str) -> None:
    parsed = parse_body(body)
    assert (parsed.status, parsed.texts) == (status, [])
    assert message in parsed.error


@pytest.fixture(scope="module")
def handler(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The TorchServe handler, loaded from torchserve/handler.py, around the tiny model."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TS_DECODE_INPUT_REQUEST", "false")
        yield load_handler(tiny_model_dir, tmp_path_factory.mktemp("handler"))


def answer(handler, bodies: list) -> list:
    handler, model_dir = handler
    batch = [{"body": json.dumps(body).encode()} for body in bodies]
    return [strict_json(out) for out in handler.handle(batch, batch_context(model_dir, len(bodies)))]


def test_handler_prepares_upstream_rows_as_freeze_does(handler) -> None:
    upstream = {"title": "Not worth it", "text": "Broke in a day.<br /><br />Support &amp; refund: none."}
    prepared = "Not worth it. Broke in a day. Support & refund: none."
    single, listed, plain, rating_title = answer(
        handler,
        [
            upstream,
            {"texts": [upstream, "Love it<br />!"]},
            {"text": prepared},
            {"text": "Love it!", "title": "Five Stars"},
        ],
    )
    expected = handler[0].core.probabilities([prepared, "Love it !", "Love it!"])
    np.testing.assert_allclose([single[p] for p in PROBS], expected[0], atol=1e-6)
    np.testing.assert_allclose([listed[0][p] for p in PROBS], expected[0], atol=1e-6)
    np.testing.assert_allclose([listed[1][p] for p in PROBS], expected[1], atol=1e-6)
    np.testing.assert_allclose([plain[p] for p in PROBS], expected[0], atol=1e-6)
    np.testing.assert_allclose([rating_title[p] for p in PROBS], expected[2], atol=1e-6)
    assert single["model_version"] == "1"


def test_handler_abstains_on_markup_without_words(handler) -> None:
    (row,) = answer(handler, [{"text": "<br /><br />", "title": "Great"}])
    assert row["label"] == "abstain"
    assert row["p_pos"] is None
