"""Phase 5, the worker kill: TorchServe's Python worker SIGKILLed under load, with per-request
timestamps from a threaded client, and the recovery read from them."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import requests

from bench.load.bodies import torchserve_body
from bench.load.processes import worker_pids
from bench.load.torchserve_view import LogSlice
from bench.load.wrk import wait_with_progress

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from restar.serving.serve_local import LocalTorchServe


def recovery_summary(
    records: Sequence[tuple[float, float, int]], kill_at: float, ready_at: float | None = None
) -> dict:
    """Recovery from a worker kill. `records` are (start, end, status) per request, status -1 for a
    connection error or timeout; `ready_at` is when the replacement worker reported its model loaded.

    The outage is the longest stretch after the kill without a 200 answer. Recovery ends at the later
    of the 200 that closes the outage and `ready_at` (with more than one worker the others answer
    throughout, and recovery is the replacement loading). The failed ratio during recovery counts
    every request in flight at some point between the kill and the end of recovery."""
    ok_ends = sorted(end for _, end, status in records if status == 200 and end > kill_at)
    total = len(records)
    failed_all = sum(1 for *_, status in records if status != 200)
    base = {
        "requests": total,
        "failed": failed_all,
        "failed_ratio": round(failed_all / total, 5) if total else 0.0,
        "failed_statuses": dict(Counter(str(s) for *_, s in records if s != 200)),
        "worker_ready_s": round(ready_at - kill_at, 3) if ready_at is not None else None,
    }
    if not ok_ends:
        return {**base, "recovered": False, "recovery_s": None}
    points = [kill_at, *ok_ends]
    gap_start, gap_end = max(itertools.pairwise(points), key=lambda pair: pair[1] - pair[0])
    recovered_at = max(gap_end, ready_at) if ready_at is not None else gap_end
    window = [status for start, end, status in records if start < recovered_at and end > kill_at]
    failed = sum(1 for status in window if status != 200)
    return {
        **base,
        "recovered": True,
        "recovery_s": round(recovered_at - kill_at, 3),
        "outage_s": round(gap_end - gap_start, 3),
        "recovery_window_requests": len(window),
        "recovery_window_failed": failed,
        "recovery_window_failed_ratio": round(failed / len(window), 5) if window else 0.0,
    }


def kill_phase(
    server, endpoint: str, bodies: list[bytes], clients: int, seconds: float, kill_after: float
) -> tuple[dict, list[tuple[float, float, int]]]:
    """`clients` threads post good bodies to `endpoint` for `seconds`; the Python worker is SIGKILLed
    after `kill_after`."""
    key = server.keys["inference"]
    url = f"{endpoint}/predictions/restar"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    records: list[tuple[float, float, int]] = []
    origin = time.monotonic()
    stop_at = origin + seconds

    def client(index: int) -> None:
        session = requests.Session()
        n = index
        while time.monotonic() < stop_at:
            body = bodies[n % len(bodies)]
            n += clients
            start = time.monotonic()
            try:
                status = session.post(url, data=body, headers=headers, timeout=120).status_code
            except requests.RequestException:
                status = -1
                session = requests.Session()
            records.append((start - origin, time.monotonic() - origin, status))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(kill_after)
    old = worker_pids(server.process.pid)
    if not old:
        raise RuntimeError("no TorchServe worker process found to kill")
    victim = min(old)
    events: dict[str, float] = {}
    log = LogSlice(server.workdir / "logs" / "ts_log.log").__enter__()
    kill_at = time.monotonic() - origin
    os.kill(victim, signal.SIGKILL)

    def watch() -> None:
        """When a new worker process appears, and when TorchServe logs a worker's model loaded."""
        carry = ""
        deadline = stop_at + 180
        while time.monotonic() < deadline and len(events) < 2:
            now = time.monotonic() - origin
            if "respawned" not in events and worker_pids(server.process.pid) - old:
                events["respawned"] = now
            text = carry + log.read_new()
            if "ready" not in events and "-> WORKER_MODEL_LOADED" in text:
                events["ready"] = now
            carry = text[-200:]
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    wait_with_progress(max(0.0, stop_at - time.monotonic()), "kill run", lambda: time.monotonic() >= stop_at)
    for thread in threads:
        thread.join(timeout=180)
    watcher.join(timeout=60)
    summary = recovery_summary(records, kill_at, events.get("ready"))
    summary.update(
        clients=clients,
        seconds=seconds,
        workers_before=len(old),
        killed_pid=victim,
        kill_at_s=round(kill_at, 3),
        worker_respawned_s=round(events["respawned"] - kill_at, 3) if "respawned" in events else None,
        client="python threads (requests), one keep-alive session each",
    )
    return summary, records


def kill_run(server: LocalTorchServe, endpoint: str, texts: list[str], clients: int, seconds: float) -> dict:
    """The kill phase at `clients` clients for `seconds`, the worker killed at a third: its summary
    with the timeline of every request."""
    bodies = [torchserve_body(text) for text in texts]
    kill, records = kill_phase(server, endpoint, bodies, clients, seconds, seconds / 3)
    kill["timeline"] = [[round(s, 3), round(e, 3), st] for s, e, st in records]
    return kill


def print_kill(kill: dict) -> None:
    print(
        f"    worker kill at {kill['clients']} clients: back in {kill.get('recovery_s')} s "
        f"(new process after {kill.get('worker_respawned_s')} s), failed during recovery "
        f"{kill.get('recovery_window_failed')}/{kill.get('recovery_window_requests')}, "
        f"over the run {kill['failed']}/{kill['requests']} ({kill['failed_ratio']:.2%}), "
        f"statuses {kill['failed_statuses']}",
        flush=True,
    )


def plot_kill(kill: dict) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.8))
    ax = fig.subplots()
    timeline = kill["timeline"]
    ok = [(end, (end - start) * 1000) for start, end, status in timeline if status == 200]
    bad = [(end, (end - start) * 1000) for start, end, status in timeline if status != 200]
    if ok:
        ax.scatter(*zip(*ok, strict=True), s=3, color="tab:blue", label="200")
    if bad:
        ax.scatter(*zip(*bad, strict=True), s=12, color="tab:red", marker="x", label="failed")
    ax.axvline(kill["kill_at_s"], color="black", linewidth=0.8, label="SIGKILL worker")
    if kill.get("recovery_s") is not None:
        ax.axvline(
            kill["kill_at_s"] + kill["recovery_s"], color="tab:green", linewidth=0.8, label="recovered"
        )
    ax.set_yscale("log")
    ax.set_xlabel("seconds (request completion)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"TorchServe worker killed under {kill['clients']} clients", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
