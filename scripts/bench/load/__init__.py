"""The load benchmark (scripts/bench_load.py), one module a phase: baselines, levels, poison, soak,
kill; the servers that run them (servers, archive), the load generator (wrk, bodies), what is watched
(processes, torchserve_view), and the verdicts and plots (report). run.py holds the command line."""
