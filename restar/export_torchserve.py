"""Package a registered Re*Star version as a TorchServe archive (torchserve/model-store/restar.mar)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow

from registry.service import Registry, VersionInfo
from restar.inference import METADATA_FILE, ModelMetadata
from restar.onnx_backend import convert, serving_files

logger = logging.getLogger(__name__)

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


class ExportError(RuntimeError):
    """The model cannot be resolved, downloaded or archived."""


def resolve(model_uri: str) -> VersionInfo:
    """A registry URI (`models:/name@alias` or `models:/name/N`) -> its version."""
    match = MODEL_URI.match(model_uri)
    if match is None:
        raise ExportError(f"{model_uri!r} is not a registry URI (models:/name@alias or models:/name/N)")
    return Registry(match["name"]).version(match["version"] or match["alias"])


def download_model_dir(version: VersionInfo, into: Path) -> Path:
    """The Re*Star model folder (weights, tokenizer, restar.json) inside the version's pyfunc."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.uri, dst_path=str(into)))
    found = sorted(local.rglob(METADATA_FILE))
    if not found:
        raise ExportError(f"{version.uri} holds no {METADATA_FILE}: not a Re*Star pyfunc")
    return found[0].parent


def write_artifacts(model_dir: Path, version: VersionInfo, artifacts_dir: Path) -> list[Path]:
    if artifacts_dir.exists():
        shutil.rmtree(artifacts_dir)
    artifacts_dir.mkdir(parents=True)
    for path in serving_files(model_dir):
        shutil.copy2(path, artifacts_dir / path.name)
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
    model_store: Path,
    model_name: str,
) -> Path:
    model_store.mkdir(parents=True, exist_ok=True)
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
        str(model_store),
        "--force",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"torch-model-archiver failed: {done.stderr.strip() or done.stdout.strip()}")
    return model_store / f"{model_name}.mar"


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
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = download_model_dir(version, Path(tmp))
        metadata = convert(model_dir, backend) if backend else ModelMetadata.load(model_dir)
        files = write_artifacts(model_dir, version, artifacts_dir)
    mar = archive(files, version, handler, model_config, model_store, model_name)
    logger.info("exported %s (v%d) to %s", model_uri, version.version, mar)
    return {
        "model_uri": model_uri,
        "version": version.version,
        "archive": str(mar),
        "artifacts": str(artifacts_dir),
        "backend": metadata.backend,
    }
