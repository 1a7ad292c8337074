"""What every benchmark repeats: the machine's facts, timing, latency summaries, the model's baselines,
and writing the JSON report and its PNG plots beside it.

Light to import: torch, pandas, MLflow and matplotlib load only when a function needs them, so that a
benchmark's --help (and its test of a missing tool) stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mlflow.pyfunc import PyFuncModel

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = REPO_ROOT / "scripts"
RESTAR = Path(sys.executable).with_name("restar")
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "TORCH_NUM_THREADS")
PNG_DPI = 120


# ---------------------------------------------------------------------------------------------------
# The machine


def hardware(**extra: object) -> dict[str, object]:
    """CPU model, core count, torch's thread count and versions (restar.batch.bench.hardware), and
    `extra`."""
    from restar.batch.bench import hardware as machine_facts

    return {**machine_facts(), **extra}


def thread_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The thread-count variables set in `environ` (default: this process's)."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in THREAD_ENV_VARS if name in environ}


# ---------------------------------------------------------------------------------------------------
# Timing


def ms_since(start: float) -> float:
    """Milliseconds of `time.perf_counter()` since `start`."""
    return (time.perf_counter() - start) * 1000.0


def timed_ms(call: Callable[[], object]) -> float:
    """Wall milliseconds of one call."""
    start = time.perf_counter()
    call()
    return ms_since(start)


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """The median wall milliseconds of `repeats` calls."""
    return float(np.median([timed_ms(call) for _ in range(repeats)]))


def latency_summary(timings_ms: Sequence[float], digits: int = 3) -> dict[str, float | None]:
    """Mean, p50 and p95 of `timings_ms`, rounded; None each when nothing was timed."""
    values = np.asarray(timings_ms, dtype=float)
    if not len(values):
        return {"latency_avg_ms": None, "latency_p50_ms": None, "latency_p95_ms": None}
    return {
        "latency_avg_ms": round(float(values.mean()), digits),
        "latency_p50_ms": round(float(np.percentile(values, 50)), digits),
        "latency_p95_ms": round(float(np.percentile(values, 95)), digits),
    }


def mean_words(texts: Iterable[str]) -> float:
    return round(float(np.mean([len(text.split()) for text in texts])), 1)


# ---------------------------------------------------------------------------------------------------
# The model's own speed, outside any server


def pyfunc_latency(
    model: PyFuncModel, texts: list[str], warmup: int, keys: Iterable[str], progress: bool = False
) -> dict[str, object]:
    """`keys` of restar.batch.bench.measure_latency's report for single-text pyfunc calls on `texts` (the
    first `warmup` untimed)."""
    import pandas as pd

    from restar.batch.bench import measure_latency

    result = measure_latency(
        lambda batch: model.predict(pd.DataFrame({"text": list(batch)})),
        texts,
        warmup=warmup,
        progress=progress,
    )
    return {key: result[key] for key in keys}


def predictor_run(
    texts: Sequence[str], model_uri: str, workdir: Path, progress: bool = False
) -> tuple[int, float]:
    """`restar predict`'s code path on `texts` (Parquet in and out, model load included): rows written
    and wall seconds."""
    import pandas as pd

    from restar.batch.predictor import predict_file

    source = workdir / "predict_in.parquet"
    pd.DataFrame({"text": list(texts)}).to_parquet(source, index=False)
    start = time.perf_counter()
    written = predict_file(source, workdir / "predict_out.parquet", model_uri, progress=progress)
    return written, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------
# Input files and a child process watched for memory


def write_sample(frame: pd.DataFrame, rows: int, path: Path, ids: bool = False, block: int = 100_000) -> None:
    """`rows` rows of `frame` sampled with replacement, every column as strings, led by an "id" column
    (the row's number) if `ids`; written a block at a time, so that this process stays small too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.string()) for name in (["id"] if ids else []) + list(frame.columns)])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, block):
            sample = frame.sample(n=min(block, rows - start), replace=True, random_state=start)
            if ids:
                sample.insert(0, "id", [str(i) for i in range(start, start + len(sample))])
            writer.write_table(pa.Table.from_pandas(sample, schema=schema, preserve_index=False))


def watch_rss(
    command: Sequence[str], rss_mb: Callable[[int], float], interval: float, quiet: bool = False
) -> tuple[float, list[tuple[float, float]]]:
    """Run `command` to its end (its stderr, and its stdout too if `quiet`, discarded), sampling
    `rss_mb(pid)` every `interval` seconds: its wall seconds and the (seconds since start, MiB)
    samples. Exits with a message if the command fails."""
    start = time.perf_counter()
    stdout = subprocess.DEVNULL if quiet else None
    process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL)
    samples = []
    while process.poll() is None:
        try:
            samples.append((time.perf_counter() - start, rss_mb(process.pid)))
        except psutil.NoSuchProcess:
            break
        time.sleep(interval)
    process.wait()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return seconds, samples


def process_rss_mb(pid: int) -> float:
    """Resident memory of one process (not its children), MiB."""
    return psutil.Process(pid).memory_info().rss / 2**20


# ---------------------------------------------------------------------------------------------------
# Command line and outputs


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the benchmark's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_torchserve_config(parser: argparse.ArgumentParser) -> None:
    """--config, the TorchServe config a benchmark serves with, the same in every benchmark."""
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO_ROOT / "torchserve/config.properties",
        help="TorchServe config (its listen addresses are replaced by free loopback ports).",
    )


def write_json(report: object, path: Path) -> Path:
    """`report` as indented JSON at `path` (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def png_beside(output: Path, suffix: str = "") -> Path:
    """The PNG named after a JSON output: load.json -> load.png, or load_soak.png with suffix "_soak"."""
    return output.with_name(f"{output.stem}{suffix}.png")


def save_png(figure: Figure, path: Path) -> Path:
    """`figure` as a PNG at `path` (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=PNG_DPI)
    return path


def announce(paths: Iterable[Path]) -> None:
    print("wrote " + ", ".join(str(path) for path in paths))


def client_axes(axes: Iterable[tuple[Axes, str, str]], xlabel: str = "concurrent clients") -> None:
    """Log-2 client-count x axes, each titled and labelled with its unit, with a small legend."""
    for ax, title, unit in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=7)
