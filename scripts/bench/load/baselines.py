"""Phase 1, the baselines: the pyfunc at batch 1 and the offline predictor, in this process, with no
server busy; and the paired rounds that set each against its endpoint level at once."""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import predictor_run, pyfunc_latency
from bench.load.wrk import wrk_level


def pyfunc_baseline(model_uri: str, texts: list[str], calls: int, warmup: int) -> dict:
    """Batch-1 latency of the model's pyfunc on the first `calls` texts after `warmup` untimed ones."""
    from restar.batch.predictor import load_pyfunc

    keys = ("latency_avg_ms", "latency_p50_ms", "latency_p95_ms", "calls", "mean_words")
    return pyfunc_latency(load_pyfunc(model_uri), texts[: calls + warmup], warmup, keys, progress=True)


def predictor_baseline(model_uri: str, texts: list[str], rows: int, workdir: Path) -> dict:
    """`restar predict`'s code path on `rows` texts (Parquet in and out), model load included as the
    product runs it; the load alone is timed separately for the steady-state rate."""
    from restar.batch.predictor import load_predict_fn

    start = time.perf_counter()
    load_predict_fn(model_uri)
    load_s = time.perf_counter() - start
    gc.collect()
    written, seconds = predictor_run([texts[i % len(texts)] for i in range(rows)], model_uri, workdir, True)
    gc.collect()
    return {
        "rows": written,
        "seconds": round(seconds, 2),
        "model_load_s": round(load_s, 2),
        "reviews_per_s": round(written / seconds, 1),
        "reviews_per_s_after_load": round(written / max(seconds - load_s, 1e-9), 1),
    }


def paired_rounds(
    model_uri: str,
    texts: list[str],
    url: str,
    token: str,
    good_file: Path,
    workdir: Path,
    args: argparse.Namespace,
) -> dict:
    """The two efficiency ratios in `args.pair_rounds` back-to-back pairs, each baseline followed at
    once by the endpoint level it is compared with: pyfunc batch-1 p50 then 1 client, the predictor
    then 32 clients. The machine's speed drifts by 10-20% over minutes (shared hosts), so a ratio of
    figures taken minutes apart carries that drift; the median of the pairs does not. TorchServe
    stays up, idle, while the baselines run."""

    def endpoint_level(clients: int) -> dict:
        return wrk_level(args.wrk, url, token, good_file, clients, args.pair_seconds, f"pair {clients:>2}")

    rounds = []
    for index in range(args.pair_rounds):
        rounds.append(paired_round(model_uri, texts, workdir, args, endpoint_level))
        print_pair(rounds[-1], index, args.pair_rounds)
    return {
        "seconds_per_level": args.pair_seconds,
        "predictor_rows": args.pair_predictor_rows,
        "pyfunc_calls": args.pair_pyfunc_calls,
        "rounds": rounds,
        "p50_ratio_median": round(statistics.median(pair["p50_ratio"] for pair in rounds), 3),
        "rps_ratio_median": round(statistics.median(pair["rps_ratio"] for pair in rounds), 3),
    }


def paired_round(
    model_uri: str,
    texts: list[str],
    workdir: Path,
    args: argparse.Namespace,
    endpoint_level: Callable[[int], dict],
) -> dict:
    """One pair of each: the pyfunc then the endpoint at 1 client, the predictor then 32 clients."""
    pyfunc = pyfunc_baseline(model_uri, texts, args.pair_pyfunc_calls, args.pyfunc_warmup)
    one_level = endpoint_level(1)
    predictor = predictor_baseline(model_uri, texts, args.pair_predictor_rows, workdir)
    many_level = endpoint_level(32)
    pair = {
        "pyfunc_p50_ms": pyfunc["latency_p50_ms"],
        "endpoint_1_client_p50_ms": one_level["latency_p50_ms"],
        "predictor_reviews_per_s": predictor["reviews_per_s"],
        "endpoint_32_clients_rps": many_level["ok_rps"],
        "failed": one_level["failed"] + many_level["failed"],
    }
    pair["p50_ratio"] = round(pair["endpoint_1_client_p50_ms"] / pair["pyfunc_p50_ms"], 3)
    pair["rps_ratio"] = round(pair["endpoint_32_clients_rps"] / pair["predictor_reviews_per_s"], 3)
    return pair


def print_pair(pair: dict, index: int, rounds: int) -> None:
    print(
        f"    pair {index + 1}/{rounds}: p50 {pair['endpoint_1_client_p50_ms']:.1f} / "
        f"{pair['pyfunc_p50_ms']:.1f} ms = {pair['p50_ratio']:.2f}; req/s "
        f"{pair['endpoint_32_clients_rps']:.1f} / {pair['predictor_reviews_per_s']:.1f} = "
        f"{pair['rps_ratio']:.3f}",
        flush=True,
    )
