"""Plain text by default, JSON with `--json`: how the `restar` commands print a result."""

from __future__ import annotations

import json

import click

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the console's and train.log's


def report(result: dict, as_json: bool) -> None:
    """`key: value` lines (nested values as JSON), or the whole result as indented JSON."""
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    for key, value in result.items():
        click.echo(f"{key}: {json.dumps(value, default=str) if isinstance(value, dict | list) else value}")
