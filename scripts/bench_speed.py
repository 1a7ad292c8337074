"""Entry point of the speed benchmark (backends: accuracy, batch-1 latency, predictor and endpoint
throughput): scripts/bench/speed.py, whose docstring (`--help`) says more.

    python scripts/bench_speed.py --model outputs/dvc_run/model --output outputs/bench/speed.json
"""

from bench.speed import main

if __name__ == "__main__":
    main()
