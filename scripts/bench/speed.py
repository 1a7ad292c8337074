"""One speed benchmark for a trained model, on the same real eval texts, per inference backend.

Measures, in one run:
  - eval accuracy per backend (torch fp32 reference, ONNX Runtime fp32, ONNX Runtime int8);
  - batch-1 latency avg/p50/p95 through the MLflow pyfunc, per backend, for a natural sample of eval
    reviews and for ~100-word reviews;
  - the raw model forward at batch 1 (pre-tokenized, no pyfunc or pandas), for reference;
  - offline predictor throughput (reviews/s) per backend;
  - the TorchServe endpoint (exported through a scratch registry) at 1, 8 and 32 clients, best backend.

Writes JSON and a PNG, prints tables. Nothing here is a test: numbers depend on the machine, which is
recorded beside them.

    python scripts/bench_speed.py --model outputs/dvc_run/model --output outputs/bench/speed.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from bench.common import (
    REPO_ROOT,
    announce,
    argument_parser,
    hardware,
    latency_summary,
    mean_words,
    png_beside,
    predictor_run,
    pyfunc_latency,
    save_png,
    timed_ms,
    write_json,
)
from bench.endpoint import bench_variant, print_levels
from registry.service import PRODUCTION, Registry
from restar.model.inference import InferenceCore
from restar.model.onnx_export import INPUT_NAMES, convert
from restar.model.onnx_scorer import BACKENDS
from restar.model.pyfunc import log_pyfunc, save_pyfunc
from restar.serving.export_torchserve import export_torchserve

ACCURACY_TOLERANCE_PP = 0.1  # the most accuracy a faster backend may cost, in points (issue 24)


def latency_texts(frame: pd.DataFrame, n: int, words: tuple[int, int] | None, seed: int = 0) -> list[str]:
    """`n` eval texts, optionally only those whose word count lies in `words`."""
    texts = frame["text"][frame["text"].str.strip().str.len() > 0]
    if words:
        counts = texts.str.split().str.len()
        texts = texts[(counts >= words[0]) & (counts <= words[1])]
    return texts.sample(n=n, replace=len(texts) < n, random_state=seed).tolist()


def backend_dirs(model_dir: Path, root: Path) -> dict[str, Path]:
    """A copy of the model per backend, converted, each also saved as a pyfunc."""
    folders = {}
    for backend in BACKENDS:
        folder = root / backend / "model"
        shutil.copytree(model_dir, folder)
        convert(folder, backend)
        save_pyfunc(folder, root / backend / "pyfunc")
        folders[backend] = folder
    return folders


def accuracy(model_dir: Path, frame: pd.DataFrame) -> float:
    logits = InferenceCore.from_dir(model_dir, batch_size=64).logits(frame["text"].tolist())
    return round(float((logits.argmax(axis=1) == frame["label"].to_numpy()).mean()), 5)


def pyfunc_dir_latency(pyfunc_dir: Path, texts: list[str], warmup: int) -> dict[str, object]:
    model = mlflow.pyfunc.load_model(str(pyfunc_dir))
    keys = ("latency_avg_ms", "latency_p50_ms", "latency_p95_ms", "calls")
    return pyfunc_latency(model, texts, warmup, keys)


def forward_calls(model_dir: Path, texts: list[str]) -> list[Callable[[], object]]:
    """One call per text: the scorer's model forward on that text, tokenized beforehand."""
    core = InferenceCore.from_dir(model_dir)
    scorer = core.scorer
    encoded = [
        scorer.tokenizer(text, truncation=True, max_length=core.metadata.max_length, return_tensors="np")
        for text in texts
    ]
    if hasattr(scorer, "session"):
        feeds = [scorer.feed(e) for e in encoded]

        def forward(feed: dict) -> object:
            return scorer.session.run(["logits"], feed)
    else:
        feeds = [{name: torch.from_numpy(e[name]) for name in INPUT_NAMES if name in e} for e in encoded]

        def forward(feed: dict) -> object:
            with torch.inference_mode():
                return scorer.model(**feed).logits

    return [lambda feed=feed: forward(feed) for feed in feeds]


