"""Learning curves: would more data or a bigger encoder buy the accuracy the release gate asks for?

For each encoder and each fraction of the training rows (a seeded, class-stratified sample of
data/raw/train.parquet), one shared recipe: the base config's `train` section, 1 epoch, with the lower
two thirds of the encoder's layers frozen and cached once (restar.training.finetune.fit, the
pipeline's own code).
Dev and eval are scored from the same cache (PyTorch fp32, argmax, natural class mix). Each point is
written to curves.json as it finishes and points already there are skipped, so a killed study resumes.

    python scripts/learning_curves.py --data data/raw --out results/learning_curves \
        --encoder minilm=artifacts/encoders/minilm --encoder mpnet=artifacts/pretrained/model \
        --fractions 0.125 0.25 0.5 1.0

Encoder folders come from `restar fetch-model`. `--release NAME=METRICS_JSON[:KEY]` adds a pipeline run's
eval accuracy (or another key of its metrics file) to the plot at the full training size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import set_seed

from promotion.policy import load_policy
from restar.batch.bench import hardware
from restar.config import load_run_config
from restar.model.calibration import softmax
from restar.training.finetune import fit, load_encoder
from restar.training.layer_cache import cache_lower_layers, top_layers_only, top_logits
from restar.training.metrics import classification_metrics

SPLITS = ("train", "dev", "eval")


def stratified_sample(frame: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """`fraction` of the rows of each class, in their original order."""
    if fraction >= 1:
        return frame
    picked = frame.groupby("label", group_keys=False).sample(frac=fraction, random_state=seed)
    return frame.loc[sorted(picked.index)]


def encoder_states(name: str, encoder_dir: Path, frames: dict, frozen: int, max_length: int, work_dir: Path):
    """Every split's cached lower-layer states, and the seconds this process spent getting them."""
    tokenizer, model = load_encoder(encoder_dir)
    started = time.perf_counter()
    states = {
        split: cache_lower_layers(
            model,
            tokenizer,
            encoder_dir,
            frames[split]["text"].tolist(),
            frozen,
            max_length,
            work_dir / "layers",
            desc=f"{name} {split} states",
        )
        for split in SPLITS
    }
    return states, time.perf_counter() - started


