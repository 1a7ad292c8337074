"""Phase 3, poison: hostile requests mixed into a level's traffic, each side counted exactly; and each
hostile body probed once at rest."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from bench.load.bodies import hostile_bodies
from bench.load.processes import TreeSampler
from bench.load.wrk import WrkRun, children_cpu_s, summarize_wrk, wait_with_progress, wrk_command

if TYPE_CHECKING:
    from restar.serving.serve_local import LocalTorchServe


def poison_run(
    server: LocalTorchServe,
    endpoint: str,
    good_file: Path,
    hostile_file: Path,
    clean_level: dict | None,
    args: argparse.Namespace,
) -> dict:
    """--poison-clients connections for --seconds, of which enough send hostile bodies for about
    --hostile-share of all requests; `clean_level` is the clean run at the same concurrency, if any.

    Good and hostile bodies go through two wrk processes (wrk's Lua cannot pair a response with the
    connection that asked), so each side's statuses are exact. Hostile connections are paced with a
    per-request delay computed from the clean run's mean latency at the same concurrency, and never
    over a tenth of the run: on a loaded machine that latency is long, and wrk waits the delay out
    before a connection's first request too (a longer one meant no hostile request at all)."""
    clients, seconds = args.poison_clients, args.seconds
    hostile_clients, good_clients, delay_ms = poison_mix(clients, args.hostile_share, seconds, clean_level)
    url = f"{endpoint}/predictions/restar"
    token = server.keys["inference"]
    cpu_client = children_cpu_s()
    with TreeSampler(server.process.pid, 1.0) as sampler:
        good = WrkRun(wrk_command(args.wrk, url, good_file, good_clients, seconds, expect='"label"'), token)
        hostile = WrkRun(
            wrk_command(args.wrk, url, hostile_file, hostile_clients, seconds, delay_ms=delay_ms), token
        )
        wait_with_progress(seconds, f"poison {clients} clients", good.finished)
        good_raw = good.result(timeout=seconds + 120)
        hostile_raw = hostile.result(timeout=seconds + 120)
    good_level = summarize_wrk(good_raw, good_clients)
    hostile_level = summarize_wrk(hostile_raw, hostile_clients)
    hostile_sent, good_sent = sent(hostile_level), sent(good_level)
    return {
        "clients": clients,
        "good_clients": good_clients,
        "hostile_clients": hostile_clients,
        "hostile_delay_ms": delay_ms,
        "hostile_share": round(hostile_sent / max(1, hostile_sent + good_sent), 4),
        "good": good_level,
        "hostile": {
            **hostile_level,
            "refused_4xx": hostile_level["status_4xx"],
            "unexpected_2xx": hostile_level["status_2xx"],
        },
        "failed_good_requests": good_level["failed"],
        "hostile_5xx": hostile_level["status_5xx"],
        "client_cpu_s": round(children_cpu_s() - cpu_client, 2),
        **sampler.summary(),
    }


def sent(level: dict) -> int:
    """Requests wrk sent in a run: those answered and those lost to socket errors."""
    return level["requests"] + sum(level["socket_errors"].values())


def print_poison(result: dict, clean_level: dict | None) -> None:
    good_level, hostile_level = result["good"], result["hostile"]
    clean_note = (
        f" (clean run: p50 {clean_level['latency_p50_ms']:.1f} p99 {clean_level['latency_p99_ms']:.1f})"
        if clean_level
        else ""
    )
    print(
        f"    poison {result['clients']} clients ({result['hostile_clients']} hostile, "
        f"{result['hostile_share']:.1%} of requests): "
        f"good {good_level['ok_rps']:.1f} req/s p50 {good_level['latency_p50_ms']:.1f} "
        f"p99 {good_level['latency_p99_ms']:.1f} ms{clean_note}, "
        f"failed good {good_level['failed']}/{sent(good_level)}; "
        f"hostile statuses {hostile_level['statuses']}, socket errors {hostile_level['socket_errors']}",
        flush=True,
    )


def poison_mix(clients: int, share: float, seconds: float, clean_level: dict | None) -> tuple[int, int, int]:
    """Hostile and good connections, and the hostile ones' delay in ms per request, for about `share`
    hostile requests (the delay capped at a tenth of the run)."""
    hostile_clients = max(1, math.ceil(clients * share))
    good_clients = clients - hostile_clients
    mean_ms = (clean_level or {}).get("latency_mean_ms") or 0.0
    # per-connection rates: good 1/L, hostile 1/(L+d); solve hostile/(all) = share for d
    factor = hostile_clients * (1 - share) / (good_clients * share)
    delay_ms = min(max(0, round(mean_ms * (factor - 1))), round(seconds * 1000 / 10))
    return hostile_clients, good_clients, delay_ms


def probe_hostile(server: LocalTorchServe, endpoint: str) -> dict[str, dict]:
    """Each hostile body once, at rest: its status and the start of the answer."""
    out = {}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {server.keys['inference']}"}
    for name, body in hostile_bodies().items():
        try:
            response = requests.post(f"{endpoint}/predictions/restar", data=body, headers=headers, timeout=60)
            out[name] = {"bytes": len(body), "status": response.status_code, "answer": response.text[:160]}
        except requests.RequestException as exc:
            out[name] = {"bytes": len(body), "status": -1, "answer": f"{type(exc).__name__}: {exc}"[:160]}
    return out
