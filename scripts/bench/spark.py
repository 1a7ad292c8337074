"""Throughput and peak memory of `restar predict`, local engine against Spark, on one Parquet file.

Writes --rows real eval reviews (sampled with replacement) to a Parquet file once, then runs
`restar predict --engine local` and `--engine spark --master local[2]` on it with the same model, each
in its own process, sampling the resident memory (RSS) of the whole process tree every 0.5 s: the
Python driver, Spark's JVM and its Python workers. rows/s is rows over wall time, start-up included.
Each run is merged into --out (JSON, keyed by engine, model and rows) and all runs are plotted.

    MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db nice -n 10 python scripts/bench_spark.py \\
        --rows 1000000 --model-uri models:/restar@baseline
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from bench.common import (
    REPO_ROOT,
    RESTAR,
    hardware,
    png_beside,
    save_png,
    watch_rss,
    write_json,
    write_sample,
)
from restar.labels import PROBABILITY_COLUMNS
from restar.serving.serve_local import process_tree_rss_mb

SPARK_SLOTS = 2


def write_input(data: Path, rows: int, path: Path) -> None:
    """`rows` texts with their titles where the data has them, sampled with replacement, with ids."""
    columns = [c for c in ("text", "title") if c in pq.ParquetFile(data).schema_arrow.names]
    write_sample(pd.read_parquet(data, columns=columns), rows, path, ids=True)


def engine_args(engine: str, master: str) -> list[str]:
    if engine == "local":
        return ["--engine", "local"]
    return ["--engine", "spark", "--master", master, "--conf", "spark.driver.memory=2g"]


def run(engine: str, master: str, model_uri: str, source: Path, target: Path) -> dict[str, object]:
    """One `restar predict` process; its wall time and the peak RSS of its process tree."""
    command = [str(RESTAR), "predict", "--input", str(source), "--output", str(target)]
    command += ["--model-uri", model_uri, *engine_args(engine, master)]
    seconds, samples = watch_rss(command, process_tree_rss_mb, 0.5, quiet=True)
    peak = max((mb for _, mb in samples), default=0.0)
    rows = pq.ParquetFile(target).metadata.num_rows
    return {
        "engine": engine if engine == "local" else f"spark {master}",
        "model": model_uri,
        "rows": rows,
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds, 1),
        "peak_rss_mb": round(peak, 1),
        "hours_per_million_rows": round(1e6 * seconds / rows / 3600, 2),  # at this rate
    }


def agreement(first: Path, second: Path) -> dict[str, float]:
    """How far the two engines' outputs are apart: same labels, same probabilities within float noise."""
    a, b = pd.read_parquet(first), pd.read_parquet(second)
    if len(a) != len(b) or not (a["id"].to_numpy() == b["id"].to_numpy()).all():
        raise SystemExit(f"{first} and {second}: rows differ in number or order")
    probs = list(PROBABILITY_COLUMNS)
    diff = np.nan_to_num(np.abs(a[probs].to_numpy() - b[probs].to_numpy()))
    return {"label_agreement": float((a["label"] == b["label"]).mean()), "max_prob_diff": float(diff.max())}


def merge(out: Path, runs: list[dict[str, object]], check: dict[str, object]) -> dict[str, object]:
    """Earlier results with these runs replacing any of the same engine, model and rows."""
    report = json.loads(out.read_text()) if out.is_file() else {"runs": [], "checks": []}
    key = ("engine", "model", "rows")
    fresh = {tuple(run[k] for k in key) for run in runs}
    report["runs"] = [r for r in report["runs"] if tuple(r[k] for k in key) not in fresh] + runs
    report["checks"] = [
        c for c in report["checks"] if (c["model"], c["rows"]) != (check["model"], check["rows"])
    ]
    report["checks"].append(check)
    report["hardware"] = hardware(
        spark_task_slots=SPARK_SLOTS, nice=os.nice(0), load_average_1m_at_end=round(os.getloadavg()[0], 2)
    )
    return report


def plot(report: dict[str, object]) -> Figure:
    runs = report["runs"]
    labels = [f"{r['engine']}\n{r['model'].split('@')[-1]}, {r['rows']:,} rows" for r in runs]
    figure = Figure(figsize=(max(6, 2.2 * len(runs)), 6.5))
    speed, memory = figure.subplots(2, 1, sharex=True)
    x = np.arange(len(runs))
    speed.bar(x, [r["rows_per_s"] for r in runs], color="tab:blue")
    speed.set_ylabel("rows/s (wall, start-up included)")
    speed.set_yscale("log")
    memory.bar(x, [r["peak_rss_mb"] for r in runs], color="tab:orange")
    memory.set_ylabel("peak RSS of the process tree (MiB)")
    memory.set_xticks(x, labels, fontsize=7)
    figure.suptitle(f"restar predict: local engine vs Spark ({report['hardware']['cpu_count']} cores)")
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows to score.")
    parser.add_argument("--model-uri", default="models:/restar@production", help="Model both engines use.")
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data/frozen/eval.parquet")
    parser.add_argument("--master", default=f"local[{SPARK_SLOTS}]", help="Spark master.")
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "restar_bench_spark", help="Scratch."
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results/bench/spark.json")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    source = args.work / f"reviews_{args.rows}.parquet"
    if not source.is_file():
        write_input(args.data, args.rows, source)
    runs, outputs = [], []
    for engine in ("local", "spark"):
        outputs.append(args.work / f"predictions_{engine}.parquet")
        runs.append(run(engine, args.master, args.model_uri, source, outputs[-1]))
        print(json.dumps(runs[-1]), flush=True)
    check = {"model": args.model_uri, "rows": args.rows, **agreement(*outputs)}
    print(json.dumps(check), flush=True)
    report = merge(args.out, runs, check)
    write_json(report, args.out)
    save_png(plot(report), png_beside(args.out))


if __name__ == "__main__":
    main()
