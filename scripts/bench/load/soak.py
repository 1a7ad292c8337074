"""Phase 4, the soak: a long run at a steady load with the server's memory sampled, and its growth."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.load.processes import TreeSampler
from bench.load.wrk import wrk_level

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from restar.serving.serve_local import LocalTorchServe


def soak_growth(samples: Sequence[tuple[float, float]], warmup_s: float, window_s: float) -> dict:
    """RSS growth over a soak: mean of the last `window_s` seconds against the mean of the first
    `window_s` seconds after `warmup_s`. `samples` are (seconds since start, MiB)."""
    if not samples:
        raise ValueError("no RSS samples")
    end = samples[-1][0]
    first = [mb for t, mb in samples if warmup_s <= t < warmup_s + window_s]
    last = [mb for t, mb in samples if t >= end - window_s]
    if not first or not last:
        raise ValueError(f"soak too short for a {window_s:g} s window after {warmup_s:g} s of warm-up")
    first_mean, last_mean = statistics.fmean(first), statistics.fmean(last)
    return {
        "warmup_s": warmup_s,
        "window_s": window_s,
        "first_window_mean_mb": round(first_mean, 1),
        "last_window_mean_mb": round(last_mean, 1),
        "growth_ratio": round((last_mean - first_mean) / first_mean, 4),
    }


def soak_run(server: LocalTorchServe, endpoint: str, good_file: Path, args: argparse.Namespace) -> dict:
    """--soak-clients for --soak-seconds with the server's memory sampled every --soak-interval."""
    clients, seconds = args.soak_clients, args.soak_seconds
    url = f"{endpoint}/predictions/restar"
    with TreeSampler(server.process.pid, args.soak_interval) as sampler:
        level = wrk_level(
            args.wrk, url, server.keys["inference"], good_file, clients, seconds, f"soak {clients}"
        )
    warmup = min(args.soak_warmup, seconds / 10)
    window = min(60.0, seconds / 5)
    totals = [(t, sum(roles.values())) for t, roles in sampler.samples]
    return {
        **level,
        **sampler.summary(),
        "rss_growth": soak_growth(totals, warmup, window),
        "rss_growth_by_role": growth_by_role(sampler.samples, warmup, window),
        "rss_samples": [
            [round(t, 1), {k: round(v, 1) for k, v in roles.items()}] for t, roles in sampler.samples
        ],
    }


def growth_by_role(samples: list[tuple[float, dict[str, float]]], warmup: float, window: float) -> dict:
    """soak_growth of each process role's memory, for the roles whose windows it can compute."""
    by_role = {}
    for role in sorted({r for _, roles in samples for r in roles}):
        series = [(t, roles.get(role, 0.0)) for t, roles in samples]
        try:
            by_role[role] = soak_growth(series, warmup, window)
        except (ValueError, ZeroDivisionError):
            continue
    return by_role


def print_soak(soak: dict, seconds: float) -> None:
    growth = soak["rss_growth"]
    print(
        f"      soak {soak['clients']} clients {seconds:g} s: RSS "
        f"{growth['first_window_mean_mb']} -> {growth['last_window_mean_mb']} MiB "
        f"({growth['growth_ratio']:+.1%}), failed {soak['failed']}/{soak['requests']}",
        flush=True,
    )


def plot_soak(soak: dict) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.8))
    ax = fig.subplots()
    samples = soak["rss_samples"]
    times = [t for t, _ in samples]
    roles = sorted({role for _, roles in samples for role in roles})
    ax.plot(times, [sum(roles.values()) for _, roles in samples], label="total", color="black")
    for role in roles:
        ax.plot(times, [roles.get(role, 0.0) for _, roles in samples], label=role, linewidth=0.9)
    growth = soak["rss_growth"]
    ax.axvspan(growth["warmup_s"], growth["warmup_s"] + growth["window_s"], color="tab:green", alpha=0.12)
    ax.axvspan(times[-1] - growth["window_s"], times[-1], color="tab:red", alpha=0.12)
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(
        f"TorchServe soak, {soak['clients']} clients: RSS {growth['growth_ratio']:+.1%} "
        f"(shaded: first and last windows)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
