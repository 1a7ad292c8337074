"""The servers under load, TorchServe (behind its nginx gateway) and `mlflow models serve`, each started,
warmed up and taken through its phases."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from bench.load.archive import archive_info
from bench.load.baselines import paired_rounds
from bench.load.bodies import encode_bodies, hostile_bodies, mlflow_body, torchserve_body
from bench.load.kill import kill_run, print_kill
from bench.load.levels import run_levels
from bench.load.poison import poison_run, print_poison, probe_hostile
from bench.load.processes import process_threads, worker_thread_env
from bench.load.soak import print_soak, soak_run
from bench.load.wrk import WrkRun, wrk_command

if TYPE_CHECKING:
    from restar.serving.serve_local import LocalTorchServe


@contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set, restored after (TorchServe and its workers inherit it at start)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def warm_up(args: argparse.Namespace, url: str, bodies_file: Path, token: str | None) -> None:
    """Untimed wrk traffic at 8 clients for --warmup-seconds, then a --pause for queues to drain."""
    warm = WrkRun(wrk_command(args.wrk, url, bodies_file, 8, args.warmup_seconds, expect='"label"'), token)
    warm.result(timeout=args.warmup_seconds + 120)
    time.sleep(args.pause)


def write_bodies(path: Path, bodies: Iterable[bytes]) -> Path:
    path.write_bytes(encode_bodies(bodies))
    return path


def bench_torchserve(args: argparse.Namespace, archive: Path, texts: list[str], workdir: Path) -> dict:
    """TorchServe serving `archive` (behind the gateway unless --via direct), through every phase."""
    from restar.serving.serve_local import gateway, torchserve

    good_file = write_bodies(workdir / "torchserve_good.bin", (torchserve_body(text) for text in texts))
    hostile_file = write_bodies(workdir / "torchserve_hostile.bin", hostile_bodies().values())
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    out: dict = {
        "server": "torchserve",
        **archive_info(archive),
        "config": str(args.config),
        "settings_override": args.ts_settings,
        "environment_override": worker_env,
        "via": args.via,
    }
    with (
        patched_environ(worker_env),
        torchserve(archive.parent, args.config, workdir / "torchserve") as server,
        gateway(server.inference_url, workdir / "gateway") if args.via == "gateway" else nullcontext() as gw,
    ):
        endpoint = gw.url if gw is not None else server.inference_url
        warm_up(args, f"{endpoint}/predictions/restar", good_file, server.keys["inference"])
        out["threads"] = process_threads(server.process.pid)
        out["worker_env"] = worker_thread_env(server.process.pid)
        out.update(torchserve_phases(args, server, endpoint, texts, good_file, hostile_file, workdir))
    return out


def torchserve_phases(
    args: argparse.Namespace,
    server: LocalTorchServe,
    endpoint: str,
    texts: list[str],
    good_file: Path,
    hostile_file: Path,
    workdir: Path,
) -> dict:
    """The load levels, then each phase not skipped: paired rounds, poison, soak, worker kill."""
    url = f"{endpoint}/predictions/restar"
    token = server.keys["inference"]
    log = workdir / "torchserve" / "logs" / "ts_log.log"
    pid = server.process.pid
    out: dict = {
        "levels": run_levels("torchserve", url, token, good_file, pid, args, log, server.metrics_url)
    }
    if args.pair_rounds:
        out["paired"] = paired_rounds(args.model_uri, texts, url, token, good_file, workdir, args)
        time.sleep(args.pause)
    if not args.skip_poison:
        out["hostile_probe"] = probe_hostile(server, endpoint)
        clean = next((lv for lv in out["levels"] if lv["clients"] == args.poison_clients), None)
        out["poison"] = poison_run(server, endpoint, good_file, hostile_file, clean, args)
        print_poison(out["poison"], clean)
        time.sleep(args.pause)
    if not args.skip_soak:
        out["soak"] = soak_run(server, endpoint, good_file, args)
        print_soak(out["soak"], args.soak_seconds)
        time.sleep(args.pause)
    if not args.skip_kill:
        out["worker_kill"] = kill_run(server, endpoint, texts, args.kill_clients, args.kill_seconds)
        print_kill(out["worker_kill"])
    return out


def bench_mlflow(args: argparse.Namespace, texts: list[str], workdir: Path) -> dict:
    """`mlflow models serve` on --model-uri through the load levels."""
    from restar.serving.serve_local import mlflow_serve

    good_file = write_bodies(workdir / "mlflow_good.bin", (mlflow_body(text) for text in texts))
    out: dict = {
        "server": "mlflow",
        "command": f"mlflow models serve -m {args.model_uri} --env-manager local -w {args.mlflow_workers}",
        "workers": args.mlflow_workers,
    }
    with mlflow_serve(args.model_uri, workdir / "mlflow", workers=args.mlflow_workers) as server:
        url = f"{server.url}/invocations"
        warm_up(args, url, good_file, None)
        out["threads"] = process_threads(server.process.pid)
        out["levels"] = run_levels("mlflow", url, None, good_file, server.process.pid, args)
    return out
