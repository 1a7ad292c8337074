"""Load benchmark of the production model's endpoints: TorchServe and, for comparison, `mlflow models serve`.

Both servers serve the same registry version (`models:/restar@production` by default) and get the
same real eval texts, one review per request. In one run:

  1. baselines, before any server starts: the pyfunc's batch-1 p50 (in this process) and the offline
     predictor's reviews/s (`restar predict`'s code path, model load included);
  2. per server, wrk at 1 / 8 / 32 / 64 keep-alive connections for --seconds each: req/s,
     p50 / p95 / p99, failed ratio, the server's resident memory (its whole process tree, sampled
     every second) and CPU time per process role;
  3. TorchServe only: the 32-client run again with ~5% hostile requests (malformed JSON, deep
     nesting, bad UTF-8, oversized bodies, ...) sent by separate connections, so that every good
     response and every hostile one is counted exactly; the target is 0 failed good requests and
     no 5xx for any hostile request;
  4. TorchServe only: a soak at 16 clients for --soak-seconds with RSS sampled every 5 s (growth =
     mean of the last minute against the first minute after warm-up; target < 10%);
  5. TorchServe only: the Python worker SIGKILLed once under 32 clients; recovery time (kill to the
     first answer after the outage) and the failed ratio over the requests in flight during recovery
     (target < 1%), with a threaded Python client that timestamps every request.

TorchServe is reached through the nginx gateway in front of it (torchserve/nginx.conf, what clients
outside reach, and what resends a dead worker's batch), or directly with --via direct.

The efficiency targets are ratios inside the run: endpoint p50 at 1 client <= 1.3 x the pyfunc's
batch-1 p50, endpoint req/s at 32 clients >= 0.7 x the predictor's reviews/s. A shared host's speed
drifts between minutes, so they are taken as the median of --pair-rounds back-to-back pairs (a
baseline, then at once the endpoint level it is compared with), with TorchServe idle during the
baselines. Writes JSON, a PNG of latency and throughput against clients, and PNGs of the soak and
the worker kill beside it.

The load generator is wrk from Debian (`apt-get install wrk`): one thread, event-driven, a few
percent of one core at these rates (its CPU time is recorded per run), loopback only. Lua script:
scripts/wrk/post_bodies.lua.

    python scripts/bench_load.py --output results/bench/load.json
    python scripts/bench_load.py --seconds 5 --levels 1 8 32 --soak-seconds 30 --kill-seconds 20 \\
        --output outputs/bench/load_quick.json      # a quick look, not a measurement
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import requests
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "post_bodies.lua"
WRK_MARKER = "RESTAR_WRK_RESULT "

TARGET_P50_RATIO = 1.3  # endpoint p50 at 1 client <= this x pyfunc batch-1 p50
TARGET_RPS_RATIO = 0.7  # endpoint req/s at 32 clients >= this x predictor reviews/s
TARGET_SOAK_GROWTH = 0.10
TARGET_RECOVERY_FAILED = 0.01

WRK_INSTALL_HINT = (
    "wrk not found: install it from Debian (`apt-get install -y wrk`, as root) or pass --wrk PATH"
)


# ---------------------------------------------------------------------------------------------------
# Request bodies


def torchserve_body(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def mlflow_body(text: str) -> bytes:
    return json.dumps({"dataframe_records": [{"text": text}]}).encode()


def hostile_bodies() -> dict[str, bytes]:
    """Bodies the endpoint must refuse with a 4xx (the request contract in docs/serving.md), never a 5xx."""
    return {
        "lone_surrogate": b'{"text": "\\ud800"}',
        "deep_array": b"[" * 100_000,
        "nested_objects": b'{"a": ' * 5_000 + b"1" + b"}" * 5_000,
        "invalid_utf8": b'{"text": "caf\xc3\x28 \xff\xfe"}',
        "nul_byte": b'{"text": "a\x00b"}',
        "huge_integer": b'{"text": ' + b"9" * 100_000 + b"}",
        "huge_float": b'{"text": 1e999999}',
        "nan": b'{"text": NaN}',
        "empty_body": b"",
        "non_object": b'["a list", "not an object"]',
        "texts_with_null": b'{"texts": ["fine", null]}',
        "too_many_texts": json.dumps({"texts": ["fine"] * 65}).encode(),
        "oversized_text": json.dumps({"text": "word " * 5_000}).encode(),
        "missing_text": b'{"title": "no text"}',
        "over_1_mib": b'{"text": "' + b"x" * (1 << 20) + b'"}',
    }


def encode_bodies(bodies: Iterable[bytes]) -> bytes:
    """The bodies file post_bodies.lua reads: "<byte length>\\n<bytes>" per body, any bytes allowed."""
    return b"".join(b"%d\n%s" % (len(body), body) for body in bodies)


def decode_bodies(data: bytes) -> list[bytes]:
    """Inverse of encode_bodies (what the Lua script does), for tests."""
    bodies, pos = [], 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        length = int(data[pos:newline])
        bodies.append(data[newline + 1 : newline + 1 + length])
        pos = newline + 1 + length
    return bodies


# ---------------------------------------------------------------------------------------------------
# wrk


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


# ---------------------------------------------------------------------------------------------------
# Server process trees: memory and CPU


def process_role(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline())
        name = process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if "model_service_worker" in command:
        return "worker"
    if name == "java" or "org.pytorch.serve" in command:
        return "frontend"
    if "uvicorn" in command:
        return "uvicorn"
    if "mlflow" in command and "serve" in command:
        return "mlflow-cli"
    if "torchserve" in command:
        return "launcher"
    return name


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss_by_role(pid: int) -> dict[str, float]:
    roles: dict[str, float] = {}
    for process in process_tree(pid):
        try:
            mb = process.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
        role = process_role(process)
        roles[role] = roles.get(role, 0.0) + mb
    return roles


def cpu_by_pid(pid: int) -> dict[int, tuple[str, float]]:
    out = {}
    for process in process_tree(pid):
        try:
            times = process.cpu_times()
            out[process.pid] = (process_role(process), times.user + times.system)
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role between two cpu_by_pid snapshots (a process born in between counts whole)."""
    roles: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        spent = seconds - before[pid][1] if pid in before else seconds
        roles[role] = round(roles.get(role, 0.0) + spent, 2)
    return roles