def run_point(
    name: str, encoder_dir: Path, fraction: float, settings, frames: dict, states: dict, work_dir
) -> dict:
    """Train one encoder on one fraction of the training rows; dev and eval scores and the cost."""
    set_seed(settings.seed)
    tokenizer, model = load_encoder(encoder_dir)
    train = stratified_sample(frames["train"], fraction, settings.seed)
    positions = frames["train"].index.get_indexer(train.index)
    started = time.perf_counter()
    result = fit(
        settings,
        model,
        tokenizer,
        encoder_dir,
        train,
        frames["dev"],
        work_dir,
        states=([states["train"][i] for i in positions], states["dev"]),
    )
    train_seconds = time.perf_counter() - started
    with top_layers_only(result.model, settings.frozen_layers):
        logits = {split: top_logits(result.model, states[split]).numpy() for split in ("dev", "eval")}
    shutil.rmtree(result.checkpoints, ignore_errors=True)
    point = {
        "encoder": name,
        "fraction": fraction,
        "train_rows": len(train),
        "layers": len(result.model.base_model.encoder.layer),
        "frozen_layers": settings.frozen_layers,
        "train_seconds": round(train_seconds, 1),
    }
    for split in ("dev", "eval"):
        labels = frames[split]["label"].to_numpy()
        metrics = classification_metrics(softmax(logits[split]), labels, settings.abstain_threshold)
        point.update({f"{split}_{key}": round(value, 6) for key, value in metrics.items()})
    return point


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 5))
    for index, name in enumerate(dict.fromkeys(p["encoder"] for p in study["points"])):
        points = sorted((p for p in study["points"] if p["encoder"] == name), key=lambda p: p["train_rows"])
        rows = [p["train_rows"] for p in points]
        color = f"C{index}"
        ax.plot(rows, [p["eval_accuracy"] for p in points], "s-", color=color, label=f"{name}: eval")
        ax.plot(
            rows, [p["dev_accuracy"] for p in points], "o--", color=color, alpha=0.6, label=f"{name}: dev"
        )
    for index, (label, release) in enumerate(study.get("release", {}).items()):
        marker = "*PXD"[index % 4]
        ax.scatter(
            [release["train_rows"]],
            [release["eval_accuracy"]],
            marker=marker,
            s=110,
            color=("black", "dimgray", "C0", "C1")[index % 4],
            zorder=5,
            label=f"{label}: eval",
        )
    for index, (name, value) in enumerate(study.get("ceilings", {}).items()):
        ax.axhline(
            value,
            color="grey",
            linestyle=(":", "-.", (0, (1, 4)))[index % 3],
            linewidth=1,
            label=f"ceiling, {name}: {value}",
        )
    if study.get("gate_accuracy"):
        ax.axhline(
            study["gate_accuracy"],
            color="red",
            linestyle="--",
            label=f"release gate {study['gate_accuracy']}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training rows (log scale)")
    ax.set_ylabel("accuracy (natural class mix)")
    ax.set_title("Learning curves: top third of the layers trained on cached lower layers, 1 epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"{what} takes NAME=VALUE, got {value!r}")
        pairs[name] = rest
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/full.yaml"), help="base run config")
    parser.add_argument("--data", type=Path, default=Path("data/raw"), help="train/dev/eval.parquet folder")
    parser.add_argument("--encoder", action="append", required=True, help="NAME=DIR from restar fetch-model")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5])
    parser.add_argument(
        "--release", action="append", default=[], help="NAME=metrics_eval.json[:KEY] of a full run"
    )
    parser.add_argument(
        "--audit", type=Path, help="error_audit.json: draw the star labels' accuracy ceilings"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path("outputs/cache"), help="layer cache, checkpoints"
    )
    parser.add_argument("--out", type=Path, default=Path("results/learning_curves"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = load_run_config(args.config)
    frames = {split: pd.read_parquet(args.data / f"{split}.parquet") for split in SPLITS}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "curves.json"
    study = json.loads(path.read_text()) if path.is_file() else {"points": []}
    study.update(
        recipe=f"{args.config} train section, epochs 1, lower 2/3 of the layers frozen and cached",
        gate_accuracy=load_policy(config.promotion.policy).gate_param("accuracy", "min"),
        hardware={**hardware(), "torch_threads": torch.get_num_threads()},
    )
    study.setdefault("states_seconds", {})
    for name, encoder_dir in parse_pairs(args.encoder, "--encoder").items():
        layers = json.loads((Path(encoder_dir) / "config.json").read_text())["num_hidden_layers"]
        settings = config.train.model_copy(update={"epochs": 1.0, "frozen_layers": layers * 2 // 3})
        states, seconds = encoder_states(
            name, Path(encoder_dir), frames, settings.frozen_layers, settings.max_length, args.work_dir
        )
        study["states_seconds"].setdefault(name, round(seconds, 1))  # the first run computes; reruns load
        for fraction in args.fractions:
            if any(p["encoder"] == name and p["fraction"] == fraction for p in study["points"]):
                continue
            point = run_point(name, Path(encoder_dir), fraction, settings, frames, states, args.work_dir)
            print(json.dumps(point), flush=True)
            study["points"].append(point)
            path.write_text(json.dumps(study, indent=2) + "\n")
    releases = {}
    for label, spec in parse_pairs(args.release, "--release").items():
        metrics_path, _, key = spec.partition(":")
        metrics = json.loads(Path(metrics_path).read_text())
        releases[label] = {
            "train_rows": len(frames["train"]),
            "eval_accuracy": metrics[key or "eval_accuracy"],
        }
    study["release"] = releases
    if args.audit:
        audit = json.loads(args.audit.read_text())
        study["ceilings"] = {
            "label noise lost": audit["ceiling_label_noise"],
            "noise + half of mixed lost": audit["ceiling_noise_and_half_mixed"],
            "noise + all mixed lost": audit["ceiling_noise_and_mixed"],
        }
    path.write_text(json.dumps(study, indent=2) + "\n")
    plot(study, args.out / "curves.png")
    print(f"wrote {path} and {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()
