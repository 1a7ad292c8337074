"""The base of every error a user can act on (bad config, unreadable input, missing model...).

The CLI prints these as one line and exits 1. It lives alone so that the CLI can catch it without
importing the modules that raise it (and torch, pandas or MLflow with them).
"""

from __future__ import annotations


class RestarError(Exception):
    """A problem with what the user asked for, worded for them."""
