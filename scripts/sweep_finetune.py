"""Fine-tune variants of a run config's training settings side by side; compare them on dev and eval.

Each variant is the base config's `train` section with a few keys changed (configs/sweep_full.yaml). Every
variant trains with the pipeline's own recipe (`restar.training.finetune`) and keeps its best dev
checkpoint, as `restar train` does. Choose between variants on dev accuracy: eval is reported so the gap
to the release gate can be read, not to pick a winner. Seed variants also give the spread of one recipe,
and the ensemble rows what averaging those seeds' probabilities would buy.

Runs on the CPU, or on a GPU when torch sees one; there several variants share the GPU (--parallel).
A GPU run lets a sweep that would take the 2-core dev machine a day finish in minutes.

    python scripts/sweep_finetune.py --sweep configs/sweep_full.yaml \
        --pretrained artifacts/pretrained/model --data data/raw --out results/sweep

Writes sweep.json (after every finished variant, so a cut-off run keeps what it finished), logits.npz
(dev and eval logits per variant) and sweep.png.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from promotion.policy import load_policy
from restar.batch.bench import hardware as bench_hardware
from restar.config import TrainConfig, load_run_config
from restar.model.calibration import softmax
from restar.training.metrics import classification_metrics


def load_sweep(path: Path) -> tuple[Path, dict[str, dict]]:
    """The base run config's path and the variants, each a dict of `train` keys to change."""
    spec = yaml.safe_load(path.read_text())
    variants = spec["variants"]
    for name, overrides in variants.items():
        unknown = set(overrides or {}) - set(TrainConfig.model_fields)
        if unknown:
            raise SystemExit(f"{path}: variant {name!r} sets unknown train keys {sorted(unknown)}")
    return Path(spec["base"]), {name: overrides or {} for name, overrides in variants.items()}


def scores(logits: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """The pipeline's metrics on uncalibrated probabilities (accuracy and F1 do not depend on calibration)."""
    return classification_metrics(softmax(logits), labels, threshold)


def run_variant(name: str, settings: dict, pretrained: str, data: str, threads: int) -> dict:
    """Train one variant from the pretrained encoder; its dev/eval scores, dev history and logits."""
    import torch
    from transformers import set_seed

    from restar.model.transformer import TransformerScorer
    from restar.training.finetune import fit, load_encoder

    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = True  # GPU only; the CPU trains in plain fp32 either way
    config = TrainConfig.model_validate(settings)
    set_seed(config.seed)
    frames = {split: pd.read_parquet(Path(data) / f"{split}.parquet") for split in ("train", "dev", "eval")}
    tokenizer, model = load_encoder(Path(pretrained))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work_dir:
        result = fit(
            config, model, tokenizer, Path(pretrained), frames["train"], frames["dev"], Path(work_dir)
        )
    train_seconds = time.perf_counter() - started
    # Trainer.predict would return rows in its length-grouped order; the inference core keeps input order.
    scorer = TransformerScorer(result.model, tokenizer, config.max_length, config.eval_batch_size)
    logits = {split: scorer.score(frames[split]["text"].tolist()).logits for split in ("dev", "eval")}
    history = [
        {
            "epoch": round(entry["epoch"], 3),
            "accuracy": entry["eval_accuracy"],
            "macro_f1": entry["eval_macro_f1"],
        }
        for entry in result.log_history
        if "eval_accuracy" in entry
    ]
    return {
        "name": name,
        "train": config.model_dump(),
        "device": result.device,
        "train_seconds": round(train_seconds, 1),
        "dev_history": history,
        **{
            f"{split}_{key}": value
            for split in ("dev", "eval")
            for key, value in scores(
                logits[split], frames[split]["label"].to_numpy(), config.abstain_threshold
            ).items()
        },
        "logits": {split: logits[split].astype(np.float32) for split in logits},
    }


def seed_ensembles(results: list[dict], labels: dict[str, np.ndarray], threshold: float) -> list[dict]:
    """Mean probabilities of the seed variants of the base recipe: the reference and every `seed_*`."""
    members = [r for r in results if r["name"] == "reference" or r["name"].startswith("seed_")]
    rows = []
    for size in range(2, len(members) + 1):
        row: dict[str, object] = {"members": [r["name"] for r in members[:size]]}
        for split in ("dev", "eval"):
            probs = np.mean([softmax(r["logits"][split]) for r in members[:size]], axis=0)
            metrics = classification_metrics(probs, labels[split], threshold)
            row.update({f"{split}_{key}": value for key, value in metrics.items()})
        rows.append(row)
    return rows


def release_accuracy(policy_path: Path) -> float | None:
    """The accuracy gate's minimum in the base config's promotion policy, if it has one."""
    return load_policy(policy_path).gate_param("accuracy", "min")


def hardware() -> dict[str, object]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**bench_hardware(), "gpu": gpu}


def write_results(out: Path, meta: dict, results: list[dict], labels: dict[str, np.ndarray]) -> None:
    ordered = sorted(results, key=lambda r: meta["order"].index(r["name"]))
    public = [{key: value for key, value in r.items() if key != "logits"} for r in ordered]
    summary = {
        **meta,
        "variants": public,
        "seed_ensembles": seed_ensembles(ordered, labels, meta["abstain_threshold"]),
    }
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    np.savez_compressed(
        out / "logits.npz",
        **{f"{r['name']}__{split}": r["logits"][split] for r in ordered for split in ("dev", "eval")},
        **{f"labels__{split}": labels[split] for split in labels},
    )
    plot(public, out / "sweep.png", meta["gate_accuracy"])


def plot(variants: list[dict], path: Path, gate: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v["name"] for v in variants]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    ax.scatter([v["dev_accuracy"] for v in variants], y, label="dev (best checkpoint)", marker="o")
    ax.scatter([v["eval_accuracy"] for v in variants], y, label="eval", marker="s")
    if gate is not None:
        ax.axvline(gate, color="red", linestyle="--", label=f"release gate {gate:.2f}")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (argmax, natural class mix)")
    ax.set_title("Fine-tuning variants of the full config")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_all(
    variants: dict[str, dict], base: dict, args: argparse.Namespace, meta: dict, labels: dict
) -> None:
    """Train the variants `args.parallel` at a time; write the results after each one finishes."""
    started = time.perf_counter()
    results: list[dict] = []
    pending = list(variants.items())
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.parallel, mp_context=context) as pool:
        running = {}
        while pending or running:
            if args.start_before is not None and time.perf_counter() - started > args.start_before * 60:
                pending.clear()
            while pending and len(running) < args.parallel:
                name, overrides = pending.pop(0)
                job = pool.submit(
                    run_variant,
                    name,
                    {**base, **overrides},
                    str(args.pretrained),
                    str(args.data),
                    meta["threads_per_variant"],
                )
                running[job] = name
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for job in done:
                name = running.pop(job)
                if job.exception() is not None:
                    print(f"{name} failed: {job.exception()!r}", flush=True)
                    continue
                result = job.result()
                results.append(result)
                print(
                    f"{time.perf_counter() - started:7.0f}s {name}: dev {result['dev_accuracy']:.4f} "
                    f"eval {result['eval_accuracy']:.4f} macro-F1 {result['eval_macro_f1']:.4f} "
                    f"({result['train_seconds']:.0f}s on {result['device']})",
                    flush=True,
                )
                write_results(args.out, meta, results, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=Path("configs/sweep_full.yaml"))
    parser.add_argument("--pretrained", type=Path, default=Path("artifacts/pretrained/model"))
    parser.add_argument("--data", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("results/sweep"))
    parser.add_argument("--only", nargs="*", help="run just these variants")
    parser.add_argument("--parallel", type=int, default=1, help="variants trained at once")
    parser.add_argument("--start-before", type=float, default=None, help="start no variant after N minutes")
    parser.add_argument(
        "--set", nargs="*", default=[], help="train key=value for every variant (smoke tests)"
    )
    args = parser.parse_args()

    base_path, variants = load_sweep(args.sweep)
    base_config = load_run_config(base_path)
    base = base_config.train.model_dump()
    base.update({key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)})
    if args.only:
        unknown = set(args.only) - set(variants)
        if unknown:
            raise SystemExit(f"{args.sweep}: no variants named {sorted(unknown)}")
        variants = {name: variants[name] for name in args.only}
    args.out.mkdir(parents=True, exist_ok=True)
    labels = {
        split: pd.read_parquet(args.data / f"{split}.parquet")["label"].to_numpy()
        for split in ("dev", "eval")
    }
    meta = {
        "base_config": str(base_path),
        "hardware": hardware(),
        "parallel": args.parallel,
        "threads_per_variant": max(1, (os.cpu_count() or 1) // args.parallel),
        "gate_accuracy": release_accuracy(base_config.promotion.policy),
        "abstain_threshold": base["abstain_threshold"],
        "order": list(variants),
    }
    print(json.dumps(meta["hardware"]), flush=True)

    run_all(variants, base, args, meta, labels)


if __name__ == "__main__":
    main()
