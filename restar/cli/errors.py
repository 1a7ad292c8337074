"""How the `restar` commands turn the service layer's own errors into a one-line message and an exit code."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from registry.cli import RegistryCommandError
from registry.errors import RegistryError
from restar.errors import RestarError
from restar.output_files import OutputWriteError

EXIT_OUTPUT = 6  # an output could not be written (disk full, read-only, no permission); nothing was left


class OutputCommandError(click.ClickException):
    exit_code = EXIT_OUTPUT


def user_errors(command: Callable) -> Callable:
    """Turn the service layer's own errors into a one-line message and exit code 1 (3 for the registry,
    6 for an output that could not be written)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RegistryError as exc:
            raise RegistryCommandError(str(exc)) from exc
        except OutputWriteError as exc:
            raise OutputCommandError(str(exc)) from exc
        except RestarError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper
