import textwrap
from pathlib import Path

import pytest

from promotion.gates import AccuracyGate, CoverageGate, LatencyGate, NoRegressionGate
from promotion.policy import Policy, PolicyError, available_gates, build_gates, load_policy
from registry.service import VersionInfo

REPO_ROOT = Path(__file__).resolve().parents[1]


def version(number: int = 2, **metrics: float) -> VersionInfo:
    return VersionInfo(name="restar", version=number, run_id="r", source="s", metrics=metrics)


@pytest.mark.parametrize(("value", "passed"), [(0.90, True), (0.9001, True), (0.8999, False)])
def test_accuracy_gate_at_the_threshold(value: float, passed: bool) -> None:
    gate = AccuracyGate(AccuracyGate.Params())
    result = gate.check(version(eval_accuracy=value), None)
    assert result.passed is passed
    assert result.threshold == 0.90
    assert result.margin == pytest.approx(value - 0.90)


def test_accuracy_gate_fails_when_the_metric_is_missing() -> None:
    result = AccuracyGate(AccuracyGate.Params()).check(version(), None)
    assert not result.passed
    assert "no eval_accuracy" in result.detail


@pytest.mark.parametrize(("value", "passed"), [(0.80, True), (0.81, True), (0.79, False)])
def test_coverage_gate_at_the_threshold(value: float, passed: bool) -> None:
    result = CoverageGate(CoverageGate.Params(min=0.80)).check(version(eval_coverage=value), None)
    assert result.passed is passed


@pytest.mark.parametrize(("value", "passed"), [(0.69, True), (0.695, True), (0.6899, False)])
def test_no_regression_gate_at_the_tolerance(value: float, passed: bool) -> None:
    gate = NoRegressionGate(NoRegressionGate.Params(metric="eval_macro_f1", tolerance=0.01))
    production = version(1, eval_macro_f1=0.70)
    result = gate.check(version(2, eval_macro_f1=value), production)
    assert result.passed is passed
    assert result.threshold == pytest.approx(0.69)


def test_no_regression_passes_without_production() -> None:
    gate = NoRegressionGate(NoRegressionGate.Params())
    assert gate.check(version(eval_macro_f1=0.1), None).passed


