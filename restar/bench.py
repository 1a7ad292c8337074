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

from restar.predictor import PredictFn


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
    predict_fn: PredictFn, texts: list[str], warmup: int = 10, progress: bool = True
) -> dict[str, object]:
    """Milliseconds per single-text call: the first `warmup` texts are untimed, the rest are timed."""
    if len(texts) <= warmup:
        raise ValueError(f"need more than {warmup} texts to time anything")
    for text in texts[:warmup]:
        predict_fn([text])
    timings = []
    for text in tqdm(texts[warmup:], desc="latency", unit="call", disable=not progress):
        start = time.perf_counter()
        predict_fn([text])
        timings.append((time.perf_counter() - start) * 1000.0)
    return {
        **latency_summary(timings),
        "calls": len(timings),
        "warmup_calls": warmup,
        "batch_size": 1,
        "mean_words": round(float(np.mean([len(t.split()) for t in texts[warmup:]])), 1),
        "hardware": hardware(),
    }
