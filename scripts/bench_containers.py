"""Entry point of what the images cost (size, build time, cold start, memory, CA bundle in layers):
scripts/bench/containers.py, whose docstring (`--help`) says more.

    python scripts/bench_containers.py --output results/containers.json     (about 15 minutes)
"""

from bench.containers import main

if __name__ == "__main__":
    main()
