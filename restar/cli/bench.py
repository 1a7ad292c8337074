"""`restar bench`: batch-size-1 latency of a model on real eval texts."""

from __future__ import annotations

import json
from pathlib import Path

import click

from restar.cli.errors import user_errors
from restar.cli.options import EXISTING_FILE, FILE, json_option
from restar.cli.output import report


@click.command("bench")
@click.option("--model-uri", required=True, help="MLflow model URI or model folder to benchmark.")
@click.option(
    "--data",
    "data_path",
    type=EXISTING_FILE,
    default="data/raw/eval.parquet",
    show_default=True,
    help="Parquet file with a `text` column to draw real texts from.",
)
@click.option(
    "-n",
    "--calls",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Timed single-text calls (per trial).",
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=20, show_default=True, help="Untimed calls first."
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Time the same texts this many times over (the latency gate compares the trials).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Compute threads for the model [default: torch's, one per core].",
)
@click.option("--output", "output_path", type=FILE, help="Also write the result JSON here.")
@json_option
@user_errors
def bench_command(
    model_uri: str,
    data_path: Path,
    calls: int,
    warmup: int,
    trials: int,
    threads: int | None,
    output_path: Path | None,
    as_json: bool,
) -> None:
    """Batch-size-1 latency on real eval texts: wall and CPU ms per call (avg/p50/p95), with hardware,
    thread count and the host's load.

    Example: restar bench --model-uri models:/restar@staging --output bench.json
    """
    import torch

    from restar.batch.bench import measure_latency, sample_texts
    from restar.batch.predictor import load_predict_fn

    if threads is not None:
        torch.set_num_threads(threads)  # before loading: ONNX Runtime sessions take torch's count
    texts = sample_texts(data_path, calls + warmup)
    predict_fn = load_predict_fn(model_uri)
    result = {"model_uri": model_uri, **measure_latency(predict_fn, texts, warmup=warmup, trials=trials)}
    if output_path:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_text(json.dumps(result, indent=2) + "\n")
    report(result, as_json)
