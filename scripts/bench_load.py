"""Entry point of the load benchmark (TorchServe and `mlflow models serve` under wrk: levels, poison,
soak, worker kill): scripts/bench/load/, whose run.py docstring (`--help`) says more.

    python scripts/bench_load.py --output results/bench/load.json
"""

import signal
import sys

from bench.load.run import main

if __name__ == "__main__":
    # A SIGTERM unwinds like Ctrl-C: the servers and wrk processes started here are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    main()
