"""Error audit: how much of the remaining error is the star labels' own, and what ceiling do they allow?

`sample` scores the eval split with a model folder through the inference core (argmax, as eval accuracy
counts) and draws N errors stratified by (true, predicted) class pair, in proportion to each pair's share
of all errors with at least `--min-per-pair` from each. It writes a CSV whose `verdict` column a person
fills in after reading each review:

- `label_noise`: the text clearly says another class than its stars (a 5-star "broke in a week, avoid");
- `mixed`: the text honestly supports both classes (praise and complaints of similar weight);
- `model_error`: the text supports its star class and the model missed it.

The review texts stay out of the committed table: the upstream data's terms forbid committing any part
of it. `sample` writes a reading copy with each text's first 600 characters under outputs/ (not tracked),
and the committed table holds the review's position in the eval split and its product ids (no reviewer
ids) and, in `note`, the auditor's own one-line summary.

`summarize` reads the filled-in CSV, scales each pair's verdict shares up to all of that pair's errors, and
writes the estimated number of eval reviews whose star label a text-reading model cannot match, and the
accuracy ceiling that follows.

    python scripts/error_audit.py sample --model outputs/dvc_run/model --data data/raw/eval.parquet \
        --out results/full/error_audit.csv
    python scripts/error_audit.py summarize --audit results/full/error_audit.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from restar.labels import LABELS

VERDICTS = ("label_noise", "mixed", "model_error")
EXCERPT_CHARS = 600


def score(model_dir: Path, frame: pd.DataFrame) -> np.ndarray:
    from restar.model.inference import InferenceCore

    core = InferenceCore.from_dir(model_dir)
    return core.probabilities(frame["text"].tolist())


def allocate(counts: pd.Series, n: int, minimum: int) -> pd.Series:
    """Rows to draw per pair: proportional to its errors, at least `minimum` (or all it has), `n` in all."""
    floor = counts.clip(upper=minimum)
    rest = n - int(floor.sum())
    extra = (counts - floor) / max(int((counts - floor).sum()), 1) * max(rest, 0)
    take = floor + np.floor(extra).astype(int)
    for pair in (extra - np.floor(extra)).sort_values(ascending=False).index:
        if int(take.sum()) >= min(n, int(counts.sum())):
            break
        if take[pair] < counts[pair]:
            take[pair] += 1
    return take.astype(int)


def sample(args: argparse.Namespace) -> None:
    frame = pd.read_parquet(args.data).reset_index(drop=True)
    probs = score(args.model, frame)
    frame["predicted"] = [LABELS[i] for i in probs.argmax(axis=1)]
    frame["true"] = [LABELS[i] for i in frame["label"]]
    frame["confidence"] = probs.max(axis=1).round(3)
    errors = frame[frame["predicted"] != frame["true"]].copy()
    errors["pair"] = errors["true"] + "->" + errors["predicted"]
    counts = errors["pair"].value_counts().sort_index()
    take = allocate(counts, args.n, args.min_per_pair)
    drawn = pd.concat(
        errors[errors["pair"] == pair].sample(n=int(k), random_state=args.seed)
        for pair, k in take.items()
        if k
    )
    audit = pd.DataFrame(
        {
            "row": drawn.index,
            "parent_asin": drawn["parent_asin"],
            "asin": drawn["asin"],
            "stars": drawn["rating"].astype(int),
            "true": drawn["true"],
            "predicted": drawn["predicted"],
            "confidence": drawn["confidence"],
            "pair": drawn["pair"],
            "pair_errors": drawn["pair"].map(counts),
            "verdict": "",
            "note": "",
        }
    ).sort_values(["pair", "row"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    audit.to_csv(args.out, index=False)
    args.reading_copy.parent.mkdir(parents=True, exist_ok=True)
    audit.assign(text_excerpt=frame.loc[audit["row"], "text"].str.slice(0, EXCERPT_CHARS).to_numpy()).to_csv(
        args.reading_copy, index=False
    )
    meta = {
        "eval_rows": len(frame),
        "errors": len(errors),
        "accuracy": round(1 - len(errors) / len(frame), 6),
    }
    args.out.with_suffix(".sample.json").write_text(
        json.dumps({**meta, "pair_errors": counts.to_dict()}, indent=2)
    )
    print(
        f"{len(audit)} of {len(errors)} errors written to {args.out}; "
        f"fill in `verdict`: {', '.join(VERDICTS)}"
    )


def summarize(args: argparse.Namespace) -> None:
    audit = pd.read_csv(args.audit, keep_default_na=False)
    unknown = sorted(set(audit["verdict"]) - set(VERDICTS))
    if unknown:
        raise SystemExit(f"{args.audit}: verdicts must be one of {VERDICTS}; found {unknown}")
    meta = json.loads(args.audit.with_suffix(".sample.json").read_text())
    by_pair = pd.crosstab(audit["pair"], audit["verdict"]).reindex(columns=list(VERDICTS), fill_value=0)
    shares = by_pair.div(by_pair.sum(axis=1), axis=0)
    pair_errors = pd.Series(meta["pair_errors"]).reindex(shares.index)
    estimated = shares.mul(pair_errors, axis=0)  # each pair's verdict shares, scaled to all its errors
    totals = estimated.sum()
    n = meta["eval_rows"]
    summary = {
        **meta,
        "audited": len(audit),
        "audited_verdicts": audit["verdict"].value_counts().reindex(list(VERDICTS), fill_value=0).to_dict(),
        "by_pair": {
            pair: {"errors": int(pair_errors[pair]), **by_pair.loc[pair].astype(int).to_dict()}
            for pair in by_pair.index
        },
        "estimated_errors": {verdict: round(float(totals[verdict]), 1) for verdict in VERDICTS},
        # A text-reading model must miss a review whose stars contradict its text: an upper bound.
        "ceiling_label_noise": round(1 - float(totals["label_noise"]) / n, 4),
        # Mixed reviews are coin flips at best; counting them as lost gives the pessimistic ceiling.
        "ceiling_noise_and_mixed": round(1 - float(totals["label_noise"] + totals["mixed"]) / n, 4),
    }
    summary["ceiling_noise_and_half_mixed"] = round(
        1 - float(totals["label_noise"] + totals["mixed"] / 2) / n, 4
    )
    out = args.audit.with_suffix(".json")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    draw = commands.add_parser("sample", help="score eval and draw stratified errors to read")
    draw.add_argument(
        "--model", type=Path, default=Path("outputs/dvc_run/model"), help="trained model folder"
    )
    draw.add_argument("--data", type=Path, default=Path("data/raw/eval.parquet"), help="eval split")
    draw.add_argument("--out", type=Path, default=Path("results/full/error_audit.csv"))
    draw.add_argument(
        "--reading-copy",
        type=Path,
        default=Path("outputs/error_audit_reading.csv"),
        help="the same rows with text excerpts, to read (not tracked)",
    )
    draw.add_argument("-n", type=int, default=100, help="errors to draw")
    draw.add_argument("--min-per-pair", type=int, default=5, help="at least this many per class pair")
    draw.add_argument("--seed", type=int, default=0)
    tally = commands.add_parser("summarize", help="tally the verdicts and estimate the ceiling")
    tally.add_argument("--audit", type=Path, default=Path("results/full/error_audit.csv"))
    args = parser.parse_args()
    {"sample": sample, "summarize": summarize}[args.command](args)


if __name__ == "__main__":
    main()
