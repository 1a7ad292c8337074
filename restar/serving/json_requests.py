"""The JSON request format every Re*Star HTTP endpoint accepts: {"text": "..."} or {"texts": [...]}.

A review may carry its upstream `title` beside `text`: `{"text": "...", "title": "..."}` (an upstream row
as it is, other fields ignored), and each item of `texts` may be such an object instead of a string.
The model prepares text and title as the training data was prepared (restar.data.text).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from restar.data.text import TEXT_COLUMN, TITLE_COLUMN

MAX_TEXTS = 64  # per request
MAX_CHARS = 20_000  # per text; longer reviews are truncated to max_length tokens anyway
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # "\ud800" decodes to a str that is not Unicode text


@dataclass
class ParsedRequest:
    texts: list[str] = field(default_factory=list)
    titles: list[str | None] = field(default_factory=list)  # one per text; None where none was sent
    many: bool = False  # answered as a list ({"texts": [...]}) rather than one object
    status: int = 200
    error: str = ""


class RequestError(ValueError):
    """A request problem with the HTTP status it is answered with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_body(body: Any) -> ParsedRequest:
    """One request body (raw bytes, text or decoded JSON) -> texts and titles, or a 4xx naming the error."""
    try:
        if isinstance(body, bytes | bytearray | str):
            body = decode_json(body)
        items, many = review_items(body)
        reviews = [review(item, f"texts[{index}]" if many else "") for index, item in enumerate(items)]
    except RequestError as exc:
        return ParsedRequest(status=exc.status, error=str(exc))
    return ParsedRequest(
        texts=[text for text, _ in reviews], titles=[title for _, title in reviews], many=many
    )


def decode_json(raw: bytes | bytearray | str) -> Any:
    """Strict JSON: UTF-8 (a leading BOM is allowed), no NaN or Infinity, bounded nesting."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RequestError(400, f"body is not valid UTF-8: {exc}") from None
    raw = raw.removeprefix("\ufeff")
    if not raw.strip():
        raise RequestError(400, 'body is empty: send {"text": "..."} or {"texts": [...]}')
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise RequestError(400, "body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers over Python's digit limit
        raise RequestError(400, f"body is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def review_items(body: Any) -> tuple[list[Any], bool]:
    """The review items of a decoded body, and whether it is answered as a list."""
    if not isinstance(body, dict):
        raise RequestError(400, 'body must be a JSON object: {"text": "..."} or {"texts": [...]}')
    if "texts" in body:
        items = body["texts"]
        if not isinstance(items, list) or not items:
            raise RequestError(400, "'texts' must be a non-empty list of strings or review objects")
        if len(items) > MAX_TEXTS:
            raise RequestError(413, f"too many texts: {len(items)} > {MAX_TEXTS} per request")
        return items, True
    if TEXT_COLUMN in body:
        return [body], False
    raise RequestError(400, "missing 'text' (or 'texts') field")


def review(item: Any, where: str) -> tuple[str, str | None]:
    """(text, title) of one review: a string, or an object with `text` and an optional `title`.
    `where` names the item in error messages: "" for the body itself, "texts[i]" for a list item."""
    if not isinstance(item, dict):
        checked_string(item, where)
        return item, None
    prefix = f"{where}." if where else ""
    if TEXT_COLUMN not in item:
        raise RequestError(400, f"missing 'text' field in {where}")
    text, title = item[TEXT_COLUMN], item.get(TITLE_COLUMN)
    checked_string(text, f"{prefix}text")
    if title is not None:
        checked_string(title, f"{prefix}title", allow_blank=True)
    return text, title


def checked_string(value: Any, where: str, allow_blank: bool = False) -> None:
    """Raise a RequestError unless `value` is a string of acceptable length (and not blank, by default)."""
    if not isinstance(value, str):
        raise RequestError(400, f"{where} must be a string, got {type(value).__name__}")
    if not allow_blank and not value.strip():
        raise RequestError(400, f"{where} is empty")
    if len(value) > MAX_CHARS:
        raise RequestError(413, f"{where} is too long: {len(value)} > {MAX_CHARS} characters")
    surrogate = _LONE_SURROGATE.search(value)
    if surrogate:
        code = f"\\u{ord(surrogate.group()):04x}"
        raise RequestError(400, f"{where} is not valid Unicode: lone surrogate {code} at {surrogate.start()}")
