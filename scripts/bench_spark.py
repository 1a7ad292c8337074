"""Entry point of throughput and peak memory of `restar predict`, local engine against Spark:
scripts/bench/spark.py, whose docstring (`--help`) says more.

    MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db nice -n 10 python scripts/bench_spark.py \\
        --rows 1000000 --model-uri models:/restar@baseline
"""

from bench.spark import main

if __name__ == "__main__":
    main()
