"""Package a registered Re*Star version as a TorchServe archive (torchserve/model-store/restar.mar).

Everything is built in hidden staging folders beside the targets, on their file systems, and moved
into place only when complete: a failure, a full disk included, leaves the previous artifacts folder
and archive as they were and no half-written file.

A `PromotionGuard` (the `restar export-torchserve` command always passes one) refuses a version that
holds `production` when the promotion audit log does not show restar-promote putting it there: the
MLflow UI can move the alias past every gate. A version that does not hold `production` (exported by
number, say a candidate for a canary) is not a production export and is not checked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from sqlalchemy.engine import make_url

from registry.audit import AuditLog, AuditRecord
from registry.service import PRODUCTION, Registry, VersionInfo, is_unreachable, unreachable
from registry.store import default_audit_url, tracking_uri
from restar.errors import RestarError
from restar.model.inference import METADATA_FILE, ModelMetadata
from restar.model.onnx_export import convert, serving_files
from restar.output_files import is_disk_full, replace_dir, staging_dir, write_error

logger = logging.getLogger(__name__)

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


class ExportError(RestarError, RuntimeError):
    """The model cannot be resolved, downloaded or archived."""


class UnauditedProduction(ExportError):
    """The version holds `production`, but no audited restar-promote move put it there."""


@dataclass(frozen=True)
class PromotionGuard:
    """Export a version that holds `alias` only if the latest settled move in the audit log set it
    (default log: RESTAR_AUDIT_DB_URL, else next to the MLflow store, as restar-promote). `force`
    turns the refusal into a logged warning."""

    audit_url: str | None = None
    force: bool = False
    alias: str = PRODUCTION

    def check(self, version: VersionInfo) -> str:
        """`audited`, `not production` or `unaudited, forced`; raises UnauditedProduction otherwise."""
        if self.alias not in version.aliases:
            return "not production"
        url = self.audit_url or default_audit_url()
        last = last_audited_move(url, version.name, self.alias)
        if last is not None and last.version == version.version:
            return "audited"
        problem = (
            f"v{version.version} of {version.name} holds {self.alias}, but the audit log "
            f"({make_url(url).render_as_string(hide_password=True)}) has no restar-promote move that put "
            f"it there (the last audited move set {'nothing' if last is None else f'v{last.version}'}): "
            f"it was moved past the gates, e.g. in the MLflow UI"
        )
        if self.force:
            logger.warning("exporting anyway (--force): %s", problem)
            return "unaudited, forced"
        undo = "" if last is None else f"return to v{last.version} with restar-promote --rollback, or "
        raise UnauditedProduction(
            f"{problem}. To fix: {undo}put v{version.version} through the gates with "
            f"restar-promote --version {version.version}; or export it anyway with --force"
        )


def last_audited_move(audit_url: str, model_name: str, alias: str) -> AuditRecord | None:
    """The latest settled move of `alias`; None without an audit database (none is created here)."""
    if audit_url.startswith("sqlite:///") and not Path(audit_url.removeprefix("sqlite:///")).is_file():
        return None
    return AuditLog(audit_url).last_move(model_name, alias)


def resolve(model_uri: str) -> VersionInfo:
    """A registry URI (`models:/name@alias` or `models:/name/N`) -> its version."""
    match = MODEL_URI.match(model_uri)
    if match is None:
        raise ExportError(f"{model_uri!r} is not a registry URI (models:/name@alias or models:/name/N)")
    return Registry(match["name"]).version(match["version"] or match["alias"])


def download_model_dir(version: VersionInfo, into: Path) -> Path:
    """The Re*Star model folder (weights, tokenizer, restar.json) inside the version's pyfunc."""
    into.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.uri, dst_path=str(into)))
    found = sorted(local.rglob(METADATA_FILE))
    if not found:
        raise ExportError(f"{version.uri} holds no {METADATA_FILE}: not a Re*Star pyfunc")
    return found[0].parent


def stage_artifacts(model_dir: Path, version: VersionInfo, artifacts_dir: Path) -> list[Path]:
    """Move the backend's serving files out of the downloaded model into a new `artifacts_dir`
    (same file system: renames, no copies), with the registry version beside them."""
    artifacts_dir.mkdir(parents=True)
    for path in serving_files(model_dir):
        os.replace(path, artifacts_dir / path.name)
    registry = {
        "name": version.name,
        "version": version.version,
        "uri": version.uri,
        "run_id": version.run_id,
    }
    (artifacts_dir / "registry.json").write_text(json.dumps(registry, indent=2) + "\n")
    return sorted(path for path in artifacts_dir.iterdir() if path.is_file())


def archive(
    files: list[Path],
    version: VersionInfo,
    handler: Path,
    model_config: Path,
    export_dir: Path,
    model_name: str,
) -> Path:
    """`torch-model-archiver` packs `files` as export_dir/<model_name>.mar."""
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    command = [
        str(archiver if archiver.exists() else "torch-model-archiver"),
        "--model-name",
        model_name,
        "--version",
        str(version.version),
        "--handler",
        str(handler),
        "--extra-files",
        ",".join(str(path) for path in files),
        "--config-file",
        str(model_config),
        "--export-path",
        str(export_dir),
        "--force",
    ]
    # The archiver stages files in $TMPDIR/<model_name>: a private TMPDIR keeps concurrent exports apart.
    with tempfile.TemporaryDirectory(prefix="restar-archiver-") as scratch:
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TMPDIR": scratch})
    if done.returncode != 0:
        raise ExportError(f"torch-model-archiver failed: {done.stderr.strip() or done.stdout.strip()}")
    return export_dir / f"{model_name}.mar"


def export_torchserve(
    model_uri: str,
    artifacts_dir: Path,
    model_store: Path,
    handler: Path,
    model_config: Path,
    model_name: str = "restar",
    backend: str | None = None,
    guard: PromotionGuard | None = None,
) -> dict[str, object]:
    """Resolve, download and archive `model_uri`; the archive's version is the registry version.
    `backend` (torch, onnx, onnx-int8) overrides the backend the version was registered with; `guard`
    checks that a production version got there through restar-promote before anything is written."""
    version = resolve(model_uri)
    promotion = guard.check(version) if guard else "not checked"
    mar = model_store / f"{model_name}.mar"
    with staging_dir(artifacts_dir) as staging, staging_dir(mar) as mar_staging:
        with _writing(artifacts_dir):
            model_dir = download_model_dir(version, staging / "download")
            metadata = convert(model_dir, backend) if backend else ModelMetadata.load(model_dir)
            files = stage_artifacts(model_dir, version, staging / "artifacts")
        with _writing(mar):
            staged = archive(files, version, handler, model_config, mar_staging, model_name)
            os.replace(staged, mar)
        with _writing(artifacts_dir):
            replace_dir(staging / "artifacts", artifacts_dir)
    logger.info("exported %s (v%d) to %s", model_uri, version.version, mar)
    return {
        "model_uri": model_uri,
        "version": version.version,
        "archive": str(mar),
        "artifacts": str(artifacts_dir),
        "backend": metadata.backend,
        "promotion": promotion,
    }


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """A full disk while producing `target` becomes OutputWriteError naming it; a registry that stops
    answering during the download, RegistryUnavailable."""
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc):
            raise write_error(target, exc) from exc
        if is_unreachable(exc):
            raise unreachable(tracking_uri(), exc) from exc
        raise
