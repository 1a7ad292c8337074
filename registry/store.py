"""Where the MLflow store and the promotion audit database live."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
AUDIT_DB_ENV = "RESTAR_AUDIT_DB_URL"
AUDIT_DB_FILE = "restar_audit.db"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the embedded SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def default_audit_url(tracking: str | None = None) -> str:
    """RESTAR_AUDIT_DB_URL, else a SQLite file beside a SQLite MLflow store, else in the working directory."""
    configured = os.environ.get(AUDIT_DB_ENV)
    if configured:
        return configured
    tracking = tracking or tracking_uri()
    if tracking.startswith("sqlite:///"):
        store = Path(tracking.removeprefix("sqlite:///"))
        return f"sqlite:///{store.parent / AUDIT_DB_FILE}"
    return f"sqlite:///{AUDIT_DB_FILE}"
