"""Benchmark the TorchServe endpoint: batch-1 latency and throughput at 1, 8 and 32 concurrent clients.

Serves the exported archive (torchserve/model-store/restar.mar) with the repository's config on
free loopback ports, once per worker/batching variant, and sends real eval texts. Writes JSON and a
PNG; prints a table. The load generator runs on the same 2 cores as the server: numbers are an
upper bound on what a separate client machine would see.

    python scripts/bench_endpoint.py --variants 1x1 1x8 2x8 --output outputs/bench/endpoint.json
"""

from __future__ import annotations

import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from bench.common import (
    REPO_ROOT,
    add_torchserve_config,
    announce,
    argument_parser,
    client_axes,
    hardware,
    latency_summary,
    mean_words,
    ms_since,
    png_beside,
    save_png,
    write_json,
)
from restar.batch.bench import sample_texts
from restar.serving.serve_local import LocalTorchServe, torchserve


def archive_variant(source: Path, target_dir: Path, workers: int, batch_size: int, delay_ms: int) -> Path:
    """A copy of the archive whose packed model-config.yaml has the given workers and batch size."""
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / source.name
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename == "model-config.yaml":
                config = yaml.safe_load(data)
                config.update(
                    minWorkers=workers, maxWorkers=workers, batchSize=batch_size, maxBatchDelay=delay_ms
                )
                data = yaml.safe_dump(config).encode()
            new.writestr(item, data)
    return target


def run_level(server: LocalTorchServe, texts: list[str], clients: int, per_client: int) -> dict[str, float]:
    """`clients` threads each send `per_client` single-text requests back to back."""
    key = server.keys["inference"]

    def client(index: int) -> list[tuple[float, bool]]:
        results = []
        for n in range(per_client):
            text = texts[(index * per_client + n) % len(texts)]
            start = time.perf_counter()
            try:
                ok = server.predict({"text": text}, key=key, timeout=120).status_code == 200
            except OSError:
                ok = False
            results.append((ms_since(start), ok))
        return results

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = [r for chunk in pool.map(client, range(clients)) for r in chunk]
    wall = time.perf_counter() - start
    failed = sum(1 for _, ok in results if not ok)
    return {
        "clients": clients,
        "requests": len(results),
        "failed": failed,
        "failed_ratio": round(failed / len(results), 4),
        "throughput_rps": round((len(results) - failed) / wall, 1),
        **latency_summary([ms for ms, ok in results if ok], digits=2),
    }


def bench_variant(
    archive: Path, config: Path, texts: list[str], clients: list[int], requests_per_level: int, workdir: Path
) -> dict[str, object]:
    with torchserve(archive.parent, config, workdir) as server:
        for text in texts[:20]:  # warm-up
            server.predict({"text": text})
        levels = [run_level(server, texts, c, max(requests_per_level // c, 5)) for c in clients]
        memory = server.memory_rss_mb()
    return {"levels": levels, "server_rss_mb": round(memory, 1)}


def plot(results: list[dict]) -> Figure:
    fig = Figure(figsize=(10, 4))
    latency_ax, throughput_ax = fig.subplots(1, 2)
    for result in results:
        clients = [level["clients"] for level in result["levels"]]
        for key, marker, style in (("p50", "o", "-"), ("p95", "x", "--")):
            latency_ax.plot(
                clients,
                [level[f"latency_{key}_ms"] for level in result["levels"]],
                marker=marker,
                linestyle=style,
                label=f"{result['variant']} {key}",
            )
        throughput_ax.plot(
            clients,
            [level["throughput_rps"] for level in result["levels"]],
            marker="o",
            label=result["variant"],
        )
    client_axes(
        (
            (latency_ax, "Latency (workers x batchSize)", "ms"),
            (throughput_ax, "Throughput (workers x batchSize)", "requests/s"),
        )
    )
    fig.tight_layout()
    return fig


def parse_variant(variant: str) -> tuple[int, int, int]:
    """WORKERSxBATCHSIZE[xMAXBATCHDELAYMS] as three numbers, the delay 5 ms unless given."""
    workers, batch_size, delay_ms = (int(part) for part in f"{variant}x5".split("x")[:3])
    return workers, batch_size, delay_ms


def print_levels(name: str, result: dict) -> None:
    """One line per client level of a bench_variant result."""
    for level in result["levels"]:
        print(
            f"{name:>5}  clients={level['clients']:>2}  p50={level['latency_p50_ms']} ms  "
            f"p95={level['latency_p95_ms']} ms  {level['throughput_rps']} req/s  "
            f"failed={level['failed']}/{level['requests']}  rss={result['server_rss_mb']} MiB"
        )


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--archive",
        type=Path,
        default=REPO_ROOT / "torchserve/model-store/restar.mar",
        help="Archive written by `restar export-torchserve`.",
    )
    add_torchserve_config(parser)
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO_ROOT / "data/raw/eval.parquet",
        help="Parquet file of real texts to send.",
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="Concurrency levels.")
    parser.add_argument("--requests", type=int, default=320, help="Requests per concurrency level.")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["1x8"],
        help="WORKERSxBATCHSIZE[xMAXBATCHDELAYMS] settings to compare (delay 5 ms unless given), "
        "e.g. 1x1 1x8 1x8x1.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "outputs/bench/endpoint.json",
        help="Result JSON (a PNG with the same name is written beside it).",
    )
    args = parser.parse_args()

    texts = sample_texts(args.data, 500)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            workers, batch_size, delay_ms = parse_variant(variant)
            archive = archive_variant(
                args.archive, Path(tmp) / variant / "store", workers, batch_size, delay_ms
            )
            result = bench_variant(
                archive, args.config, texts, args.clients, args.requests, Path(tmp) / variant / "run"
            )
            results.append(
                {
                    "variant": variant,
                    "workers": workers,
                    "batch_size": batch_size,
                    "max_batch_delay_ms": delay_ms,
                    **result,
                }
            )
            print_levels(variant, result)
    report = {
        "archive": str(args.archive),
        "mean_words": mean_words(texts),
        "hardware": hardware(),
        "note": "load generator shares the machine's cores with the server",
        "results": results,
    }
    announce([write_json(report, args.output), save_png(plot(results), png_beside(args.output))])


if __name__ == "__main__":
    main()
