"""The load generator: wrk with scripts/wrk/post_bodies.lua, its command line, its process and its
parsed result."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.common import REPO_ROOT, SCRIPTS_DIR

LUA_SCRIPT = SCRIPTS_DIR / "wrk" / "post_bodies.lua"
WRK_MARKER = "RESTAR_WRK_RESULT "
WRK_INSTALL_HINT = (
    "wrk not found: install it from Debian (`apt-get install -y wrk`, as root) or pass --wrk PATH"
)


def find_wrk(name: str) -> str:
    """The wrk executable's path; exits with how to install it when there is none."""
    wrk = shutil.which(name)
    if wrk is None:
        raise SystemExit(WRK_INSTALL_HINT)
    return wrk


def load_generator(wrk: str, timeout_s: int) -> dict[str, object]:
    """What generates the load, for the report."""
    return {
        "tool": subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0],
        "threads": 1,
        "script": str(LUA_SCRIPT.relative_to(REPO_ROOT)),
        "timeout_s": timeout_s,
        "note": "wrk runs on the same cores as the servers; its CPU time is recorded per run",
    }


def parse_wrk_output(stdout: str) -> dict:
    """The JSON line post_bodies.lua prints in done()."""
    for line in stdout.splitlines():
        if line.startswith(WRK_MARKER):
            return json.loads(line[len(WRK_MARKER) :])
    raise ValueError(f"no {WRK_MARKER.strip()} line in wrk output:\n{stdout[-2000:]}")


def summarize_wrk(raw: dict, clients: int) -> dict:
    """Throughput, latency and failures of one wrk run. A request failed unless it got a 2xx (with
    the expected body, where one was asked for); socket errors and timeouts count as failed requests."""
    seconds = raw["duration_us"] / 1e6
    statuses = {int(code): n for code, n in raw["statuses"].items()}
    by_class = Counter(f"{code // 100}xx" for code, n in statuses.items() for _ in range(n))
    errors = raw["errors"]
    socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    ok = by_class["2xx"] - raw.get("invalid_2xx", 0)
    attempted = raw["requests"] + socket_errors
    failed = attempted - ok
    percentiles = raw["latency_us"]["percentiles"]

    def ms(value: float) -> float:
        return round(value / 1000, 2)

    return {
        "clients": clients,
        "seconds": round(seconds, 2),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "ok_rps": round(ok / seconds, 1) if seconds else 0.0,
        "latency_p50_ms": ms(percentiles["50"]),
        "latency_p90_ms": ms(percentiles["90"]),
        "latency_p95_ms": ms(percentiles["95"]),
        "latency_p99_ms": ms(percentiles["99"]),
        "latency_mean_ms": ms(raw["latency_us"]["mean"]),
        "latency_max_ms": ms(raw["latency_us"]["max"]),
        "ok": ok,
        "status_2xx": by_class["2xx"],
        "status_4xx": by_class["4xx"],
        "status_5xx": by_class["5xx"],
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "invalid_2xx": raw.get("invalid_2xx", 0),
        "socket_errors": {k: errors[k] for k in ("connect", "read", "write", "timeout")},
        "failed": failed,
        "failed_ratio": round(failed / attempted, 5) if attempted else 0.0,
    }


def wrk_command(
    wrk: str,
    url: str,
    bodies_file: Path,
    clients: int,
    seconds: float,
    expect: str | None = None,
    delay_ms: int = 0,
    timeout_s: int = 60,
) -> list[str]:
    return [
        wrk,
        "-t1",
        f"-c{clients}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        f"{timeout_s}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(bodies_file),
        expect or "-",
        str(delay_ms),
    ]


class WrkRun:
    """One wrk process; `result()` waits for it and returns its parsed JSON line."""

    def __init__(self, command: list[str], token: str | None):
        env = {**os.environ, "RESTAR_WRK_TOKEN": token or ""}
        self.command = command
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
        )

    def finished(self) -> bool:
        return self.process.poll() is not None

    def result(self, timeout: float) -> dict:
        stdout, stderr = self.process.communicate(timeout=timeout)
        if self.process.returncode != 0:
            raise RuntimeError(f"wrk failed ({self.process.returncode}): {stderr.strip() or stdout[-2000:]}")
        return parse_wrk_output(stdout)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_with_progress(seconds: float, desc: str, done: Callable[[], bool]) -> None:
    from tqdm import tqdm

    with tqdm(total=round(seconds), desc=desc, unit="s", leave=False, file=sys.stderr) as bar:
        start = time.monotonic()
        while not done():
            time.sleep(0.5)
            bar.n = min(round(seconds), int(time.monotonic() - start))
            bar.refresh()


def wrk_level(
    wrk: str, url: str, token: str | None, bodies_file: Path, clients: int, seconds: float, desc: str
) -> dict:
    """One wrk run of good bodies (answers must hold a label) with a progress bar: summarize_wrk's
    figures and the CPU seconds wrk itself spent."""
    cpu_client = children_cpu_s()
    run = WrkRun(wrk_command(wrk, url, bodies_file, clients, seconds, expect='"label"'), token)
    wait_with_progress(seconds, f"{desc} clients", run.finished)
    level = summarize_wrk(run.result(timeout=seconds + 120), clients)
    level["client_cpu_s"] = round(children_cpu_s() - cpu_client, 2)
    return level
