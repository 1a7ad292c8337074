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
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import (
    REPO_ROOT,
    add_torchserve_config,
    announce,
    argument_parser,
    hardware,
    mean_words,
    png_beside,
    save_png,
    thread_env,
    write_json,
)
from bench.load.archive import torchserve_archive
from bench.load.baselines import predictor_baseline, pyfunc_baseline
from bench.load.kill import plot_kill
from bench.load.report import plot_levels, print_summary, targets
from bench.load.servers import bench_mlflow, bench_torchserve
from bench.load.soak import plot_soak
from bench.load.wrk import find_wrk, load_generator

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
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
    add_torchserve_config(parser)
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
    """Run the benchmark as the command line says; write and return its report."""
    args = parse_args(argv)
    args.wrk = find_wrk(args.wrk)
    args.config = args.config.resolve()
    default_store = f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
    tracking = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_store
    os.environ["MLFLOW_TRACKING_URI"] = tracking  # the servers and the export inherit it

    import mlflow

    from restar.batch.bench import sample_texts
    from restar.serving.export_torchserve import resolve

    mlflow.set_tracking_uri(tracking)
    version = resolve(args.model_uri)
    texts = [text for text in sample_texts(args.data, args.texts) if len(text) <= 20_000]
    report = report_header(args, version, tracking, texts)
    with tempfile.TemporaryDirectory(prefix="restar-load-") as tmp:
        work = Path(tmp)
        if not args.skip_baselines:
            report["baselines"] = baselines(args, texts, work)
        if "torchserve" in args.servers:
            archive = torchserve_archive(args, version.version, work)
            report["servers"]["torchserve"] = bench_torchserve(args, archive, texts, work)
        if "mlflow" in args.servers:
            report["servers"]["mlflow"] = bench_mlflow(args, texts, work)
    report["targets"] = targets(report)
    print_summary(report)
    announce(write_outputs(report, args.output))
    return report


def report_header(args: argparse.Namespace, version: ModelVersion, tracking: str, texts: list[str]) -> dict:
    """What the run measures, with what and where: the report before any measurement."""
    return {
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
        "mean_words": mean_words(texts),
        "hardware": hardware(),
        "thread_env": thread_env(),
        "load_generator": load_generator(args.wrk, args.timeout),
        "seconds_per_level": args.seconds,
        "levels": args.levels,
        "baselines": {},
        "servers": {},
    }


def baselines(args: argparse.Namespace, texts: list[str], workdir: Path) -> dict:
    """Phase 1, before any server starts: the pyfunc's batch-1 latency and the predictor's rate."""
    print("baselines (no server running) ...", flush=True)
    pyfunc = pyfunc_baseline(args.model_uri, texts, args.pyfunc_calls, args.pyfunc_warmup)
    print(f"  pyfunc batch-1 p50 {pyfunc['latency_p50_ms']} ms, {pyfunc['calls']} calls", flush=True)
    predictor = predictor_baseline(args.model_uri, texts, args.predictor_rows, workdir)
    print(
        f"  predictor {predictor['reviews_per_s']} reviews/s on {predictor['rows']} rows "
        f"({predictor['reviews_per_s_after_load']} after the {predictor['model_load_s']} s load)",
        flush=True,
    )
    return {"pyfunc_batch1": pyfunc, "predictor": predictor}


def write_outputs(report: dict, output: Path) -> list[Path]:
    """The JSON report, the levels' PNG beside it, and the soak's and the kill's where they ran."""
    written = [write_json(report, output), save_png(plot_levels(report), png_beside(output))]
    torchserve = report["servers"].get("torchserve", {})
    if "soak" in torchserve:
        written.append(save_png(plot_soak(torchserve["soak"]), png_beside(output, "_soak")))
    if "worker_kill" in torchserve:
        written.append(save_png(plot_kill(torchserve["worker_kill"]), png_beside(output, "_kill")))
    return written
