"""The registry service: versions of a registered model, their lineage and metrics, and aliases.

A thin layer over `MlflowClient` that speaks in `VersionInfo` and raises its own exceptions, so the
same code runs against the embedded SQLite store and a `mlflow server` over HTTP.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import ParamSpec, TypeVar

import requests
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from registry.errors import RegistryAuthError, RegistryError, RegistryUnavailable, VersionNotFound
from registry.store import tracking_uri as default_tracking_uri

STAGING = "staging"
PRODUCTION = "production"
# Versions registered before metrics moved to the run and the logged model carried each metric as a
# `metric.<name>` tag; they are still read that way.
METRIC_TAG_PREFIX = "metric."

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class VersionInfo:
    """One version of a registered model, as gates, promotion and the CLI see it."""

    name: str
    version: int
    run_id: str | None
    source: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    description: str = ""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @classmethod
    def from_mlflow(cls, version: ModelVersion, metrics: Mapping[str, float] | None = None) -> VersionInfo:
        """`metrics` are the run's; `metric.<name>` tags of older versions take precedence."""
        tags = dict(version.tags or {})
        return cls(
            name=version.name,
            version=int(version.version),
            run_id=version.run_id,
            source=version.source,
            aliases=tuple(sorted(version.aliases or ())),
            tags={key: value for key, value in tags.items() if not key.startswith(METRIC_TAG_PREFIX)},
            metrics={**(metrics or {}), **tag_metrics(tags)},
            description=version.description or "",
        )


def tag_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """Metrics stored as `metric.<name>` tags (versions registered before they moved to the run)."""
    return {
        key.removeprefix(METRIC_TAG_PREFIX): float(value)
        for key, value in tags.items()
        if key.startswith(METRIC_TAG_PREFIX)
    }


UNREACHABLE_TEXT = ("Max retries exceeded", "Connection refused", "Connection aborted", "timed out")
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def is_unreachable(exc: BaseException) -> bool:
    """A connection failure (refused, dropped before the answer, timed out), however MLflow wrapped it."""
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    return any(text in str(exc) for text in UNREACHABLE_TEXT)


def unreachable(uri: str, exc: BaseException) -> RegistryUnavailable:
    detail = exc.message if isinstance(exc, MlflowException) else str(exc)
    return RegistryUnavailable(f"the MLflow registry at {uri} is unreachable: {detail}")


def ensure_reachable(uri: str) -> None:
    """Raise RegistryUnavailable unless a tracking/registry server at `uri` answers /health
    (local stores always pass): callers fail fast, before any work."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
    except requests.RequestException as exc:
        raise unreachable(uri, exc) from exc


USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
AUTH_ERROR_CODES = ("UNAUTHENTICATED", "PERMISSION_DENIED")  # HTTP 401, 403
CURRENT_USER_ENDPOINT = "/api/2.0/mlflow/users/current"  # served by MLflow's auth apps only


def login_refused(uri: str) -> RegistryAuthError:
    user = os.environ.get(USERNAME_ENV)
    if user:
        return RegistryAuthError(
            f"the MLflow server at {uri} refused the login of user {user!r} (HTTP 401): "
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    return RegistryAuthError(
        f"the MLflow server at {uri} requires a login (HTTP 401): "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )


def permission_denied(uri: str, model_name: str, user: str | None) -> RegistryAuthError:
    return RegistryAuthError(
        f"the MLflow server at {uri} denied user {user or 'anonymous'!r} this request on registered model "
        f"{model_name!r} (HTTP 403): moving an alias needs EDIT on the model, granted by an MLflow admin"
    )


def authenticated_user(uri: str) -> str | None:
    """The user that an MLflow server with an auth app (`mlflow server --app-name basic-auth`)
    authenticates from this process's credentials (MLFLOW_TRACKING_USERNAME / _PASSWORD or
    MLFLOW_TRACKING_TOKEN); None for a local store or a server without an auth app."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        response = http_request(
            get_default_host_creds(uri), CURRENT_USER_ENDPOINT, "GET", max_retries=0, timeout=10
        )
    except (requests.RequestException, MlflowException) as exc:
        raise unreachable(uri, exc) from exc
    if response.status_code == 404:
        return None
    if response.status_code == 401:
        raise login_refused(uri)
    response.raise_for_status()
    return str(response.json()["user"]["username"])


