"""Screenshots of the MLflow UI pages docs/registry.md's "Comparing models" walks through.

Starts a real `mlflow server` on 127.0.0.1 (over a given backend store, or a fresh one in a temp
folder seeded with real run folders registered the way the `register` stage does), opens the pages
in headless Chromium and saves PNGs, by default under results/ui/. Run it from the repository root:

    python scripts/ui_screenshots.py                                  # fresh store, outputs/baseline twice
    python scripts/ui_screenshots.py --run-dir outputs/baseline --run-dir outputs/dvc_run
    python scripts/ui_screenshots.py --backend-store-uri sqlite:///mlflow.db --artifacts mlartifacts

Needs Chromium (`/usr/bin/chromium`, Debian package `chromium`; `--chromium` names another).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
WINDOW = "1600,1000"
RENDER_BUDGET_MS = 15000  # virtual time Chromium gives the single-page app to fetch and render
# MLflow 3.17's UI opens experiments as GenAI (traces overview) unless the URL or the sidebar's
# workflow switch says "Model training".
TRAINING_VIEW = "workflowType=machine_learning"


@dataclass(frozen=True)
class Page:
    name: str
    route: str  # the part after `#/`

    def url(self, server: str) -> str:
        return f"{server}/#/{self.route}"


def pages(experiment_id: str, model_name: str, run_ids: list[str], version: int) -> list[Page]:
    """The pages docs/registry.md names, in the order a user meets them."""
    runs = quote(json.dumps(run_ids, separators=(",", ":")))
    experiments = quote(json.dumps([experiment_id], separators=(",", ":")))
    return [
        Page("experiment_default", f"experiments/{experiment_id}"),
        Page("experiment_runs", f"experiments/{experiment_id}/runs?{TRAINING_VIEW}"),
        Page("compare_runs", f"compare-runs?runs={runs}&experiments={experiments}"),
        Page("model_versions", f"models/{model_name}?{TRAINING_VIEW}"),
        Page("model_version", f"models/{model_name}/versions/{version}?{TRAINING_VIEW}"),
    ]


@contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    """`mlflow server` on a free loopback port until the block ends; yields its URL."""
    from restar.serving.serve_local import launch_mlflow_server

    process, url = launch_mlflow_server(backend_store_uri, artifacts, log)
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} not healthy after {timeout_s:.0f} s")


def seed(server: str, run_dirs: list[Path], config_path: Path, data_dir: Path, work: Path) -> list[str]:
    """Log each run folder's model and metrics as a run of the config's experiment on `server`, and
    register it as the `register` stage does; returns the run ids."""
    import mlflow

    from restar.config import flatten, load_run_config
    from restar.model.pyfunc import log_run_model
    from restar.model.register import register
    from restar.tracking import experiment_id

    config = load_run_config(config_path)
    os.environ["MLFLOW_TRACKING_URI"] = server
    mlflow.set_tracking_uri(server)
    run_ids = []
    for number, run_dir in enumerate(run_dirs, start=1):
        out = work / f"run{number}"
        out.mkdir(parents=True)
        shutil.copytree(run_dir / "model", out / "model")  # MLflow refuses to log through a link
        metrics = {}
        for name in ("metrics_dev.json", "metrics_eval.json"):
            shutil.copy(run_dir / name, out / name)
            metrics.update(json.loads((run_dir / name).read_text()))
        with mlflow.start_run(
            experiment_id=experiment_id(config.tracking.experiment),
            run_name=f"{config.name}-{run_dir.name}-{number}",
        ) as run:
            mlflow.log_params(flatten(config))
            mlflow.log_metrics(metrics)
            log_run_model(run, out / "model", out, server)
        register(config, config_path, out, data_dir)
        run_ids.append(run.info.run_id)
    return run_ids


def chromium(binary: str, profile: Path, *args: str) -> str:
    """Run headless Chromium with `args` in `profile`; returns its stdout."""
    command = [
        binary,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW}",
        f"--virtual-time-budget={RENDER_BUDGET_MS}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout


def capture(server: str, page: Page, out_dir: Path, binary: str, profile: Path) -> Path:
    png = out_dir / f"{page.name}.png"
    chromium(binary, profile, f"--screenshot={png}", page.url(server))
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot of {page.url(server)}")
    shrink(png)
    return png


def shrink(png: Path) -> None:
    """256 colours are plenty for a UI screenshot and take a third of the bytes."""
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(png, optimize=True)


def dump_dom(server: str, page: Page, binary: str, profile: Path) -> str:
    """The page's DOM after the app rendered it."""
    return chromium(binary, profile, "--dump-dom", page.url(server))


def capture_all(server: str, shown: list[Page], out_dir: Path, binary: str = CHROMIUM) -> list[Path]:
    """Screenshot every page in one browser profile, so the MLflow Assistant panel that the UI opens
    by itself on a first visit is open in all of them, as a user sees it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        return [capture(server, page, out_dir, binary, Path(profile)) for page in shown]


def latest_version(server: str, model_name: str) -> tuple[str, list[str], int]:
    """The experiment, run ids (newest two) and newest version of `model_name` in a store."""
    from mlflow import MlflowClient

    client = MlflowClient(server, server)
    versions = sorted(client.search_model_versions(f"name = '{model_name}'"), key=lambda v: -int(v.version))
    if not versions:
        raise SystemExit(f"registered model {model_name!r} has no versions at {server}")
    run_ids = [v.run_id for v in versions[:2] if v.run_id]
    experiment = client.get_run(run_ids[0]).info.experiment_id
    return experiment, run_ids, int(versions[0].version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend-store-uri", help="An existing store to show (default: a fresh, seeded one)."
    )
    parser.add_argument("--artifacts", type=Path, help="Artifacts folder of --backend-store-uri.")
    parser.add_argument(
        "--run-dir",
        type=Path,
        action="append",
        help="Run folder (model/, metrics_*.json) to seed a fresh store with; repeat for more runs "
        "(default: outputs/baseline twice).",
    )
    parser.add_argument("--config", type=Path, default=Path("configs/smoke.yaml"), help="Run config.")
    parser.add_argument("--data", type=Path, default=Path("data/raw"), help="Folder with stats.json.")
    parser.add_argument("--model-name", default="restar", help="Registered model to show.")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "ui", help="Where the PNGs go.")
    parser.add_argument("--chromium", default=CHROMIUM, help="Chromium binary.")
    args = parser.parse_args()
    if not Path(args.chromium).is_file():
        raise SystemExit(f"no Chromium at {args.chromium} (Debian: apt-get install chromium)")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = args.backend_store_uri or f"sqlite:///{work / 'mlflow.db'}"
        artifacts = args.artifacts or work / "artifacts"
        with mlflow_server(store, artifacts.resolve(), work / "server.log") as server:
            if not args.backend_store_uri:
                run_dirs = args.run_dir or [Path("outputs/baseline")] * 2
                seed(server, run_dirs, args.config, args.data, work)
            experiment, run_ids, version = latest_version(server, args.model_name)
            shown = pages(experiment, args.model_name, run_ids, version)
            for png in capture_all(server, shown, args.out, args.chromium):
                print(png)


if __name__ == "__main__":
    main()