class TreeSampler:
    """Samples the resident memory of a process tree every `interval` seconds in a thread, and its
    CPU time at start and stop."""

    def __init__(self, pid: int, interval: float = 1.0):
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self.start, rss_by_role(self.pid)))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self.start = time.monotonic()
        self.cpu_before = cpu_by_pid(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = cpu_delta(self.cpu_before, cpu_by_pid(self.pid))

    def summary(self) -> dict:
        totals = [sum(roles.values()) for _, roles in self.samples]
        roles = sorted({role for _, sample in self.samples for role in sample})
        return {
            "rss_peak_mb": round(max(totals), 1) if totals else None,
            "rss_mean_mb": round(statistics.fmean(totals), 1) if totals else None,
            "rss_peak_mb_by_role": {
                role: round(max(sample.get(role, 0.0) for _, sample in self.samples), 1) for role in roles
            },
            "server_cpu_s": self.cpu,
        }


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


# ---------------------------------------------------------------------------------------------------
# TorchServe's own view: Prometheus counters and the per-request lines of its log


PROMETHEUS_COUNTERS = (
    "ts_inference_requests_total",
    "ts_inference_latency_microseconds",
    "ts_queue_latency_microseconds",
)


def parse_prometheus(text: str) -> dict[str, float]:
    """Sums of the TorchServe counters we use, over all label sets."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.match(r"^([A-Za-z_:][\w:]*)(\{.*\})?\s+([-+\d.eEinfNa]+)$", line.strip())
        if match and match[1] in PROMETHEUS_COUNTERS:
            values[match[1]] = values.get(match[1], 0.0) + float(match[3])
    return values


def prometheus_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean per-request inference and queue latency TorchServe's frontend measured between two scrapes."""
    requests_ = after.get("ts_inference_requests_total", 0) - before.get("ts_inference_requests_total", 0)
    if requests_ <= 0:
        return {"requests": 0, "mean_inference_latency_ms": None, "mean_queue_latency_ms": None}

    def per_request_ms(name: str) -> float:
        return round((after.get(name, 0) - before.get(name, 0)) / requests_ / 1000, 2)

    return {
        "requests": int(requests_),
        "mean_inference_latency_ms": per_request_ms("ts_inference_latency_microseconds"),
        "mean_queue_latency_ms": per_request_ms("ts_queue_latency_microseconds"),
    }


LOG_PATTERNS = {
    # per request (RestJob, DEBUG): time from arrival to the worker taking it, and in the worker
    "waiting_ms": (re.compile(r"Waiting time ns: (\d+), Backend time ns: (\d+)"), 1),
    "backend_ms": (re.compile(r"Waiting time ns: (\d+), Backend time ns: (\d+)"), 2),
    # per batch, measured inside the Python worker
    "handler_ms": (re.compile(r"\[METRICS\]HandlerTime\.Milliseconds:([\d.]+)"), 1),
    "prediction_ms": (re.compile(r"\[METRICS\]PredictionTime\.Milliseconds:([\d.]+)"), 1),
}


def parse_torchserve_log(text: str) -> dict:
    """Medians of TorchServe's per-request and per-batch timings in a slice of logs/ts_log.log.

    waiting: request arrival -> a worker takes its batch (includes maxBatchDelay); backend: the
    frontend sends the batch -> it has the answer (IPC + the Python worker); prediction: the Python
    side's time for the batch (decode + handler + encode); handler: the handler alone. Each line is
    logged twice by TorchServe's default log4j2 setup, which leaves medians and ratios unchanged."""
    found: dict[str, list[float]] = {}
    for name, (pattern, group) in LOG_PATTERNS.items():
        values = [float(m.group(group)) for m in pattern.finditer(text)]
        if name in ("waiting_ms", "backend_ms"):
            values = [v / 1e6 for v in values]
        found[name] = values
    out: dict[str, float | int | None] = {}
    for name, values in found.items():
        out[f"{name}_p50"] = round(float(np.median(values)), 2) if values else None
    batches = len(found["handler_ms"])
    out["mean_batch_size"] = round(len(found["waiting_ms"]) / batches, 2) if batches else None
    return out


class LogSlice:
    """The lines a file gains between __enter__ and read()."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> LogSlice:
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        return self

    def __exit__(self, *exc) -> None:
        pass

    def read(self) -> str:
        return self._read_from(self.offset)

    def read_new(self) -> str:
        """What the file gained since the last read_new() (since __enter__ at first)."""
        position = getattr(self, "position", self.offset)
        text = self._read_from(position)
        self.position = position + len(text.encode("utf-8", errors="surrogateescape"))
        return text

    def _read_from(self, offset: int) -> str:
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="surrogateescape")


# ---------------------------------------------------------------------------------------------------
# Worker kill: per-request timestamps from a threaded client


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


def worker_pids(pid: int) -> set[int]:
    return {p.pid for p in process_tree(pid) if process_role(p) == "worker"}


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


# ---------------------------------------------------------------------------------------------------
# Baselines (run before any server, in this process)


def pyfunc_baseline(model_uri: str, texts: list[str], calls: int, warmup: int) -> dict:
    import pandas as pd

    from restar.bench import measure_latency
    from restar.predictor import load_pyfunc

    model = load_pyfunc(model_uri)
    result = measure_latency(
        lambda batch: model.predict(pd.DataFrame({"text": list(batch)})),
        texts[: calls + warmup],
        warmup=warmup,
        progress=True,
    )
    keys = ("latency_avg_ms", "latency_p50_ms", "latency_p95_ms", "calls", "mean_words")
    return {key: result[key] for key in keys}


def predictor_baseline(model_uri: str, texts: list[str], rows: int, workdir: Path) -> dict:
    """`restar predict`'s code path on `rows` texts (Parquet in and out), model load included as the
    product runs it; the load alone is timed separately for the steady-state rate."""
    import pandas as pd

    from restar.predictor import load_predict_fn, predict_file

    source = workdir / "predict_in.parquet"
    pd.DataFrame({"text": [texts[i % len(texts)] for i in range(rows)]}).to_parquet(source, index=False)
    start = time.perf_counter()
    load_predict_fn(model_uri)
    load_s = time.perf_counter() - start
    gc.collect()
    start = time.perf_counter()
    written = predict_file(source, workdir / "predict_out.parquet", model_uri, progress=True)
    seconds = time.perf_counter() - start
    gc.collect()
    return {
        "rows": written,
        "seconds": round(seconds, 2),
        "model_load_s": round(load_s, 2),
        "reviews_per_s": round(written / seconds, 1),
        "reviews_per_s_after_load": round(written / max(seconds - load_s, 1e-9), 1),
    }


def paired_rounds(
    model_uri: str, texts: list[str], url: str, token: str, good_file: Path, workdir: Path, args
) -> dict:
    """The two efficiency ratios in `args.pair_rounds` back-to-back pairs, each baseline followed at
    once by the endpoint level it is compared with: pyfunc batch-1 p50 then 1 client, the predictor
    then 32 clients. The machine's speed drifts by 10-20% over minutes (shared hosts), so a ratio of
    figures taken minutes apart carries that drift; the median of the pairs does not. TorchServe
    stays up, idle, while the baselines run."""
    rounds = []
    for index in range(args.pair_rounds):
        pyfunc = pyfunc_baseline(model_uri, texts, args.pair_pyfunc_calls, args.pyfunc_warmup)
        one = WrkRun(wrk_command(args.wrk, url, good_file, 1, args.pair_seconds, expect='"label"'), token)
        one_level = summarize_wrk(one.result(timeout=args.pair_seconds + 120), 1)
        predictor = predictor_baseline(model_uri, texts, args.pair_predictor_rows, workdir)
        many = WrkRun(wrk_command(args.wrk, url, good_file, 32, args.pair_seconds, expect='"label"'), token)
        many_level = summarize_wrk(many.result(timeout=args.pair_seconds + 120), 32)
        pair = {
            "pyfunc_p50_ms": pyfunc["latency_p50_ms"],
            "endpoint_1_client_p50_ms": one_level["latency_p50_ms"],
            "predictor_reviews_per_s": predictor["reviews_per_s"],
            "endpoint_32_clients_rps": many_level["ok_rps"],
            "failed": one_level["failed"] + many_level["failed"],
        }
        pair["p50_ratio"] = round(pair["endpoint_1_client_p50_ms"] / pair["pyfunc_p50_ms"], 3)
        pair["rps_ratio"] = round(pair["endpoint_32_clients_rps"] / pair["predictor_reviews_per_s"], 3)
        rounds.append(pair)
        print(
            f"    pair {index + 1}/{args.pair_rounds}: p50 {pair['endpoint_1_client_p50_ms']:.1f} / "
            f"{pair['pyfunc_p50_ms']:.1f} ms = {pair['p50_ratio']:.2f}; req/s "
            f"{pair['endpoint_32_clients_rps']:.1f} / {pair['predictor_reviews_per_s']:.1f} = "
            f"{pair['rps_ratio']:.3f}",
            flush=True,
        )
    return {
        "seconds_per_level": args.pair_seconds,
        "predictor_rows": args.pair_predictor_rows,
        "pyfunc_calls": args.pair_pyfunc_calls,
        "rounds": rounds,
        "p50_ratio_median": round(statistics.median(pair["p50_ratio"] for pair in rounds), 3),
        "rps_ratio_median": round(statistics.median(pair["rps_ratio"] for pair in rounds), 3),
    }


# ---------------------------------------------------------------------------------------------------
# Servers


def archive_info(mar: Path) -> dict:
    """Registry version, backend and batching settings packed in a TorchServe archive."""
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        registry = json.loads(archive.read("registry.json")) if "registry.json" in names else {}
        metadata = json.loads(archive.read("restar.json")) if "restar.json" in names else {}
        config = yaml.safe_load(archive.read("model-config.yaml")) if "model-config.yaml" in names else {}
    return {
        "archive": str(mar),
        "registry_version": registry.get("version"),
        "backend": metadata.get("backend"),
        "base_model": metadata.get("base_model"),
        "max_length": metadata.get("max_length"),
        "model_config": config,
    }


def stale_settings(mar: Path, shipped: Path = REPO_ROOT / "torchserve" / "model-config.yaml") -> str | None:
    """Why an archive given with --archive does not serve the shipped batching settings, or None."""
    packed = archive_info(mar)["model_config"]
    expected = yaml.safe_load(shipped.read_text())
    if packed == expected:
        return None
    return f"{mar} packs {packed}, not {shipped.name} ({expected}); re-export it to measure those"


def thread_env() -> dict[str, str]:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "TORCH_NUM_THREADS")
    return {name: os.environ[name] for name in names if name in os.environ}


def process_threads(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for process in process_tree(pid):
        try:
            out[process_role(process)] = out.get(process_role(process), 0) + process.num_threads()
        except psutil.NoSuchProcess:
            continue
    return out


@contextmanager
def nothing():
    yield None


@contextmanager
def patched_environ(values: dict[str, str]):
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


def run_levels(
    name: str,
    url: str,
    token: str | None,
    expect: str,
    bodies_file: Path,
    root_pid: int,
    levels: list[int],
    seconds: float,
    args: argparse.Namespace,
    log: Path | None = None,
    metrics_url: str | None = None,
) -> list[dict]:
    results = []
    for clients in levels:
        prometheus_before = scrape(metrics_url)
        cpu_client = children_cpu_s()
        with LogSlice(log) if log else nothing() as log_slice, TreeSampler(root_pid, 1.0) as sampler:
            run = WrkRun(wrk_command(args.wrk, url, bodies_file, clients, seconds, expect=expect), token)
            wait_with_progress(seconds, f"{name} {clients:>2} clients", run.finished)
            raw = run.result(timeout=seconds + 120)
        level = summarize_wrk(raw, clients)
        level["client_cpu_s"] = round(children_cpu_s() - cpu_client, 2)
        level.update(sampler.summary())
        if metrics_url:
            level["torchserve_metrics"] = prometheus_delta(prometheus_before, scrape(metrics_url))
        if log_slice is not None:
            level["torchserve_log"] = parse_torchserve_log(log_slice.read())
        results.append(level)
        print_level(name, level)
        time.sleep(args.pause)
    return results


def scrape(metrics_url: str | None) -> dict[str, float]:
    if not metrics_url:
        return {}
    try:
        return parse_prometheus(requests.get(f"{metrics_url}/metrics", timeout=10).text)
    except requests.RequestException:
        return {}


def print_level(name: str, level: dict) -> None:
    print(
        f"{name:>10} {level['clients']:>3} clients  {level['ok_rps']:>7.1f} req/s  "
        f"p50 {level['latency_p50_ms']:>7.1f}  p95 {level['latency_p95_ms']:>7.1f}  "
        f"p99 {level['latency_p99_ms']:>7.1f} ms  failed {level['failed']}/{level['requests']} "
        f"({level['failed_ratio']:.2%})  rss peak {level['rss_peak_mb']} MiB  "
        f"wrk cpu {level['client_cpu_s']} s",
        flush=True,
    )


def poison_run(
    server,
    endpoint: str,
    good_file: Path,
    hostile_file: Path,
    clients: int,
    share: float,
    seconds: float,
    clean_level: dict | None,
    args: argparse.Namespace,
) -> dict:
    """`clients` connections of which enough send hostile bodies for ~`share` of all requests.

    Good and hostile bodies go through two wrk processes (wrk's Lua cannot pair a response with the
    connection that asked), so each side's statuses are exact. Hostile connections are paced with a
    per-request delay computed from the clean run's mean latency at the same concurrency, and never
    over a tenth of the run: on a loaded machine that latency is long, and wrk waits the delay out
    before a connection's first request too (a longer one meant no hostile request at all)."""
    hostile_clients = max(1, math.ceil(clients * share))
    good_clients = clients - hostile_clients
    mean_ms = (clean_level or {}).get("latency_mean_ms") or 0.0
    # per-connection rates: good 1/L, hostile 1/(L+d); solve hostile/(all) = share for d
    factor = hostile_clients * (1 - share) / (good_clients * share)
    delay_ms = min(max(0, round(mean_ms * (factor - 1))), round(seconds * 1000 / 10))
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
    hostile_sent = hostile_level["requests"] + sum(hostile_level["socket_errors"].values())
    good_sent = good_level["requests"] + sum(good_level["socket_errors"].values())
    result = {
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
    clean_note = (
        f" (clean run: p50 {clean_level['latency_p50_ms']:.1f} p99 {clean_level['latency_p99_ms']:.1f})"
        if clean_level
        else ""
    )
    print(
        f"    poison {clients} clients ({hostile_clients} hostile, "
        f"{result['hostile_share']:.1%} of requests): "
        f"good {good_level['ok_rps']:.1f} req/s p50 {good_level['latency_p50_ms']:.1f} "
        f"p99 {good_level['latency_p99_ms']:.1f} ms{clean_note}, "
        f"failed good {good_level['failed']}/{good_sent}; "
        f"hostile statuses {hostile_level['statuses']}, socket errors {hostile_level['socket_errors']}",
        flush=True,
    )
    return result


def probe_hostile(server, endpoint: str) -> dict[str, dict]:
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


def soak_run(
    server, endpoint: str, good_file: Path, clients: int, seconds: float, args: argparse.Namespace
) -> dict:
    url = f"{endpoint}/predictions/restar"
    cpu_client = children_cpu_s()
    with TreeSampler(server.process.pid, args.soak_interval) as sampler:
        run = WrkRun(
            wrk_command(args.wrk, url, good_file, clients, seconds, expect='"label"'),
            server.keys["inference"],
        )
        wait_with_progress(seconds, f"soak {clients} clients", run.finished)
        raw = run.result(timeout=seconds + 120)
    level = summarize_wrk(raw, clients)
    level["client_cpu_s"] = round(children_cpu_s() - cpu_client, 2)
    warmup = min(args.soak_warmup, seconds / 10)
    window = min(60.0, seconds / 5)
    totals = [(t, sum(roles.values())) for t, roles in sampler.samples]
    growth = soak_growth(totals, warmup, window)
    by_role = {}
    for role in sorted({r for _, roles in sampler.samples for r in roles}):
        series = [(t, roles.get(role, 0.0)) for t, roles in sampler.samples]
        try:
            by_role[role] = soak_growth(series, warmup, window)
        except (ValueError, ZeroDivisionError):
            continue
    return {
        **level,
        **sampler.summary(),
        "rss_growth": growth,
        "rss_growth_by_role": by_role,
        "rss_samples": [
            [round(t, 1), {k: round(v, 1) for k, v in roles.items()}] for t, roles in sampler.samples
        ],
    }


def bench_torchserve(args, archive: Path, texts: list[str], workdir: Path, report: dict) -> dict:
    from restar.serve_local import gateway, torchserve

    good_file = workdir / "torchserve_good.bin"
    good_file.write_bytes(encode_bodies(torchserve_body(text) for text in texts))
    hostile_file = workdir / "torchserve_hostile.bin"
    hostile_file.write_bytes(encode_bodies(hostile_bodies().values()))
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
        gateway(server.inference_url, workdir / "gateway") if args.via == "gateway" else nothing() as gw,
    ):
        log = workdir / "torchserve" / "logs" / "ts_log.log"
        endpoint = gw.url if gw is not None else server.inference_url
        url = f"{endpoint}/predictions/restar"
        token = server.keys["inference"]
        warm = WrkRun(wrk_command(args.wrk, url, good_file, 8, args.warmup_seconds, expect='"label"'), token)
        warm.result(timeout=args.warmup_seconds + 120)
        time.sleep(args.pause)
        out["threads"] = process_threads(server.process.pid)
        out["worker_env"] = worker_thread_env(server.process.pid)
        out["levels"] = run_levels(
            "torchserve",
            url,
            token,
            '"label"',
            good_file,
            server.process.pid,
            args.levels,
            args.seconds,
            args,
            log=log,
            metrics_url=server.metrics_url,
        )
        if args.pair_rounds:
            out["paired"] = paired_rounds(args.model_uri, texts, url, token, good_file, workdir, args)
            time.sleep(args.pause)
        if not args.skip_poison:
            out["hostile_probe"] = probe_hostile(server, endpoint)
            clean = next((lv for lv in out["levels"] if lv["clients"] == args.poison_clients), None)
            out["poison"] = poison_run(
                server,
                endpoint,
                good_file,
                hostile_file,
                args.poison_clients,
                args.hostile_share,
                args.seconds,
                clean,
                args,
            )
            time.sleep(args.pause)
        if not args.skip_soak:
            out["soak"] = soak_run(server, endpoint, good_file, args.soak_clients, args.soak_seconds, args)
            growth = out["soak"]["rss_growth"]["growth_ratio"]
            print(
                f"      soak {args.soak_clients} clients {args.soak_seconds:g} s: RSS "
                f"{out['soak']['rss_growth']['first_window_mean_mb']} -> "
                f"{out['soak']['rss_growth']['last_window_mean_mb']} MiB ({growth:+.1%}), "
                f"failed {out['soak']['failed']}/{out['soak']['requests']}",
                flush=True,
            )
            time.sleep(args.pause)
        if not args.skip_kill:
            bodies = [torchserve_body(text) for text in texts]
            kill, records = kill_phase(
                server, endpoint, bodies, args.kill_clients, args.kill_seconds, args.kill_seconds / 3
            )
            out["worker_kill"] = kill
            out["worker_kill"]["timeline"] = [[round(s, 3), round(e, 3), st] for s, e, st in records]
            print(
                f"    worker kill at {args.kill_clients} clients: back in {kill.get('recovery_s')} s "
                f"(new process after {kill.get('worker_respawned_s')} s), failed during recovery "
                f"{kill.get('recovery_window_failed')}/{kill.get('recovery_window_requests')}, "
                f"over the run {kill['failed']}/{kill['requests']} ({kill['failed_ratio']:.2%}), "
                f"statuses {kill['failed_statuses']}",
                flush=True,
            )
    return out


def worker_thread_env(pid: int) -> dict:
    for process in process_tree(pid):
        if process_role(process) == "worker":
            try:
                environ = process.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return {}
            names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "TORCH_NUM_THREADS")
            return {name: environ[name] for name in names if name in environ}
    return {}


