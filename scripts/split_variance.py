"""How much eval accuracy depends on which products land in eval: the TF-IDF baseline over split seeds.

Reviews are split by product (parent_asin), and a few hundred subscription boxes carry most of the
reviews, so one seed's eval set can be easier or harder than another's. This freezes the configured
data under several split seeds (everything else as configured), fits the baseline on each train split
and scores its eval split. The baseline takes about a minute a seed on 2 cores; the transformer would
take half an hour. Writes JSON and a PNG.

    RESTAR_DATA_DIR=../shared/data/amazon_reviews_2023 \
        python scripts/split_variance.py --seeds 0-9 --output outputs/bench/split_variance.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm import tqdm

from restar.config import BaselineConfig, FreezeConfig, load_freeze_config, load_run_config
from restar.data.freeze import clean_rows, grouped_split, read_sources
from restar.model import tfidf

REPO_ROOT = Path(__file__).resolve().parents[1]


def seed_range(text: str) -> list[int]:
    """Seeds from "0-9" or "0,3,13"."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(seed) for seed in text.split(",")]


def baseline_accuracy(
    cleaned: pd.DataFrame, freeze: FreezeConfig, seed: int, baseline: BaselineConfig
) -> dict:
    names = grouped_split(cleaned, freeze.split.model_copy(update={"seed": seed}))
    train, evaluation = cleaned[names == "train"], cleaned[names == "eval"]
    scorer = tfidf.fit(train, baseline)
    correct = scorer.score(evaluation["text"]).logits.argmax(axis=1) == evaluation["label"].to_numpy()
    return {
        "seed": seed,
        "eval_rows": len(evaluation),
        "eval_products": int(evaluation["parent_asin"].nunique()),
        "accuracy": round(float(correct.mean()), 4),
        "accuracy_by_category": {
            category: round(float(correct[(evaluation["category"] == category).to_numpy()].mean()), 4)
            for category in sorted(evaluation["category"].unique())
        },
    }


def plot(report: dict, path: Path) -> None:
    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    seeds = [row["seed"] for row in report["seeds"]]
    accuracy = [row["accuracy"] for row in report["seeds"]]
    colors = ["tab:red" if seed == report["configured_seed"] else "tab:blue" for seed in seeds]
    axis.bar([str(seed) for seed in seeds], accuracy, color=colors)
    axis.axhline(
        report["mean"], color="black", ls="--", label=f"mean {report['mean']:.3f} (sd {report['sd']:.3f})"
    )
    axis.set_ylim(min(accuracy) - 0.02, max(accuracy) + 0.01)
    axis.set_xlabel("split seed (red: the configured one)")
    axis.set_ylabel("baseline eval accuracy")
    axis.set_title("TF-IDF baseline on eval, per product-grouped split seed")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-config", type=Path, default=REPO_ROOT / "configs/data_frozen.yaml")
    parser.add_argument(
        "--config", type=Path, default=REPO_ROOT / "configs/full.yaml", help="for the baseline"
    )
    parser.add_argument("--seeds", type=seed_range, default=seed_range("0-9"))
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs/bench/split_variance.json")
    args = parser.parse_args()

    freeze = load_freeze_config(args.data_config)
    baseline = load_run_config(args.config).baseline
    cleaned, _ = clean_rows(read_sources(freeze)[0], freeze.clean)
    seeds = sorted(set(args.seeds) | {freeze.split.seed})
    rows = [baseline_accuracy(cleaned, freeze, seed, baseline) for seed in tqdm(seeds, desc="split seeds")]
    accuracy = np.array([row["accuracy"] for row in rows])
    configured = next(row for row in rows if row["seed"] == freeze.split.seed)
    report = {
        "configured_seed": freeze.split.seed,
        "configured_accuracy": configured["accuracy"],
        "mean": round(float(accuracy.mean()), 4),
        "sd": round(float(accuracy.std(ddof=1)), 4),
        "min": float(accuracy.min()),
        "max": float(accuracy.max()),
        "configured_rank_from_top": int((accuracy > configured["accuracy"]).sum()) + 1,
        "seeds": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.output.with_suffix(".png"))
    for row in rows:
        print(f"seed {row['seed']:3d}  eval rows {row['eval_rows']:5d}  accuracy {row['accuracy']:.4f}")
    print(
        f"mean {report['mean']:.4f}  sd {report['sd']:.4f}; configured seed {freeze.split.seed}: "
        f"{report['configured_accuracy']:.4f}, rank {report['configured_rank_from_top']} of {len(rows)}"
    )


if __name__ == "__main__":
    main()
