"""The JSON request format every Re*Star HTTP endpoint accepts: {"text": "..."} or {"texts": [...]}."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_TEXTS = 64  # per request
MAX_CHARS = 20_000  # per text; longer reviews are truncated to max_length tokens anyway


@dataclass
class ParsedRequest:
    texts: list[str] = field(default_factory=list)
    many: bool = False  # answered as a list ({"texts": [...]}) rather than one object
    status: int = 200
    error: str = ""


def parse_body(body: Any) -> ParsedRequest:
    """One request body (raw bytes or decoded JSON) -> texts, or a 4xx status naming the problem."""
    if isinstance(body, bytes | bytearray):
        try:
            body = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return ParsedRequest(status=400, error=f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return ParsedRequest(
            status=400, error='body must be a JSON object: {"text": "..."} or {"texts": [...]}'
        )
    if "texts" in body:
        texts, many = body["texts"], True
        if not isinstance(texts, list) or not texts:
            return ParsedRequest(status=400, error="'texts' must be a non-empty list of strings")
    elif "text" in body:
        texts, many = [body["text"]], False
    else:
        return ParsedRequest(status=400, error="missing 'text' (or 'texts') field")
    if len(texts) > MAX_TEXTS:
        return ParsedRequest(status=413, error=f"too many texts: {len(texts)} > {MAX_TEXTS} per request")
    for index, text in enumerate(texts):
        where = "text" if not many else f"texts[{index}]"
        if not isinstance(text, str):
            return ParsedRequest(status=400, error=f"{where} must be a string, got {type(text).__name__}")
        if not text.strip():
            return ParsedRequest(status=400, error=f"{where} is empty")
        if len(text) > MAX_CHARS:
            return ParsedRequest(
                status=413, error=f"{where} is too long: {len(text)} > {MAX_CHARS} characters"
            )
    return ParsedRequest(texts=texts, many=many)
