"""scripts/bench_speed.py's release rule (scripts/bench/speed.py): the fastest backend among those
within 0.1 point of fp32."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from bench import speed as bench_speed  # noqa: E402


def backend(delta_pp: float, avg_ms: float) -> dict:
    return {"accuracy_delta_pp": delta_pp, "pyfunc_natural": {"latency_avg_ms": avg_ms}}


def test_the_fastest_backend_that_keeps_the_accuracy_is_chosen() -> None:
    measured = {"torch": backend(0.0, 100.0), "onnx": backend(-0.04, 60.0), "onnx-int8": backend(-0.1, 30.0)}
    assert bench_speed.release_backend(measured) == "onnx-int8"


def test_a_faster_backend_that_costs_accuracy_is_passed_over() -> None:
    measured = {"torch": backend(0.0, 100.0), "onnx": backend(0.0, 60.0), "onnx-int8": backend(-0.77, 30.0)}
    assert bench_speed.release_backend(measured) == "onnx"
    measured["onnx"] = backend(-0.2, 60.0)
    assert bench_speed.release_backend(measured) == "torch"