def raw_forward_latency(model_dir: Path, texts: list[str], warmup: int) -> dict[str, float | None]:
    """Batch-1 forward of the scorer's model on pre-tokenized inputs: the floor under the pyfunc."""
    calls = forward_calls(model_dir, texts)
    for call in calls[:warmup]:
        call()
    return latency_summary([timed_ms(call) for call in calls[warmup:]])


def predictor_throughput(pyfunc_dir: Path, frame: pd.DataFrame, rows: int, workdir: Path) -> dict[str, float]:
    texts = frame["text"].sample(n=rows, replace=len(frame) < rows, random_state=1).tolist()
    written, seconds = predictor_run(texts, str(pyfunc_dir), workdir)
    return {
        "rows": written,
        "seconds": round(seconds, 2),
        "reviews_per_s": round(written / seconds, 1),
    }


def endpoint(
    model_dir: Path, backend: str, texts: list[str], requests: int, workdir: Path
) -> dict[str, object]:
    """Register the model in a scratch store, export production as a .mar and load it into TorchServe."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        info = log_pyfunc(model_dir)
    registry = Registry("restar", uri)
    version = registry.register(info.model_uri, run.info.run_id, {}, {})
    registry.set_alias(PRODUCTION, version.version)
    export_torchserve(
        "models:/restar@production",
        workdir / "artifacts",
        workdir / "model-store",
        REPO_ROOT / "torchserve" / "handler.py",
        REPO_ROOT / "torchserve" / "model-config.yaml",
        backend=backend,
    )
    return bench_variant(
        workdir / "model-store" / "restar.mar",
        REPO_ROOT / "torchserve" / "config.properties",
        texts,
        [1, 8, 32],
        requests,
        workdir / "run",
    )


RELEASE_RULE = (
    f"accuracy within {ACCURACY_TOLERANCE_PP} point of PyTorch fp32 on the scored eval rows, "
    "then the lowest batch-1 pyfunc average latency on the eval sample"
)


def release_backend(backends: dict[str, dict]) -> str:
    """The backend to serve: RELEASE_RULE (torch itself always qualifies)."""
    tolerance = -ACCURACY_TOLERANCE_PP
    qualifying = [name for name, result in backends.items() if result["accuracy_delta_pp"] >= tolerance]
    return min(qualifying, key=lambda b: backends[b]["pyfunc_natural"]["latency_avg_ms"])


def plot(report: dict) -> Figure:
    fig = Figure(figsize=(11, 4))
    latency_ax, throughput_ax = fig.subplots(1, 2)
    backends = list(report["backends"])
    x = np.arange(len(backends))
    for offset, (key, name) in enumerate(
        (
            ("pyfunc_natural", "pyfunc, eval sample"),
            ("pyfunc_100_words", "pyfunc, ~100 words"),
            ("raw_forward", "raw forward"),
        )
    ):
        values = [report["backends"][b][key]["latency_p50_ms"] for b in backends]
        latency_ax.bar(x + (offset - 1) * 0.27, values, width=0.27, label=name)
    latency_ax.set_xticks(x, backends)
    latency_ax.set_ylabel("batch-1 p50 latency (ms)")
    latency_ax.set_title("Latency per backend")
    latency_ax.legend(fontsize=8)
    throughput_ax.bar(x, [report["backends"][b]["predictor"]["reviews_per_s"] for b in backends])
    throughput_ax.set_xticks(x, backends)
    throughput_ax.set_ylabel("reviews/s")
    throughput_ax.set_title("Offline predictor throughput")
    fig.suptitle(f"{report['hardware']['cpu']}, {report['hardware']['torch_threads']} threads", fontsize=9)
    fig.tight_layout()
    return fig


def measure_backend(
    folder: Path,
    frame: pd.DataFrame,
    scored: pd.DataFrame,
    natural: list[str],
    hundred: list[str],
    args: argparse.Namespace,
) -> dict[str, object]:
    """Accuracy on `scored`, batch-1 latencies and predictor throughput of one converted model."""
    pyfunc_dir = folder.parent / "pyfunc"
    return {
        "eval_accuracy": accuracy(folder, scored),
        "pyfunc_natural": pyfunc_dir_latency(pyfunc_dir, natural, args.warmup),
        "pyfunc_100_words": pyfunc_dir_latency(pyfunc_dir, hundred, args.warmup),
        "raw_forward": raw_forward_latency(folder, hundred, args.warmup),
        "predictor": predictor_throughput(pyfunc_dir, frame, args.predictor_rows, folder.parent),
    }


def print_backend(backend: str, result: dict) -> None:
    print(
        f"{backend:>9}  acc {result['eval_accuracy']:.4f}  "
        f"pyfunc p50 {result['pyfunc_natural']['latency_p50_ms']:.1f} ms "
        f"(~100 words {result['pyfunc_100_words']['latency_p50_ms']:.1f} ms)  "
        f"raw forward p50 {result['raw_forward']['latency_p50_ms']:.1f} ms  "
        f"predictor {result['predictor']['reviews_per_s']:.0f} reviews/s",
        flush=True,
    )


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--model", type=Path, default=REPO_ROOT / "outputs/dvc_run/model", help="Re*Star model dir."
    )
    parser.add_argument(
        "--data", type=Path, default=REPO_ROOT / "data/frozen/eval.parquet", help="Eval split."
    )
    parser.add_argument("--calls", type=int, default=200, help="Timed batch-1 calls per measurement.")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--predictor-rows", type=int, default=5000)
    parser.add_argument("--endpoint-requests", type=int, default=320, help="Requests per client level.")
    parser.add_argument(
        "--accuracy-rows", type=int, default=None, help="Score accuracy on a seeded sample of N eval rows."
    )
    parser.add_argument("--skip-endpoint", action="store_true")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs/bench/speed.json")
    args = parser.parse_args()

    frame = pd.read_parquet(args.data, columns=["text", "label"])
    natural = latency_texts(frame, args.calls + args.warmup, None)
    hundred = latency_texts(frame, args.calls + args.warmup, (80, 120))
    scored = (
        frame.sample(n=min(args.accuracy_rows, len(frame)), random_state=0) if args.accuracy_rows else frame
    )
    report: dict = {
        "model": str(args.model),
        "data": str(args.data),
        "eval_rows": len(frame),
        "accuracy_rows": len(scored),
        "mean_words": {"natural": mean_words(natural), "100_words": mean_words(hundred)},
        "hardware": hardware(),
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folders = backend_dirs(args.model, Path(tmp))
        for backend, folder in folders.items():
            report["backends"][backend] = measure_backend(folder, frame, scored, natural, hundred, args)
            print_backend(backend, report["backends"][backend])
        reference = report["backends"]["torch"]["eval_accuracy"]
        for result in report["backends"].values():
            result["accuracy_delta_pp"] = round((result["eval_accuracy"] - reference) * 100, 2)
        best = release_backend(report["backends"])
        report["release_rule"] = RELEASE_RULE
        report["release_backend"] = best
        print(f"release backend: {best} ({RELEASE_RULE})")
        if not args.skip_endpoint:
            work = Path(tmp) / "endpoint"
            work.mkdir()
            report["endpoint"] = {
                "backend": best,
                **endpoint(folders[best], best, natural, args.endpoint_requests, work),
            }
            print_levels(f"endpoint {best}", report["endpoint"])
    announce([write_json(report, args.output), save_png(plot(report), png_beside(args.output))])


if __name__ == "__main__":
    main()
