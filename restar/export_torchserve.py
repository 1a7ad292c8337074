"""Package a registered Re*Star version as a TorchServe archive (torchserve/model-store/restar.mar).

Everything is built in hidden staging folders beside the targets, on their file systems, and moved
into place only when complete: a failure, a full disk included, leaves the previous artifacts folder
and archive as they were and no half-written file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow

from registry.service import Registry, VersionInfo, is_unreachable, unreachable
from registry.store import tracking_uri
from restar.errors import RestarError
from restar.inference import METADATA_FILE, ModelMetadata
from restar.onnx_backend import convert, serving_files
from restar.output_files import is_disk_full, replace_dir, staging_dir, write_error

logger = logging.getLogger(__name__)

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


class ExportError(RestarError, RuntimeError):
    """The model cannot be resolved, downloaded or archived."""


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
    done = subprocess.run(command, capture_output=True, text=True)
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
) -> dict[str, object]:
    """Resolve, download and archive `model_uri`; the archive's version is the registry version.
    `backend` (torch, onnx, onnx-int8) overrides the backend the version was registered with."""
    version = resolve(model_uri)
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
