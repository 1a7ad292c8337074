"""Entry point of the latency gate on a quiet host and with every core busy: scripts/bench/latency_gate.py,
whose docstring (`--help`) says more.

    python scripts/bench_latency_gate.py --model-uri outputs/dvc_run/model --data data/raw/eval.parquet \\
        --output results/bench/latency_gate.json
"""

from bench.latency_gate import main

if __name__ == "__main__":
    main()
