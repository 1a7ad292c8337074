#!/usr/bin/env bash
# Quickstart: set up, then run the smoke pipeline end to end: every stage of dvc.yaml (fetch_model,
# freeze_data, prepare, train, convert, evaluate, the TF-IDF baseline's three stages, register, promote,
# export_torchserve).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Without the Hugging Face hub, reviews come from a local folder of Amazon Reviews 2023 JSONL files.
if [ -z "${RESTAR_DATA_DIR:-}" ] && [ -d ../shared/data/amazon_reviews_2023 ]; then
    export RESTAR_DATA_DIR="$PWD/../shared/data/amazon_reviews_2023"
fi
export PATH="$PWD/.venv/bin:$PATH"
dvc repro "$@"
dvc metrics show
echo "MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open http://127.0.0.1:5000)"
