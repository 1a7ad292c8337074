"""`restar registry ...`: list, describe and compare versions; plus the CLI pieces the other CLIs share."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from registry.errors import RegistryError, RegistryUnavailable

if TYPE_CHECKING:  # registry.service imports MLflow: only the commands that talk to it pay for that
    from registry.service import Registry, VersionInfo

EXIT_REGISTRY = 3


def json_option(command: Callable) -> Callable:
    """`--json`: print the result as JSON instead of plain text (shared by every Re*Star CLI)."""
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(command)


def model_option(command: Callable) -> Callable:
    return click.option(
        "--model", "model_name", default="restar", show_default=True, help="Registered model name."
    )(command)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """A plain-text table, columns padded to their widest cell, cells cut at `max_width` (--json has all)."""
    cells = [list(map(str, headers))] + [[_cell(v, max_width) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value: Any, max_width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= max_width else text[: max_width - 3] + "..."


class RegistryCommandError(click.ClickException):
    exit_code = EXIT_REGISTRY


def open_registry(model_name: str) -> Registry:
    from registry.service import Registry

    try:
        return Registry(model_name)
    except RegistryUnavailable as exc:
        raise RegistryCommandError(str(exc)) from exc


def describe(version: VersionInfo) -> dict[str, Any]:
    return {
        "name": version.name,
        "version": version.version,
        "uri": version.uri,
        "aliases": list(version.aliases),
        "run_id": version.run_id,
        "metrics": version.metrics,
        "tags": version.tags,
        "description": version.description,
    }


@click.group("registry")
def registry_group() -> None:
    """Versions of the registered model: list, describe, compare.

    \b
    Example: restar registry compare 1 2
    """


@registry_group.command("list")
@model_option
@json_option
def list_command(model_name: str, as_json: bool) -> None:
    """Every version, newest first, with aliases and headline metrics.

    Example: restar registry list
    """
    try:
        versions = open_registry(model_name).versions()
    except RegistryError as exc:
        raise RegistryCommandError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([describe(v) for v in versions], indent=2))
        return
    rows = [
        (
            v.version,
            ",".join(v.aliases) or "-",
            v.tags.get("restar.config_name"),
            v.metrics.get("eval_accuracy"),
            v.metrics.get("eval_macro_f1"),
            v.run_id,
        )
        for v in versions
    ]
    click.echo(table(["version", "aliases", "config", "eval_accuracy", "eval_macro_f1", "run_id"], rows))


@registry_group.command("describe")
@click.argument("ref")
@model_option
@json_option
def describe_command(ref: str, model_name: str, as_json: bool) -> None:
    """One version (a number or an alias): metrics, lineage tags, aliases.

    Example: restar registry describe production
    """
    try:
        version = open_registry(model_name).version(ref)
    except RegistryError as exc:
        raise RegistryCommandError(str(exc)) from exc
    info = describe(version)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [(key, value) for key, value in info.items() if key not in ("metrics", "tags", "description")]
    rows += [(f"metric {k}", v) for k, v in sorted(version.metrics.items())]
    rows += [(f"tag {k}", v) for k, v in sorted(version.tags.items())]
    click.echo(table(["field", "value"], rows))
    if version.description:
        click.echo(f"\n{version.description}")


@registry_group.command("compare")
@click.argument("first")
@click.argument("second")
@model_option
@json_option
def compare_command(first: str, second: str, model_name: str, as_json: bool) -> None:
    """Two versions side by side: metrics, lineage, differing params.

    Example: restar registry compare staging production
    """
    try:
        rows = open_registry(model_name).compare(first, second)
    except RegistryError as exc:
        raise RegistryCommandError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([{"field": k, first: a, second: b} for k, a, b in rows], indent=2))
        return
    click.echo(table(["field", first, second], rows))
