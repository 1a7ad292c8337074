"""Register the model a pipeline run logged as a new version of the registered model, with lineage."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml

from registry.service import STAGING, Registry, VersionInfo
from restar.config import RunConfig

logger = logging.getLogger(__name__)

PIPELINE_FILE = "dvc.yaml"
PIPELINE_LOCK = "dvc.lock"
OUTPUT_SECTIONS = ("outs", "metrics", "plots")


def pipeline_outputs(pipeline: Path) -> list[str]:
    """dvc.lock and every out/metric/plot path the stages of `pipeline` (a dvc.yaml) declare,
    relative to its folder; templated paths (`${...}`) are skipped."""
    if not pipeline.is_file():
        return []
    stages = (yaml.safe_load(pipeline.read_text()) or {}).get("stages") or {}
    paths = {PIPELINE_LOCK}
    for stage in stages.values():
        paths.update(path for path in _declared_paths(stage) if "${" not in path)
    return sorted(paths)


def _declared_paths(stage: dict) -> Iterator[str]:
    for section in OUTPUT_SECTIONS:
        for entry in stage.get(section) or ():
            yield from ([entry] if isinstance(entry, str) else entry)  # a path, or {path: {cache: ...}}


def git_commit(root: Path = Path(".")) -> str:
    """The commit checked out in `root`, with `-dirty` when tracked source or configs differ from it,
    or `unknown` outside git. What the pipeline writes (dvc.lock, the outs, metrics and plots of
    root/dvc.yaml) changes on every run by design and does not count."""
    excludes = [f":(exclude){path}" for path in pipeline_outputs(root / PIPELINE_FILE)]
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ":/", *excludes)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.strip() + ("-dirty" if dirty.strip() else "")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


SHORT_HASH = 12


def lineage(config: RunConfig, config_path: Path, data_stats: dict, run_dir: Path) -> dict[str, str]:
    """Where the version came from, in full: the version's description."""
    model = json.loads((run_dir / "model" / "restar.json").read_text())
    return {
        "config": f"{config.name} ({config_path})",
        "model": f"{model.get('kind', 'transformer')} {model['base_model']}",
        "git commit": git_commit(),
        "data sha256": data_stats["frozen_content_sha256"],
        "data rows": ", ".join(f"{split} {count}" for split, count in data_stats["rows"].items()),
    }


def lineage_tags(full: dict[str, str]) -> dict[str, str]:
    """Four tags short enough to read at a glance in the registry's versions table."""
    commit, _, dirty = full["git commit"].partition("-")
    rows = full["data rows"].replace(", ", " / ")
    return {
        "restar.config": full["config"],
        "restar.model": full["model"],
        "restar.git": commit[:SHORT_HASH] + (f"-{dirty}" if dirty else ""),
        "restar.data": f"{full['data sha256'][:SHORT_HASH]} ({rows})",
    }


def lineage_description(full: dict[str, str]) -> str:
    """The version's description on its MLflow page: the lineage in full, one line per field."""
    return "\n".join(f"- **{field}**: `{value}`" for field, value in full.items())


def model_params(run_dir: Path) -> dict[str, str]:
    """Calibration and abstention as the logged model's params (they travel inside the model too)."""
    model = json.loads((run_dir / "model" / "restar.json").read_text())
    return {
        "temperature": f"{model['temperature']:.6f}",
        "class_bias": json.dumps(model.get("class_bias", [])),
        "abstain_threshold": str(model["abstain_threshold"]),
    }


def register(
    config: RunConfig, config_path: Path, run_dir: Path, data_dir: Path, alias: str = STAGING
) -> VersionInfo:
    """A new version of `tracking.registered_model` from run_dir's logged model, holding `alias`."""
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    metrics = {
        **json.loads((run_dir / "metrics_dev.json").read_text()),
        **json.loads((run_dir / "metrics_eval.json").read_text()),
    }
    data_stats = json.loads((data_dir / "stats.json").read_text())
    registry = Registry(config.tracking.registered_model)
    full = lineage(config, config_path, data_stats, run_dir)
    version = registry.register(
        record["model_uri"],
        record["run_id"],
        lineage_tags(full),
        metrics,
        alias,
        model_params(run_dir),
        description=lineage_description(full),
    )
    logger.info("registered %s as %s (alias %s)", record["model_uri"], version.uri, alias)
    return version
