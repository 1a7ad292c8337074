"""Entry point of the TorchServe endpoint benchmark (latency and throughput per worker/batching variant):
scripts/bench/endpoint.py, whose docstring (`--help`) says more.

    python scripts/bench_endpoint.py --variants 1x1 1x8 2x8 --output outputs/bench/endpoint.json
"""

from bench.endpoint import main

if __name__ == "__main__":
    main()
