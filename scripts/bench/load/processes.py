"""Server process trees: each process's role, memory and CPU time, sampled while a phase runs."""

from __future__ import annotations

import statistics
import threading
import time

import psutil

from bench.common import thread_env


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


def process_threads(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for process in process_tree(pid):
        try:
            out[process_role(process)] = out.get(process_role(process), 0) + process.num_threads()
        except psutil.NoSuchProcess:
            continue
    return out


def worker_pids(pid: int) -> set[int]:
    return {p.pid for p in process_tree(pid) if process_role(p) == "worker"}


def worker_thread_env(pid: int) -> dict[str, str]:
    """The thread-count variables TorchServe's Python worker runs with."""
    for process in process_tree(pid):
        if process_role(process) == "worker":
            try:
                return thread_env(process.environ())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return {}
    return {}