def bench_report(cpu_avg: float, cpu_p95: float, trial_means: list[float] | None = None) -> dict:
    """What `restar bench --json` prints, for a model whose calls cost `cpu_avg` ms of CPU."""
    trial_means = trial_means or [cpu_avg] * 5
    median = sorted(trial_means)[len(trial_means) // 2]
    return {
        "latency_avg_ms": cpu_avg * 3,  # wall time on a busy host: not what the gate judges
        "latency_p95_ms": cpu_p95 * 3,
        "latency_cpu_median_trial_avg_ms": cpu_avg,
        "latency_cpu_p95_ms": cpu_p95,
        "latency_cpu_trial_avg_ms": trial_means,
        "latency_cpu_spread": (max(trial_means) - min(trial_means)) / median,
        "calls": 10 * len(trial_means),
        "trials": len(trial_means),
        "load_avg_1m": [2.0, 2.1],
        "hardware": {"torch_threads": 1, "cpu": "test cpu"},
    }


@pytest.mark.parametrize(
    ("avg", "p95", "passed"),
    [
        (200.0, 300.0, True),
        (199.9, 300.0, True),
        (200.1, 300.0, False),
        (100.0, 400.1, False),
    ],
)
def test_latency_gate_at_the_threshold(monkeypatch, avg: float, p95: float, passed: bool) -> None:
    calls = []

    def fake_benchmark(model_uri, params):
        calls.append(model_uri)
        return bench_report(avg, p95)

    monkeypatch.setattr(LatencyGate, "run_benchmark", staticmethod(fake_benchmark))
    gate = LatencyGate(LatencyGate.Params(max_avg_ms=200, max_p95_ms=400))
    result = gate.check(version(7), None)
    assert calls == ["models:/restar/7"]
    assert result.passed is passed and not result.inconclusive
    assert result.margin == pytest.approx(200 - avg)
    assert "1 thread(s)" in result.detail and f"wall avg {avg * 3:.1f} ms" in result.detail


@pytest.mark.parametrize(
    ("trial_means", "passed", "inconclusive"),
    [
        ([10.0, 10.5, 9.8, 10.2, 10.1], True, False),  # steady
        ([10.0, 10.0, 10.0, 10.0, 12.4], True, False),  # 24% apart: within max_spread
        ([10, 10, 10, 10, 13], False, True),  # 30% apart, one pass over the limit: the noise decides
        ([8, 9, 10, 10, 11.5], True, False),  # 35% apart, every pass under the limit
        ([12.5, 13, 14, 15, 18], False, False),  # 39% apart, every pass over the limit
    ],
)
def test_latency_gate_refuses_to_decide_only_when_the_noise_could_flip_the_verdict(
    trial_means: list[float], passed: bool, inconclusive: bool
) -> None:
    gate = LatencyGate(LatencyGate.Params(max_avg_ms=12, max_spread=0.25))
    median = sorted(trial_means)[len(trial_means) // 2]
    result = gate.judge(bench_report(median, 20.0, trial_means), gate.params)  # type: ignore[arg-type]
    assert (result.passed, result.inconclusive) == (passed, inconclusive)
    assert ("could not measure reliably" in result.detail) is inconclusive


def test_built_in_gates_come_through_the_entry_point_group() -> None:
    gates = available_gates()
    assert {"accuracy", "coverage", "latency", "no_regression"} <= set(gates)
    assert gates["accuracy"] is AccuracyGate


def test_third_party_gate_plugin_is_discovered(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "restar_test_plugin.py").write_text(
        textwrap.dedent("""
        from typing import ClassVar
        from promotion.gates import Gate, GateParams

        class WordsParams(GateParams):
            max_words: int = 5

        class ReleaseNotesGate(Gate):
            name = "release_notes"
            Params: ClassVar[type[GateParams]] = WordsParams

            def check(self, candidate, production):
                notes = candidate.tags.get("notes", "")
                return self.result(bool(notes), len(notes.split()), self.params.max_words, "notes present")
    """)
    )
    dist = tmp_path / "restar_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: restar-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[restar.gates]\nrelease_notes = restar_test_plugin:ReleaseNotesGate\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    assert "release_notes" in available_gates()
    policy = Policy(name="p", gates=[{"name": "release_notes", "params": {"max_words": 3}}])
    (gate,) = build_gates(policy)
    candidate = VersionInfo("restar", 1, None, "s", tags={"notes": "fixes sarcasm"})
    assert gate.check(candidate, None).passed


def test_unknown_gate_lists_the_known_ones() -> None:
    with pytest.raises(PolicyError) as error:
        build_gates(Policy(name="p", gates=[{"name": "accurracy"}]))
    assert "unknown gate 'accurracy'" in str(error.value)
    assert "accuracy, coverage, latency, no_regression" in str(error.value)


def test_bad_gate_parameter_is_named() -> None:
    with pytest.raises(PolicyError, match=r"gates\.0\.params\.min"):
        build_gates(Policy(name="p", gates=[{"name": "accuracy", "params": {"min": 1.5}}]))
    with pytest.raises(PolicyError, match=r"gates\.1\.params\.max_avg"):
        build_gates(
            Policy(name="p", gates=[{"name": "coverage"}, {"name": "latency", "params": {"max_avg": 1}}])
        )


def test_policy_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("name: x\ngates: []\n")
    with pytest.raises(PolicyError, match="gates"):
        load_policy(path)
    path.write_text("name: x\ngatez: [{name: accuracy}]\n")
    with pytest.raises(PolicyError, match="gatez"):
        load_policy(path)
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["promotion.yaml", "promotion_smoke.yaml", "promotion_ci.yaml"])
def test_shipped_policies_build(name: str) -> None:
    policy = load_policy(REPO_ROOT / "configs" / name)
    assert build_gates(policy)
    if name == "promotion.yaml":
        gates = {spec.name: spec.params for spec in policy.gates}
        assert gates["accuracy"]["min"] == 0.90
        assert gates["latency"]["max_avg_ms"] == 200
        assert not gates["rank_eval"].get("enforce", False)  # the business proxy informs, never blocks
    else:
        assert "not the release" in (REPO_ROOT / "configs" / name).read_text().lower()
