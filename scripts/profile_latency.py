"""Entry point of where the batch-1 latency of an ONNX backend goes: scripts/bench/profile_latency.py, whose
docstring (`--help`) says more.

    python scripts/profile_latency.py --model outputs/dvc_run/model --output results/bench/profile.json
"""

from bench.profile_latency import main

if __name__ == "__main__":
    main()
