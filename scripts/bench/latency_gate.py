"""Does the latency gate measure the model or the host? The gate's benchmark, run twice in one go:
on the host as it is, then with a CPU-bound busy loop on every core (bounded: each loop ends by
itself after --busy-seconds, and is stopped as soon as the measurement is done).

For each run: the CPU-time figure the gate judges, the wall time a caller waited, the spread of the
trials, the host's load, and the gate's verdict. The two verdicts must agree; the wall time need not.

    python scripts/bench_latency_gate.py --model-uri outputs/dvc_run/model --data data/raw/eval.parquet \\
        --output results/bench/latency_gate.json
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from matplotlib.figure import Figure

from bench.common import REPO_ROOT, announce, argument_parser, hardware, png_beside, save_png, write_json
from promotion.gates import LatencyGate, LatencyParams

BUSY_LOOP = (
    "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"
)


@contextmanager
def busy_cores(seconds: float, count: int | None = None) -> Iterator[int]:
    """`count` (default: every core) processes spinning on the CPU for at most `seconds`."""
    count = count or os.cpu_count() or 1
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(seconds)]) for _ in range(count)]
    try:
        yield count
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def measure(model_uri: str, params: LatencyParams) -> dict:
    report = LatencyGate.run_benchmark(model_uri, params)
    result = LatencyGate(params).judge(report, params)
    return {
        "verdict": "undecided" if result.inconclusive else "pass" if result.passed else "fail",
        "cpu_avg_ms": report["latency_cpu_median_trial_avg_ms"],
        "cpu_trial_avg_ms": report["latency_cpu_trial_avg_ms"],
        "cpu_spread": report["latency_cpu_spread"],
        "wall_avg_ms": report["latency_avg_ms"],
        "wall_p95_ms": report["latency_p95_ms"],
        "load_avg_1m": report["load_avg_1m"],
        "detail": result.detail,
        "bench": report,  # what `restar bench --json` printed: the gate can judge it again
    }


def plot(report: dict) -> Figure:
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    runs = list(report["runs"])
    width = 0.38
    for offset, (key, label) in enumerate(
        (("wall_avg_ms", "wall time"), ("cpu_avg_ms", "CPU time (judged)"))
    ):
        values = [report["runs"][run][key] for run in runs]
        ax.bar([i + (offset - 0.5) * width for i in range(len(runs))], values, width=width, label=label)
    ax.axhline(report["params"]["max_avg_ms"], color="#b3261e", linestyle="--", label="gate: max avg")
    ax.set_xticks(range(len(runs)), [f"{run}\n({report['runs'][run]['verdict']})" for run in runs])
    ax.set_ylabel("ms per batch-1 call (avg)")
    ax.legend(fontsize=8)
    fig.suptitle(
        f"Latency gate, quiet vs. busy host: {report['hardware']['cpu']}, "
        f"{report['params']['threads']} model thread(s)",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def print_runs(report: dict) -> None:
    for name, run in report["runs"].items():
        print(
            f"{name:>14}: {run['verdict']:>9}  CPU avg {run['cpu_avg_ms']:.1f} ms "
            f"(spread {run['cpu_spread']:.0%})  wall avg {run['wall_avg_ms']:.1f} ms  "
            f"load {run['load_avg_1m']}"
        )
    ratios = report["busy_over_quiet"]
    print(f"busy / as is: CPU x{ratios['cpu_avg']}, wall x{ratios['wall_avg']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argument_parser(__doc__)
    parser.add_argument("--model-uri", required=True, help="Model folder or MLflow model URI.")
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data/raw/eval.parquet")
    parser.add_argument("--calls", type=int, default=40, help="Timed texts per trial.")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-avg-ms", type=float, default=200.0, help="The gate's threshold.")
    parser.add_argument("--busy-seconds", type=float, default=600, help="Upper bound on each busy loop.")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs/bench/latency_gate.json")
    args = parser.parse_args(argv)

    params = LatencyParams(
        max_avg_ms=args.max_avg_ms,
        max_p95_ms=max(400.0, args.max_avg_ms * 2),
        calls=args.calls,
        warmup=args.warmup,
        trials=args.trials,
        threads=args.threads,
        data=args.data,
    )
    runs = {"as is": measure(args.model_uri, params)}
    with busy_cores(args.busy_seconds) as count:
        runs[f"{count} busy loops"] = measure(args.model_uri, params)
    quiet, busy = runs.values()
    report = {
        "model_uri": args.model_uri,
        "params": params.model_dump(mode="json"),
        "hardware": hardware(model_threads=args.threads),
        "runs": runs,
        "same_verdict": quiet["verdict"] == busy["verdict"],
        "busy_over_quiet": {
            "cpu_avg": round(busy["cpu_avg_ms"] / quiet["cpu_avg_ms"], 3),
            "wall_avg": round(busy["wall_avg_ms"] / quiet["wall_avg_ms"], 3),
        },
    }
    print_runs(report)
    announce([write_json(report, args.output), save_png(plot(report), png_beside(args.output))])
    return report


if __name__ == "__main__":
    main()
