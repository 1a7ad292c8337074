"""Batch-size-1 latency of a model on real eval texts, with the hardware recorded beside the numbers."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from restar.batch.predictor import PredictFn


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def sample_texts(data_path: Path, n: int, seed: int = 0) -> list[str]:
    """`n` non-empty real texts from an eval split, the same ones for the same seed."""
    frame = pd.read_parquet(data_path, columns=["text"])
    texts = frame["text"][frame["text"].str.strip().str.len() > 0]
    if texts.empty:
        raise ValueError(f"{data_path}: no texts to benchmark with")
    return texts.sample(n=n, replace=len(texts) < n, random_state=seed).tolist()


def latency_summary(timings_ms: list[float]) -> dict[str, float]:
    values = np.asarray(timings_ms)
    return {
        "latency_avg_ms": round(float(values.mean()), 3),
        "latency_p50_ms": round(float(np.percentile(values, 50)), 3),
        "latency_p95_ms": round(float(np.percentile(values, 95)), 3),
    }


def measure_latency(
    predict_fn: PredictFn, texts: list[str], warmup: int = 10, progress: bool = True, trials: int = 1
) -> dict[str, object]:
    """Milliseconds per single-text call, as wall time and as this process's CPU time: the first
    `warmup` texts are untimed, the rest are timed `trials` times over (the same texts in each trial).

    Wall time is what a caller waits; CPU time is what the model costs, and barely moves when other
    processes compete for the cores (they lengthen the wait, not the work). With one compute thread,
    the CPU time of a call is the wall time it would take on a core of its own. Each trial's mean CPU
    time is kept, so a caller can tell a steady measurement from a noisy one (`latency_cpu_spread`).
    """
    if len(texts) <= warmup:
        raise ValueError(f"need more than {warmup} texts to time anything")
    for text in texts[:warmup]:
        predict_fn([text])
    timed = texts[warmup:]
    load_before = os.getloadavg()[0]
    wall_ms, cpu_ms = [], []
    calls = [text for _ in range(trials) for text in timed]
    for text in tqdm(
        calls, desc="latency", unit="call", disable=None if progress else True
    ):  # None: a tty only
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        predict_fn([text])
        cpu_ms.append((time.process_time() - cpu_start) * 1000.0)
        wall_ms.append((time.perf_counter() - wall_start) * 1000.0)
    return {
        **latency_summary(wall_ms),
        **cpu_summary(cpu_ms, trials),
        "calls": len(wall_ms),
        "trials": trials,
        "warmup_calls": warmup,
        "batch_size": 1,
        "mean_words": round(float(np.mean([len(t.split()) for t in timed])), 1),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        "hardware": hardware(),
    }


def cpu_summary(cpu_ms: list[float], trials: int) -> dict[str, object]:
    """CPU milliseconds per call: the mean, p95, each trial's mean, their median, and their spread
    ((max - min) / median: 0 when every trial agrees)."""
    trial_means = [float(np.mean(chunk)) for chunk in np.array_split(np.asarray(cpu_ms), trials)]
    median = float(np.median(trial_means))
    spread = (max(trial_means) - min(trial_means)) / median if median > 0 else 0.0
    return {
        "latency_cpu_avg_ms": round(float(np.mean(cpu_ms)), 3),
        "latency_cpu_p95_ms": round(float(np.percentile(cpu_ms, 95)), 3),
        "latency_cpu_trial_avg_ms": [round(value, 3) for value in trial_means],
        "latency_cpu_median_trial_avg_ms": round(median, 3),
        "latency_cpu_spread": round(spread, 4),
    }
