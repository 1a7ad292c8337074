"""TorchServe's own view of a run: its Prometheus counters and the per-request lines of its log."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import requests

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


def scrape(metrics_url: str | None) -> dict[str, float]:
    if not metrics_url:
        return {}
    try:
        return parse_prometheus(requests.get(f"{metrics_url}/metrics", timeout=10).text)
    except requests.RequestException:
        return {}


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
