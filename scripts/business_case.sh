#!/usr/bin/env bash
# The business case, measured for one model (docs/business.md): `restar rank-eval` and the
# inconsistency summary on the frozen split's held-out products (dev + eval: never trained on) and on
# the 2018 Magazine_Subscriptions 5-core file (no product of it was trained on). Writes JSON and PNG
# only (aggregates, no review text) to OUT_DIR; the contradiction lists, which hold review texts, stay
# in a temporary folder.
#   bash scripts/business_case.sh [MODEL_URI] [OUT_DIR]
# defaults: models:/restar@production and results/business/<the model's config name, or "model">.
set -euo pipefail
cd "$(dirname "$0")/.."

model=${1:-models:/restar@production}
out=${2:-results/business/model}
shared=${RESTAR_SHARED_DATA:-../shared/data}
magazines="$shared/amazon_reviews_2018/Magazine_Subscriptions_5.jsonl.gz"
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# The held-out products as the frozen split holds them (one file: dev and eval together).
python -c 'import sys, pandas as pd; pd.concat([pd.read_parquet(f"data/frozen/{s}.parquet") for s in ("dev", "eval")]).to_parquet(sys.argv[1])' \
    "$work/heldout.parquet"

restar rank-eval --input "$work/heldout.parquet" --frozen data/frozen --model-uri "$model" \
    --out "$out/rank_eval_heldout.json"
restar rank-eval --no-split-filter --input "$magazines" --model-uri "$model" \
    --out "$out/rank_eval_magazines_2018.json"
restar inconsistencies --input "$work/heldout.parquet" --model-uri "$model" \
    --out "$work/heldout_contradictions.csv" --json >"$out/inconsistencies_heldout.json"
restar inconsistencies --input "$magazines" --model-uri "$model" \
    --out "$work/magazines_contradictions.csv" --json >"$out/inconsistencies_magazines_2018.json"
echo "wrote $(ls "$out" | tr '\n' ' ')to $out"