def _translate_errors(method: Callable[P, R]) -> Callable[P, R]:
    """MLflow and HTTP errors become RegistryUnavailable (naming the registry) / VersionNotFound /
    RegistryError."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except RegistryError:
            raise
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise unreachable(args[0].tracking_uri, exc) from exc
        except MlflowException as exc:
            if exc.error_code in NOT_FOUND_CODES:
                raise VersionNotFound(exc.message) from exc
            if is_unreachable(exc):
                raise unreachable(args[0].tracking_uri, exc) from exc
            if exc.error_code == "UNAUTHENTICATED":
                raise login_refused(args[0].tracking_uri) from exc
            if exc.error_code == "PERMISSION_DENIED":
                registry = args[0]
                raise permission_denied(registry.tracking_uri, registry.model_name, registry.user) from exc
            raise RegistryError(exc.message) from exc

    return wrapper


class Registry:
    """Versions and aliases of one registered model (default `restar`)."""

    def __init__(self, model_name: str = "restar", tracking_uri: str | None = None):
        self.model_name = model_name
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self._check_reachable()
        self.user = authenticated_user(self.tracking_uri)  # None without an auth app
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _check_reachable(self) -> None:
        ensure_reachable(self.tracking_uri)

    @_translate_errors
    def register(
        self,
        model_uri: str,
        run_id: str,
        lineage: dict[str, str],
        metrics: dict[str, float],
        alias: str | None = STAGING,
        model_params: dict[str, str] | None = None,
        description: str | None = None,
    ) -> VersionInfo:
        """A new version of a logged model (`models:/m-<id>`) tagged with `lineage`, aliased.

        `metrics` go on the logged model (its run already has them, and `version()` reads them
        there); `model_params` (calibration and the like) become the logged model's params.
        """
        if not model_uri.startswith("models:/m-"):
            raise RegistryError(f"expected a logged-model URI (models:/m-<id>), got {model_uri!r}")
        logged = self.client.get_logged_model(model_uri.removeprefix("models:/"))
        self._describe_logged_model(logged, run_id, metrics, model_params or {})
        self._ensure_registered_model()
        created = self.client.create_model_version(
            self.model_name,
            source=logged.artifact_location,
            run_id=run_id,
            tags=lineage,
            description=description,
            model_id=logged.model_id,
        )
        if alias:
            self.client.set_registered_model_alias(self.model_name, alias, created.version)
        return self.version(int(created.version))

    def _describe_logged_model(
        self, logged: LoggedModel, run_id: str, metrics: dict[str, float], params: dict[str, str]
    ) -> None:
        """Log the metrics and params the logged model lacks (registering it again adds nothing).

        A logged-model metric is written through its run: a metric logged before the model (dev
        scores) gains one more point at step 0 in the run's history, with the same value.
        """
        known = {metric.key for metric in logged.metrics or ()}
        now = int(time.time() * 1000)
        missing = [
            Metric(key, float(value), now, 0, model_id=logged.model_id, run_id=run_id)
            for key, value in sorted(metrics.items())
            if key not in known
        ]
        if missing:
            self.client.log_batch(run_id, metrics=missing)
        new_params = {key: value for key, value in params.items() if key not in (logged.params or {})}
        if new_params:
            self.client.log_model_params(logged.model_id, new_params)

    def _ensure_registered_model(self) -> None:
        try:
            self.client.create_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    @_translate_errors
    def version(self, ref: int | str) -> VersionInfo:
        """A version by number (`3`, `"3"`) or by alias (`"production"`)."""
        if isinstance(ref, int) or str(ref).isdigit():
            return self._info(self.client.get_model_version(self.model_name, str(ref)))
        try:
            found = self.client.get_model_version_by_alias(self.model_name, str(ref))
        except MlflowException as exc:
            if is_unreachable(exc) or exc.error_code in AUTH_ERROR_CODES:  # not "no such alias"
                raise
            raise VersionNotFound(f"registered model {self.model_name!r} has no alias {ref!r}") from exc
        return self._info(found)

    def _info(self, version: ModelVersion) -> VersionInfo:
        """The version with its run's metrics: one call, none for versions with metric tags."""
        legacy = any(key.startswith(METRIC_TAG_PREFIX) for key in version.tags or {})
        return VersionInfo.from_mlflow(version, {} if legacy else self._run_metrics(version.run_id))

    def _run_metrics(self, run_id: str | None) -> dict[str, float]:
        """The latest value of each metric of the run; none when the run is gone."""
        if not run_id:
            return {}
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except MlflowException as exc:
            if exc.error_code in NOT_FOUND_CODES:
                return {}
            raise

    @_translate_errors
    def alias_version(self, alias: str) -> VersionInfo | None:
        """The version holding `alias`, or None when no version holds it (or the model does not exist)."""
        try:
            return self.version(alias)
        except VersionNotFound:
            return None

    @_translate_errors
    def set_alias(self, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    @_translate_errors
    def set_tags(self, version: int, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), key, value)

    @_translate_errors
    def versions(self) -> list[VersionInfo]:
        """Every version, newest first."""
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        if not found:
            return []
        # search results carry no aliases in every store; the registered model always has them.
        aliases = self.client.get_registered_model(self.model_name).aliases
        versions = []
        for version in found:
            info = self._info(version)
            held = tuple(sorted(alias for alias, number in aliases.items() if int(number) == info.version))
            versions.append(replace(info, aliases=held))
        return sorted(versions, key=lambda v: v.version, reverse=True)

    @_translate_errors
    def run_params(self, version: VersionInfo) -> dict[str, str]:
        return dict(self.client.get_run(version.run_id).data.params) if version.run_id else {}

    def compare(self, first: int | str, second: int | str) -> list[tuple[str, str, str]]:
        """Rows (key, first, second) over metrics, lineage tags, params and aliases of two versions."""
        a, b = self.version(first), self.version(second)
        rows: list[tuple[str, str, str]] = [("version", str(a.version), str(b.version))]
        rows.append(("aliases", ",".join(a.aliases) or "-", ",".join(b.aliases) or "-"))
        rows += _side_by_side(a.metrics, b.metrics, prefix="metric ")
        rows += _side_by_side(a.tags, b.tags, prefix="tag ")
        rows += _side_by_side(self.run_params(a), self.run_params(b), prefix="param ", only_different=True)
        return rows


def _side_by_side(
    a: dict[str, object], b: dict[str, object], prefix: str, only_different: bool = False
) -> list[tuple[str, str, str]]:
    rows = []
    for key in sorted(set(a) | set(b)):
        left, right = str(a.get(key, "-")), str(b.get(key, "-"))
        if only_different and left == right:
            continue
        rows.append((f"{prefix}{key}", left, right))
    return rows
