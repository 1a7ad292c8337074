"""Peak memory of the offline predictor on a large file: is it flat in the number of rows?

Builds Parquet files of N real eval texts (sampled with replacement) for each N in --rows, runs
`restar predict` on each in its own process and samples that process's resident memory (RSS) every
0.2 s. With streaming in chunks, peak RSS should not grow with N. Writes JSON and a PNG.

The TF-IDF baseline makes a million rows take about a minute here; the transformer runs the same
streaming code at a few hundred rows/s, so its memory curve has the same shape, only slower.

    python scripts/bench_predictor_memory.py --model outputs/baseline/model --rows 10000 100000 1000000
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from bench.common import (
    REPO_ROOT,
    RESTAR,
    announce,
    argument_parser,
    hardware,
    png_beside,
    process_rss_mb,
    save_png,
    watch_rss,
    write_json,
    write_sample,
)


def run_predictor(model: Path, source: Path, target: Path) -> dict[str, object]:
    command = [str(RESTAR), "predict", "--input", str(source), "--output", str(target)]
    seconds, samples = watch_rss([*command, "--model-uri", str(model)], process_rss_mb, 0.2)
    rows = pq.ParquetFile(target).metadata.num_rows
    return {
        "rows": rows,
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds, 1),
        "peak_rss_mb": round(max(rss for _, rss in samples), 1),
        "samples": [(round(t, 2), round(rss, 1)) for t, rss in samples],
    }


def plot(results: list[dict]) -> Figure:
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
    return fig


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "outputs/baseline/model")
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data/frozen/eval.parquet")
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs/bench/predictor_memory.json")
    args = parser.parse_args()

    texts = pd.read_parquet(args.data, columns=["text"])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            source = Path(tmp) / f"in_{rows}.parquet"
            write_sample(texts, rows, source)
            result = run_predictor(args.model, source, Path(tmp) / f"out_{rows}.parquet")
            results.append(result)
            print(
                f"{rows:>9,} rows  {result['seconds']:>7.1f} s  {result['rows_per_s']:>8.0f} rows/s  "
                f"peak RSS {result['peak_rss_mb']:.0f} MiB",
                flush=True,
            )
    report = {"model": str(args.model), "hardware": hardware(), "results": results}
    announce([write_json(report, args.output), save_png(plot(results), png_beside(args.output))])


if __name__ == "__main__":
    main()
