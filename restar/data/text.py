"""The one text preparation: what the model reads for a review, at freeze time and at serving time.

`restar.data.freeze` builds the training data with `prepare_texts`, and `InferenceCore.predict` prepares every
input with it, so upstream rows (`title` + raw HTML `text`) are served exactly as training rows were made.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

TEXT_COLUMN = "text"
TITLE_COLUMN = "title"  # optional: the upstream review title, composed in front of the body

_VIDEO_MARKER = re.compile(r"\[\[VIDEOID:[^\]]*\]\]")
_HTML_TAG = re.compile(r"<[^>]+>")
_WHITESPACE = re.compile(r"\s+")
# A lone UTF-16 surrogate ("\ud800" in JSON) is not a character: tokenizers cannot encode it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Amazon fills in "Five Stars" etc. when a reviewer leaves the title empty: it restates the label.
_RATING_TITLE = re.compile(r"^(one|two|three|four|five) stars?$", re.IGNORECASE)


def clean_markup(raw: object) -> str:
    """Strip HTML tags and video markers, unescape entities, collapse whitespace; "" for non-strings.
    Lone surrogates become U+FFFD, the replacement character."""
    if not isinstance(raw, str):
        return ""
    text = _VIDEO_MARKER.sub(" ", _LONE_SURROGATE.sub("\ufffd", raw))
    text = html.unescape(_HTML_TAG.sub(" ", text))
    return _WHITESPACE.sub(" ", text).strip()


def is_rating_title(title: str) -> bool:
    """True for titles such as "Five Stars" that Amazon generates from the rating."""
    return _RATING_TITLE.fullmatch(title) is not None


def compose_text(title: str, body: str) -> str:
    """Title and body as one text; the title reads as a first sentence."""
    if not title:
        return body
    separator = " " if title[-1] in ".!?" else ". "
    return f"{title}{separator}{body}"


def prepare_text(text: object, title: object = None, drop_rating_titles: bool = True) -> str:
    """The text the model reads for one review: cleaned title and body composed into one text.

    "" when the body is empty after cleaning: a title alone is not a review (freeze drops such rows,
    serving abstains on them).
    """
    body = clean_markup(text)
    if not body:
        return ""
    heading = clean_markup(title)
    if drop_rating_titles and is_rating_title(heading):
        heading = ""
    return compose_text(heading, body)


def prepare_texts(
    texts: Iterable[object], titles: Iterable[object] | None = None, drop_rating_titles: bool = True
) -> list[str]:
    """`prepare_text` over columns: bodies and, for upstream rows, their titles (same length)."""
    texts = list(texts)
    titles = [None] * len(texts) if titles is None else list(titles)
    if len(titles) != len(texts):
        raise ValueError(f"{len(titles)} titles for {len(texts)} texts")
    return [prepare_text(text, title, drop_rating_titles) for text, title in zip(texts, titles, strict=True)]
