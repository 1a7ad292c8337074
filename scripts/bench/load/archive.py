"""The TorchServe archive under load: exported from the registry afresh or given, optionally repacked
with other batching settings, and checked to hold the version the model URI names."""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import yaml

from bench.common import REPO_ROOT


def archive_info(mar: Path) -> dict:
    """Registry version, backend and batching settings packed in a TorchServe archive."""
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        registry = json.loads(archive.read("registry.json")) if "registry.json" in names else {}
        metadata = json.loads(archive.read("restar.json")) if "restar.json" in names else {}
        config = yaml.safe_load(archive.read("model-config.yaml")) if "model-config.yaml" in names else {}
    return {
        "archive": str(mar),
        "registry_version": registry.get("version"),
        "backend": metadata.get("backend"),
        "base_model": metadata.get("base_model"),
        "max_length": metadata.get("max_length"),
        "model_config": config,
    }


def stale_settings(mar: Path, shipped: Path = REPO_ROOT / "torchserve" / "model-config.yaml") -> str | None:
    """Why an archive given with --archive does not serve the shipped batching settings, or None."""
    packed = archive_info(mar)["model_config"]
    expected = yaml.safe_load(shipped.read_text())
    if packed == expected:
        return None
    return f"{mar} packs {packed}, not {shipped.name} ({expected}); re-export it to measure those"


def torchserve_archive(args: argparse.Namespace, version: str, workdir: Path) -> Path:
    """The archive to serve (--archive, or --model-uri exported into `workdir`), repacked with
    --ts-settings if given; exits if it does not hold registry version `version`."""
    archive = (
        given_archive(args.archive, args.ts_settings) if args.archive else exported_archive(args, workdir)
    )
    if args.ts_settings:
        from bench.endpoint import archive_variant

        workers, batch_size, delay_ms = (int(part) for part in args.ts_settings.split("x"))
        archive = archive_variant(archive, workdir / "variant", workers, batch_size, delay_ms)
    packed = archive_info(archive).get("registry_version")
    if packed != version:
        raise SystemExit(f"{archive} holds version {packed}, {args.model_uri} is version {version}")
    return archive


def given_archive(path: Path, ts_settings: str | None) -> Path:
    """An archive from --archive, with a note when it packs other settings than the shipped ones."""
    archive = path.resolve()
    if (stale := stale_settings(archive)) and not ts_settings:
        print(f"note: {stale}", flush=True)
    return archive


def exported_archive(args: argparse.Namespace, workdir: Path) -> Path:
    from restar.serving.export_torchserve import export_torchserve

    exported = export_torchserve(
        args.model_uri,
        workdir / "export" / "artifacts",
        workdir / "export" / "model-store",
        REPO_ROOT / "torchserve" / "handler.py",
        REPO_ROOT / "torchserve" / "model-config.yaml",
    )
    return Path(exported["archive"])
