"""Registry problems a user can act on. Kept apart from registry.service so that the CLIs can catch
them without importing MLflow."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class for registry problems a user can act on."""


class RegistryUnavailable(RegistryError):
    """The tracking/registry server cannot be reached."""


class VersionNotFound(RegistryError):
    """No such registered model, version or alias."""


class RegistryAuthError(RegistryError):
    """The server refused this process: no login, wrong credentials, or no permission for the request."""
