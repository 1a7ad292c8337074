"""The benchmarks behind scripts/bench_*.py and scripts/profile_latency.py (each script is a thin entry
point that runs one module here), and common.py, what they all share."""