def bench_mlflow(args, texts: list[str], workdir: Path) -> dict:
    from restar.serve_local import mlflow_serve

    good_file = workdir / "mlflow_good.bin"
    good_file.write_bytes(encode_bodies(mlflow_body(text) for text in texts))
    out: dict = {
        "server": "mlflow",
        "command": f"mlflow models serve -m {args.model_uri} --env-manager local -w {args.mlflow_workers}",
        "workers": args.mlflow_workers,
    }
    with mlflow_serve(args.model_uri, workdir / "mlflow", workers=args.mlflow_workers) as server:
        url = f"{server.url}/invocations"
        warm = WrkRun(wrk_command(args.wrk, url, good_file, 8, args.warmup_seconds, expect='"label"'), None)
        warm.result(timeout=args.warmup_seconds + 120)
        time.sleep(args.pause)
        out["threads"] = process_threads(server.process.pid)
        out["levels"] = run_levels(
            "mlflow", url, None, '"label"', good_file, server.process.pid, args.levels, args.seconds, args
        )
    return out


# ---------------------------------------------------------------------------------------------------
# Report


def level_at(server: dict | None, clients: int) -> dict | None:
    if not server:
        return None
    return next((level for level in server.get("levels", []) if level["clients"] == clients), None)


def targets(report: dict) -> dict:
    """The efficiency, poison, soak and recovery targets, each with its measured value and verdict."""
    out: dict = {}
    torchserve = report["servers"].get("torchserve")
    baselines = report.get("baselines", {})
    one, many = level_at(torchserve, 1), level_at(torchserve, 32)
    pyfunc = baselines.get("pyfunc_batch1")
    predictor = baselines.get("predictor")
    # Medians of the paired rounds when there are any; else the levels against the opening baselines.
    paired = (torchserve or {}).get("paired")
    p50_ratio = rps_ratio = None
    if paired:
        p50_ratio, rps_ratio = paired["p50_ratio_median"], paired["rps_ratio_median"]
    else:
        if one and pyfunc:
            p50_ratio = one["latency_p50_ms"] / pyfunc["latency_p50_ms"]
        if many and predictor:
            rps_ratio = many["ok_rps"] / predictor["reviews_per_s"]
    measured = "median of paired rounds" if paired else "levels against the opening baselines"
    if p50_ratio is not None:
        out["p50_1_client_over_pyfunc_p50"] = {
            "value": round(p50_ratio, 3),
            "target": f"<= {TARGET_P50_RATIO}",
            "pass": p50_ratio <= TARGET_P50_RATIO,
            "measured": measured,
        }
    if rps_ratio is not None:
        out["rps_32_clients_over_predictor"] = {
            "value": round(rps_ratio, 3),
            "target": f">= {TARGET_RPS_RATIO}",
            "pass": rps_ratio >= TARGET_RPS_RATIO,
            "measured": measured,
        }
    if torchserve and "poison" in torchserve:
        poison = torchserve["poison"]
        out["poison_failed_good_requests"] = {
            "value": poison["failed_good_requests"],
            "target": "== 0",
            "pass": poison["failed_good_requests"] == 0 and poison["hostile_5xx"] == 0,
            "hostile_5xx": poison["hostile_5xx"],
        }
    if torchserve and "soak" in torchserve:
        growth = torchserve["soak"]["rss_growth"]["growth_ratio"]
        out["soak_rss_growth"] = {
            "value": growth,
            "target": f"< {TARGET_SOAK_GROWTH}",
            "pass": growth < TARGET_SOAK_GROWTH,
        }
    if torchserve and "worker_kill" in torchserve:
        kill = torchserve["worker_kill"]
        recovered = bool(kill["recovered"])
        # The whole kill run (kill and recovery inside it), and strictly the requests in flight
        # between the kill and the first answer after the outage.
        out["worker_kill_failed_ratio_run"] = {
            "value": kill["failed_ratio"],
            "target": f"< {TARGET_RECOVERY_FAILED}",
            "pass": recovered and kill["failed_ratio"] < TARGET_RECOVERY_FAILED,
            "recovery_s": kill.get("recovery_s"),
        }
        window = kill.get("recovery_window_failed_ratio")
        out["worker_kill_failed_ratio_recovery_window"] = {
            "value": window,
            "target": f"< {TARGET_RECOVERY_FAILED}",
            "pass": recovered and window is not None and window < TARGET_RECOVERY_FAILED,
            "failed": kill.get("recovery_window_failed"),
            "requests": kill.get("recovery_window_requests"),
        }
    return out


