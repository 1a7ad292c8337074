"""Entry point of peak memory of the offline predictor against the number of rows:
scripts/bench/predictor_memory.py, whose docstring (`--help`) says more.

    python scripts/bench_predictor_memory.py --model outputs/baseline/model --rows 10000 100000 1000000
"""

from bench.predictor_memory import main

if __name__ == "__main__":
    main()
