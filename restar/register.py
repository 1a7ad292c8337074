"""Register the model a pipeline run logged as a new version of the registered model, with lineage."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from registry.service import STAGING, Registry, VersionInfo
from restar.config import RunConfig

logger = logging.getLogger(__name__)


def git_commit() -> str:
    """The checked-out commit (with `-dirty` when the tree has changes), or `unknown` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.strip() + ("-dirty" if dirty.strip() else "")


def lineage(config: RunConfig, config_path: Path, data_stats: dict, run_dir: Path) -> dict[str, str]:
    model = json.loads((run_dir / "model" / "restar.json").read_text())
    return {
        "restar.config": str(config_path),
        "restar.config_name": config.name,
        "restar.model_kind": model.get("kind", "transformer"),
        "restar.base_model": model["base_model"],
        "restar.git_commit": git_commit(),
        "restar.data_sha256": data_stats["frozen_content_sha256"],
        "restar.data_rows": json.dumps(data_stats["rows"]),
        "restar.temperature": f"{model['temperature']:.6f}",
        "restar.class_bias": json.dumps(model.get("class_bias", [])),
        "restar.abstain_threshold": str(model["abstain_threshold"]),
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
    version = registry.register(
        record["model_uri"],
        record["run_id"],
        lineage(config, config_path, data_stats, run_dir),
        metrics,
        alias,
    )
    logger.info("registered %s as %s (alias %s)", record["model_uri"], version.uri, alias)
    return version
