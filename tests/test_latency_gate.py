"""The latency gate judges the model, not the host: the same verdict with and without a CPU-bound busy
loop on every core (scripts/bench_latency_gate.py, through the real `restar bench` subprocess)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import bench_latency_gate  # noqa: E402

from promotion.gates import LatencyGate, LatencyParams  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_verdict_is_the_same_on_a_busy_host(
    tiny_model_dir: Path, reviews_dir: Path, tmp_path: Path
) -> None:
    rows = pd.read_json(sorted(reviews_dir.glob("*.jsonl*"))[0], lines=True, nrows=200)
    pd.DataFrame({"text": rows["text"].astype(str)}).to_parquet(tmp_path / "eval.parquet")
    output = tmp_path / "gate.json"
    args = ["--model-uri", str(tiny_model_dir), "--data", str(tmp_path / "eval.parquet"), "--calls", "15"]
    args += ["--trials", "3", "--warmup", "5", "--busy-seconds", "300", "--output", str(output)]
    report = bench_latency_gate.main(args)
    quiet, busy = report["runs"].values()
    assert quiet["verdict"] == busy["verdict"] == "pass", (quiet["detail"], busy["detail"])
    assert report["same_verdict"] is True
    assert json.loads(output.read_text())["runs"] == json.loads(json.dumps(report["runs"]))
    assert output.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A threshold just above the model's own cost, where a busy host's waiting (wall time: 1.3 to 1.8
    # times the quiet figure here) would tip a wall-time gate over: the CPU-time gate decides the same.
    threshold = 1.6 * quiet["cpu_avg_ms"]
    params = LatencyParams(max_avg_ms=threshold, max_p95_ms=10_000, trials=3)
    verdicts = {run["verdict"] for run in report["runs"].values()}
    judged = [LatencyGate(params).judge(run["bench"], params) for run in (quiet, busy)]
    assert [(result.passed, result.inconclusive) for result in judged] == [(True, False)] * 2, verdicts
