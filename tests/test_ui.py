"""The MLflow UI pages the docs walk through, rendered by headless Chromium against a real
`mlflow server` holding two registered versions of the tiny model (scripts/ui_screenshots.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason="needs Chromium at /usr/bin/chromium (Debian package `chromium`)"
    ),
]


def load_script():
    spec = importlib.util.spec_from_file_location(
        "ui_screenshots", REPO_ROOT / "scripts" / "ui_screenshots.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_dir(root: Path, model_dir: Path, eval_accuracy: float) -> Path:
    """A run folder as train + evaluate leave it: model/ and the two metrics files."""
    shutil.copytree(model_dir, root / "model")
    (root / "metrics_dev.json").write_text(json.dumps({"dev_accuracy": eval_accuracy + 0.01}))
    (root / "metrics_eval.json").write_text(
        json.dumps({"eval_accuracy": eval_accuracy, "eval_macro_f1": 0.3})
    )
    return root


@pytest.fixture(scope="module")
def ui(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real server with versions 1 and 2 of `restar`; yields (script, server URL, pages)."""
    script = load_script()
    work = tmp_path_factory.mktemp("ui")
    data = work / "data"
    data.mkdir()
    (data / "stats.json").write_text(json.dumps({"frozen_content_sha256": "0" * 64, "rows": {"train": 8}}))
    runs = [run_dir(work / f"run{n}", tiny_model_dir, accuracy) for n, accuracy in ((1, 0.4), (2, 0.5))]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)
        with script.mlflow_server(
            f"sqlite:///{work / 'mlflow.db'}", work / "artifacts", work / "log"
        ) as server:
            run_ids = script.seed(server, runs, Path("configs/ci.yaml"), data, work / "seed")
            experiment, _, version = script.latest_version(server, "restar")
            yield (
                script,
                server,
                {page.name: page for page in script.pages(experiment, "restar", run_ids, version)},
            )


def dom(ui, name: str, tmp_path: Path) -> str:
    script, server, pages = ui
    return script.dump_dom(server, pages[name], str(CHROMIUM), tmp_path / "profile")


def test_screenshots_of_every_page(ui, tmp_path: Path) -> None:
    script, server, pages = ui
    pngs = script.capture_all(server, list(pages.values()), tmp_path / "ui", str(CHROMIUM))
    assert [png.name for png in pngs] == [f"{name}.png" for name in pages]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000  # a rendered page, not a blank one


def test_training_view_lists_the_runs(ui, tmp_path: Path) -> None:
    page = dom(ui, "experiment_runs", tmp_path)
    assert "ci-run1-1" in page and "ci-run2-2" in page
    assert (
        "Training runs" not in page
    )  # the GenAI sidebar (Overview, Training runs, Traces, ...) is not shown


def test_versions_table_shows_lineage_not_metric_tags(ui, tmp_path: Path) -> None:
    page = dom(ui, "model_versions", tmp_path)
    assert "Version 1" in page and "Version 2" in page
    assert "restar.config" in page
    assert "metric." not in page
    tag_keys = set(re.findall(r"restar\.[a-z_]+", page))
    assert 3 <= len(tag_keys) <= 6, tag_keys


def test_version_page_links_its_run(ui, tmp_path: Path) -> None:
    page = dom(ui, "model_version", tmp_path)
    assert "Source Run" in page and "ci-run2-2" in page
