"""Options and path types that more than one `restar` command takes, defined once: the same name, type,
default and help wherever they appear. Options one command alone takes stay beside that command: their
stacks look alike from command to command, but share no name, default or help, so nothing more to share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from registry.cli import json_option, model_option

__all__ = [
    "EXISTING_DIR",
    "EXISTING_FILE",
    "FILE",
    "FOLDER",
    "audit_db_option",
    "config_option",
    "data_dir_option",
    "json_option",
    "model_option",
    "model_store_option",
    "model_uri_option",
    "out_dir_option",
    "out_file_option",
]

Decorator = Callable[[Callable], Callable]

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
FILE = click.Path(dir_okay=False, path_type=Path)  # a file to read or write, checked by the command
FOLDER = click.Path(file_okay=False, path_type=Path)  # a folder to write, or one checked by the command

DEFAULT_MODEL_URI = "models:/restar@production"


def config_option(command: Callable) -> Callable:
    """`--config`: the run config (YAML) a pipeline command reads."""
    return click.option(
        "--config",
        "config_path",
        type=EXISTING_FILE,
        default="configs/smoke.yaml",
        show_default=True,
        help="Run config (YAML) to read.",
    )(command)


def model_uri_option(command: Callable) -> Callable:
    """`--model-uri` of the commands that score texts; $RESTAR_MODEL_URI stands in for it."""
    return click.option(
        "--model-uri",
        default=DEFAULT_MODEL_URI,
        show_default=True,
        envvar="RESTAR_MODEL_URI",
        show_envvar=True,
        help="MLflow model URI (runs:/, models:/name@alias, models:/name/N) or a model folder.",
    )(command)


def data_dir_option(help_text: str) -> Decorator:
    """`--data`: the prepared split folder; `help_text` says which of its files the command reads."""
    return click.option(
        "--data", "data_dir", type=EXISTING_DIR, default="data/raw", show_default=True, help=help_text
    )


def out_dir_option(default: str, help_text: str, *, exists: bool = False) -> Decorator:
    """`--out`: the folder a command writes into; `exists` when an earlier stage must have made it."""
    return click.option(
        "--out",
        "out_dir",
        type=EXISTING_DIR if exists else FOLDER,
        default=default,
        show_default=True,
        help=help_text,
    )


def out_file_option(help_text: str, default: str | None = None, *, required: bool = False) -> Decorator:
    """`--out`: the one file a command writes (its default shown when it has one)."""
    return click.option(
        "--out",
        "out_path",
        type=FILE,
        default=default,
        show_default=default is not None,
        required=required,
        help=help_text,
    )


def model_store_option(help_text: str) -> Decorator:
    """`--model-store`: the TorchServe model store folder."""
    return click.option(
        "--model-store", type=FOLDER, default="torchserve/model-store", show_default=True, help=help_text
    )


def audit_db_option(help_text: str) -> Decorator:
    """`--audit-db`: restar-promote's audit log; $RESTAR_AUDIT_DB_URL stands in for it."""
    return click.option("--audit-db", "audit_url", envvar="RESTAR_AUDIT_DB_URL", help=help_text)