def print_summary(report: dict) -> None:
    print(
        f"\n{'server':>10} {'clients':>7} {'req/s':>7} {'p50':>7} {'p95':>7} {'p99':>7} "
        f"{'failed':>8} {'RSS MiB':>8}"
    )
    for name, server in report["servers"].items():
        for level in server.get("levels", []):
            print(
                f"{name:>10} {level['clients']:>7} {level['ok_rps']:>7.1f} {level['latency_p50_ms']:>7.1f} "
                f"{level['latency_p95_ms']:>7.1f} {level['latency_p99_ms']:>7.1f} "
                f"{level['failed_ratio']:>8.2%} {level['rss_peak_mb']:>8}"
            )
    baselines = report.get("baselines", {})
    if baselines:
        pyfunc, predictor = baselines.get("pyfunc_batch1", {}), baselines.get("predictor", {})
        print(
            f"baselines: pyfunc batch-1 p50 {pyfunc.get('latency_p50_ms')} ms, "
            f"predictor {predictor.get('reviews_per_s')} reviews/s"
        )
    for name, target in report["targets"].items():
        verdict = "PASS" if target["pass"] else "FAIL"
        print(f"{verdict}  {name}: {target['value']} (target {target['target']})")


def plot_levels(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    latency_ax, throughput_ax = fig.subplots(1, 2)
    colors = {"torchserve": "tab:blue", "mlflow": "tab:orange"}
    for name, server in report["servers"].items():
        levels = server.get("levels") or []
        if not levels:
            continue
        clients = [level["clients"] for level in levels]
        color = colors.get(name)
        for key, style, marker in (("p50", "-", "o"), ("p95", "--", "x"), ("p99", ":", "^")):
            latency_ax.plot(
                clients,
                [level[f"latency_{key}_ms"] for level in levels],
                linestyle=style,
                marker=marker,
                color=color,
                label=f"{name} {key}",
            )
        throughput_ax.plot(
            clients, [level["ok_rps"] for level in levels], marker="o", color=color, label=name
        )
    baselines = report.get("baselines", {})
    if "pyfunc_batch1" in baselines:
        p50 = baselines["pyfunc_batch1"]["latency_p50_ms"]
        latency_ax.axhline(p50, color="gray", linewidth=0.8, label=f"pyfunc batch-1 p50 {p50:.1f} ms")
        latency_ax.axhline(
            TARGET_P50_RATIO * p50,
            color="gray",
            linestyle="--",
            linewidth=0.8,
            label=f"target at 1 client ({TARGET_P50_RATIO} x)",
        )
    if "predictor" in baselines:
        rps = baselines["predictor"]["reviews_per_s"]
        throughput_ax.axhline(
            rps, color="gray", linewidth=0.8, label=f"offline predictor {rps:.0f} reviews/s"
        )
        throughput_ax.axhline(
            TARGET_RPS_RATIO * rps,
            color="gray",
            linestyle="--",
            linewidth=0.8,
            label=f"target at 32 clients ({TARGET_RPS_RATIO} x)",
        )
    for ax, title, unit in ((latency_ax, "Latency", "ms"), (throughput_ax, "Throughput (2xx)", "requests/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (wrk connections)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=7)
    latency_ax.set_yscale("log")
    hw = report["hardware"]
    fig.suptitle(
        f"{report['model']['uri']} (v{report['model']['version']}, {report['model']['base_model']}); "
        f"{hw['cpu']}, {hw['cpu_count']} cores; {report['seconds_per_level']:g} s per level",
        fontsize=8,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def plot_soak(soak: dict, path: Path) -> None:
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
    fig.savefig(path, dpi=120)


def plot_kill(kill: dict, path: Path) -> None:
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
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "outputs/bench/load.json",
        help="Result JSON; PNGs with the same stem are written beside it.",
    )
    parser.add_argument(
        "--model-uri", default="models:/restar@production", help="Registry URI both servers serve."
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: MLFLOW_TRACKING_URI, else the repository's sqlite:///mlflow.db).",
    )
    parser.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="Serve this .mar instead of exporting --model-uri afresh (its version must match).",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO_ROOT / "torchserve/config.properties",
        help="TorchServe config (listen addresses are moved to free loopback ports).",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO_ROOT / "data/frozen/eval.parquet",
        help="Parquet file of real review texts.",
    )
    parser.add_argument("--texts", type=int, default=2000, help="Distinct texts sent in rotation.")
    parser.add_argument(
        "--servers", nargs="+", choices=["torchserve", "mlflow"], default=["torchserve", "mlflow"]
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64], help="Concurrent clients.")
    parser.add_argument(
        "--seconds", type=float, default=60, help="Seconds per level (and for the poison run)."
    )
    parser.add_argument("--warmup-seconds", type=float, default=5, help="Untimed wrk warm-up per server.")
    parser.add_argument("--pause", type=float, default=2, help="Seconds between runs, for queues to drain.")
    parser.add_argument("--timeout", type=int, default=60, help="wrk's per-request timeout in seconds.")
    parser.add_argument("--poison-clients", type=int, default=32)
    parser.add_argument("--hostile-share", type=float, default=0.05)
    parser.add_argument("--skip-poison", action="store_true")
    parser.add_argument("--soak-seconds", type=float, default=600)
    parser.add_argument("--soak-clients", type=int, default=16)
    parser.add_argument(
        "--soak-interval", type=float, default=5, help="Seconds between RSS samples in the soak."
    )
    parser.add_argument(
        "--soak-warmup", type=float, default=30, help="Seconds before the soak's first window."
    )
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--kill-clients", type=int, default=32)
    parser.add_argument(
        "--kill-seconds", type=float, default=60, help="Length of the worker-kill run (kill at 1/3)."
    )
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument(
        "--pair-rounds",
        type=int,
        default=5,
        help="Rounds of baseline-then-endpoint pairs for the efficiency ratios (0: compare the levels "
        "with the opening baselines only).",
    )
    parser.add_argument("--pair-seconds", type=float, default=10, help="wrk seconds per paired level.")
    # The predictor reads every text, as the 32-client level cycles through them all in ~10 s; the
    # pyfunc's calls cover about the texts one client reaches in 10 s (they are sent in order).
    parser.add_argument("--pair-predictor-rows", type=int, default=2000)
    parser.add_argument("--pair-pyfunc-calls", type=int, default=500)
    parser.add_argument(
        "--via",
        choices=["gateway", "direct"],
        default="gateway",
        help="Reach TorchServe through the nginx gateway (what clients get; default) or directly.",
    )
    parser.add_argument("--pyfunc-calls", type=int, default=200)
    parser.add_argument("--pyfunc-warmup", type=int, default=20)
    parser.add_argument("--predictor-rows", type=int, default=2000)
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument(
        "--mlflow-workers", type=int, default=1, help="uvicorn workers for mlflow models serve."
    )
    parser.add_argument(
        "--ts-settings",
        default=None,
        metavar="WORKERSxBATCHxDELAY",
        help="Try other TorchServe batching settings: repack the archive's model-config.yaml with "
        "minWorkers=maxWorkers=WORKERS, batchSize=BATCH, maxBatchDelay=DELAY ms (e.g. 1x8x1). "
        "Default: the archive as exported.",
    )
    parser.add_argument(
        "--worker-env",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="Environment for TorchServe and its workers, e.g. OMP_NUM_THREADS=1.",
    )
    parser.add_argument("--wrk", default="wrk", help="wrk executable.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    wrk = shutil.which(args.wrk)
    if wrk is None:
        raise SystemExit(WRK_INSTALL_HINT)
    args.wrk = wrk
    args.config = args.config.resolve()
    default_store = f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
    tracking = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_store
    os.environ["MLFLOW_TRACKING_URI"] = tracking  # the servers and the export inherit it

    import mlflow

    from restar.bench import hardware, sample_texts
    from restar.export_torchserve import export_torchserve, resolve

    mlflow.set_tracking_uri(tracking)
    version = resolve(args.model_uri)
    texts = [text for text in sample_texts(args.data, args.texts) if len(text) <= 20_000]
    report: dict = {
        "model": {
            "uri": args.model_uri,
            "version": version.version,
            "run_id": version.run_id,
            "base_model": version.tags.get("restar.model"),
            "config": version.tags.get("restar.config"),
            "tracking_uri": tracking,
        },
        "data": str(args.data),
        "texts": len(texts),
        "mean_words": round(statistics.fmean(len(text.split()) for text in texts), 1),
        "hardware": hardware(),
        "thread_env": thread_env(),
        "load_generator": {
            "tool": subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0],
            "threads": 1,
            "script": str(LUA_SCRIPT.relative_to(REPO_ROOT)),
            "timeout_s": args.timeout,
            "note": "wrk runs on the same cores as the servers; its CPU time is recorded per run",
        },
        "seconds_per_level": args.seconds,
        "levels": args.levels,
        "baselines": {},
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="restar-load-") as tmp:
        work = Path(tmp)
        if not args.skip_baselines:
            print("baselines (no server running) ...", flush=True)
            pyfunc = pyfunc_baseline(args.model_uri, texts, args.pyfunc_calls, args.pyfunc_warmup)
            report["baselines"]["pyfunc_batch1"] = pyfunc
            print(f"  pyfunc batch-1 p50 {pyfunc['latency_p50_ms']} ms, {pyfunc['calls']} calls", flush=True)
            predictor = predictor_baseline(args.model_uri, texts, args.predictor_rows, work)
            report["baselines"]["predictor"] = predictor
            print(
                f"  predictor {predictor['reviews_per_s']} reviews/s on {predictor['rows']} rows "
                f"({predictor['reviews_per_s_after_load']} after the {predictor['model_load_s']} s load)",
                flush=True,
            )
        if "torchserve" in args.servers:
            if args.archive:
                archive = args.archive.resolve()
                if (stale := stale_settings(archive)) and not args.ts_settings:
                    print(f"note: {stale}", flush=True)
            else:
                exported = export_torchserve(
                    args.model_uri,
                    work / "export" / "artifacts",
                    work / "export" / "model-store",
                    REPO_ROOT / "torchserve" / "handler.py",
                    REPO_ROOT / "torchserve" / "model-config.yaml",
                )
                archive = Path(exported["archive"])
            if args.ts_settings:
                from bench_endpoint import archive_variant

                workers, batch_size, delay_ms = (int(part) for part in args.ts_settings.split("x"))
                archive = archive_variant(archive, work / "variant", workers, batch_size, delay_ms)
            packed = archive_info(archive).get("registry_version")
            if packed != version.version:
                raise SystemExit(
                    f"{archive} holds version {packed}, {args.model_uri} is version {version.version}"
                )
            report["servers"]["torchserve"] = bench_torchserve(args, archive, texts, work, report)
        if "mlflow" in args.servers:
            report["servers"]["mlflow"] = bench_mlflow(args, texts, work)
    report["targets"] = targets(report)
    print_summary(report)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot_levels(report, args.output.with_suffix(".png"))
    written = [args.output, args.output.with_suffix(".png")]
    torchserve = report["servers"].get("torchserve", {})
    if "soak" in torchserve:
        plot_soak(torchserve["soak"], args.output.with_name(f"{args.output.stem}_soak.png"))
        written.append(args.output.with_name(f"{args.output.stem}_soak.png"))
    if "worker_kill" in torchserve:
        plot_kill(torchserve["worker_kill"], args.output.with_name(f"{args.output.stem}_kill.png"))
        written.append(args.output.with_name(f"{args.output.stem}_kill.png"))
    print("wrote " + ", ".join(str(path) for path in written))
    return report


if __name__ == "__main__":
    # A SIGTERM unwinds like Ctrl-C: the servers and wrk processes started here are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    main()
