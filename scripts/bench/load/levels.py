"""Phase 2, the load levels: wrk at each number of keep-alive connections against one server, with the
server's memory, CPU time and (TorchServe) its own timings."""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

from bench.load.processes import TreeSampler
from bench.load.torchserve_view import LogSlice, parse_torchserve_log, prometheus_delta, scrape
from bench.load.wrk import wrk_level


def run_levels(
    name: str,
    url: str,
    token: str | None,
    bodies_file: Path,
    root_pid: int,
    args: argparse.Namespace,
    log: Path | None = None,
    metrics_url: str | None = None,
) -> list[dict]:
    """Each of --levels for --seconds against the server whose process tree is `root_pid`, a --pause
    after each; with TorchServe's log and metrics URL, its own timings of each level too."""
    results = []
    for clients in args.levels:
        prometheus_before = scrape(metrics_url)
        with LogSlice(log) if log else nullcontext() as log_slice, TreeSampler(root_pid, 1.0) as sampler:
            level = wrk_level(
                args.wrk, url, token, bodies_file, clients, args.seconds, f"{name} {clients:>2}"
            )
        level.update(sampler.summary())
        if metrics_url:
            level["torchserve_metrics"] = prometheus_delta(prometheus_before, scrape(metrics_url))
        if log_slice is not None:
            level["torchserve_log"] = parse_torchserve_log(log_slice.read())
        results.append(level)
        print_level(name, level)
        time.sleep(args.pause)
    return results


def print_level(name: str, level: dict) -> None:
    print(
        f"{name:>10} {level['clients']:>3} clients  {level['ok_rps']:>7.1f} req/s  "
        f"p50 {level['latency_p50_ms']:>7.1f}  p95 {level['latency_p95_ms']:>7.1f}  "
        f"p99 {level['latency_p99_ms']:>7.1f} ms  failed {level['failed']}/{level['requests']} "
        f"({level['failed_ratio']:.2%})  rss peak {level['rss_peak_mb']} MiB  "
        f"wrk cpu {level['client_cpu_s']} s",
        flush=True,
    )
