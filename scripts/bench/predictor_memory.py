"""Peak memory of the offline predictor on a large file: is it flat in the number of rows?

Builds Parquet files of N real eval texts (sampled with replacement) for each N in --rows, runs
`restar predict` on each in its own process and samples that process's resident memory (RSS) every
0.2 s. With streaming in chunks, peak RSS should not grow with N. Writes JSON and a PNG.

The TF-IDF baseline makes a million rows take about a minute here; the transformer runs the same
streaming code at a few hundred rows/s, so its memory curve has the same shape, only slower.

    python scripts/bench_predictor_memory.py --model outputs/baseline/model --rows 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from restar.bench import hardware

REPO_ROOT = Path(__file__).resolve().parents[1]
RESTAR = Path(sys.executable).with_name("restar")


def write_input(texts: pd.Series, rows: int, path: Path, block: int = 100_000) -> None:
    """`rows` texts sampled from `texts`, written a block at a time (this process stays small too)."""
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        for start in range(0, rows, block):
            size = min(block, rows - start)
            sample = texts.sample(n=size, replace=True, random_state=start).to_numpy()
            writer.write_table(pa.table({"text": pa.array(sample, pa.string())}))


def run_predictor(model: Path, source: Path, target: Path) -> dict[str, object]:
    command = [str(RESTAR), "predict", "--input", str(source), "--output", str(target)]
    start = time.perf_counter()
    process = subprocess.Popen([*command, "--model-uri", str(model)], stderr=subprocess.DEVNULL)
    watched = psutil.Process(process.pid)
    samples = []
    while process.poll() is None:
        try:
            samples.append((time.perf_counter() - start, watched.memory_info().rss / 2**20))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    seconds = time.perf_counter() - start
    rows = pq.ParquetFile(target).metadata.num_rows
    return {
        "rows": rows,
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds, 1),
        "peak_rss_mb": round(max(rss for _, rss in samples), 1),
        "samples": [(round(t, 2), round(rss, 1)) for t, rss in samples],
    }


def plot(results: list[dict], path: Path) -> None:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for result in results:
        times, rss = zip(*result["samples"], strict=True)
        ax.plot(times, rss, label=f"{result['rows']:,} rows (peak {result['peak_rss_mb']:.0f} MiB)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("predictor RSS (MiB)")
    ax.set_title("restar predict memory while streaming")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "outputs/baseline/model")
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data/frozen/eval.parquet")
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs/bench/predictor_memory.json")
    args = parser.parse_args()

    texts = pd.read_parquet(args.data, columns=["text"])["text"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            source = Path(tmp) / f"in_{rows}.parquet"
            write_input(texts, rows, source)
            result = run_predictor(args.model, source, Path(tmp) / f"out_{rows}.parquet")
            results.append(result)
            print(
                f"{rows:>9,} rows  {result['seconds']:>7.1f} s  {result['rows_per_s']:>8.0f} rows/s  "
                f"peak RSS {result['peak_rss_mb']:.0f} MiB",
                flush=True,
            )
    report = {"model": str(args.model), "hardware": hardware(), "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
