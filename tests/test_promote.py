"""Promoter logic with an in-memory registry (the real-server version is tests/test_registry_server.py)."""

import pytest

from promotion.gates import GateResult
from promotion.policy import Policy
from promotion.promote import NothingToRollBack, Promoter, PromotionConflict
from registry.audit import AuditLog
from registry.service import VersionInfo, VersionNotFound


class FakeRegistry:
    model_name = "restar"

    def __init__(self, accuracies: dict[int, float]):
        self.accuracies = accuracies
        self.aliases: dict[str, int] = {"staging": max(accuracies)}
        self.tags: dict[int, dict[str, str]] = {v: {} for v in accuracies}
        self.moves = 0

    def version(self, ref: int | str) -> VersionInfo:
        number = self.aliases.get(ref) if isinstance(ref, str) and not ref.isdigit() else int(ref)
        if number not in self.accuracies:
            raise VersionNotFound(f"no version {ref}")
        aliases = tuple(a for a, v in self.aliases.items() if v == number)
        return VersionInfo(
            "restar",
            number,
            "run",
            "src",
            aliases,
            dict(self.tags[number]),
            {"eval_accuracy": self.accuracies[number]},
        )

    def alias_version(self, alias: str) -> VersionInfo | None:
        return self.version(alias) if alias in self.aliases else None

    def set_alias(self, alias: str, version: int) -> None:
        self.aliases[alias] = version
        self.moves += 1

    def set_tags(self, version: int, tags: dict[str, str]) -> None:
        self.tags[version].update(tags)

    def versions(self) -> list[VersionInfo]:
        return [self.version(v) for v in sorted(self.accuracies, reverse=True)]


POLICY = Policy(name="test", gates=[{"name": "accuracy", "params": {"min": 0.9}}])


@pytest.fixture
def audit(database_url: str) -> AuditLog:
    """The audit log on each backend (conftest `database_url`: SQLite, PostgreSQL)."""
    return AuditLog(database_url)


def promoter(registry: FakeRegistry, audit: AuditLog) -> Promoter:
    return Promoter(registry, audit, POLICY, actor="tester")  # type: ignore[arg-type]


def test_passing_version_moves_production_and_is_audited(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95})
    decision = promoter(registry, audit).promote()  # default: the staging version
    assert decision.decision == "moved"
    assert registry.aliases["production"] == 1
    (row,) = audit.history("restar")
    assert (row.action, row.decision, row.version, row.previous_version) == ("promote", "moved", 1, None)
    assert row.gate_results[0]["gate"] == "accuracy"
    assert registry.tags[1]["restar.production"] == "promote:moved (test; 1/1 gates passed)"


def test_failing_gate_moves_nothing_and_records_the_failure(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95, 2: 0.85})
    promoter(registry, audit).promote(1)
    decision = promoter(registry, audit).promote(2)
    assert decision.decision == "rejected"
    assert registry.aliases["production"] == 1
    assert registry.moves == 1
    latest = audit.history("restar")[0]
    assert (latest.decision, latest.version, latest.previous_version) == ("rejected", 2, 1)
    assert latest.gate_results[0]["passed"] is False
    assert latest.gate_results[0]["margin"] == pytest.approx(-0.05)
    assert registry.tags[2]["restar.production"] == "promote:rejected (test; failed accuracy)"


def test_dry_run_moves_nothing(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95})
    decision = promoter(registry, audit).promote(1, dry_run=True)
    assert decision.decision == "passed"
    assert "production" not in registry.aliases
    assert audit.history("restar")[0].action == "dry_run"


def test_force_needs_a_reason_and_is_audited_as_forced(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.5})
    with pytest.raises(ValueError, match="reason"):
        promoter(registry, audit).promote(1, force=True)
    decision = promoter(registry, audit).promote(1, force=True, reason="hotfix")
    assert decision.decision == "moved"
    assert not decision.passed
    row = audit.history("restar")[0]
    assert (row.action, row.reason) == ("force", "hotfix")


def test_rollback_returns_to_the_previous_version(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95, 2: 0.96})
    with pytest.raises(NothingToRollBack):
        promoter(registry, audit).rollback()
    promoter(registry, audit).promote(1)
    promoter(registry, audit).promote(2)
    decision = promoter(registry, audit).rollback(reason="bad outputs")
    assert (decision.decision, decision.version, decision.previous_version) == ("moved", 1, 2)
    assert registry.aliases["production"] == 1
    assert audit.history("restar")[0].action == "rollback"


def test_rollbacks_walk_the_history_back_like_undo_never_toggling(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95, 2: 0.96, 3: 0.97, 4: 0.98})
    for version in (1, 2, 3, 4):
        promoter(registry, audit).promote(version)
    walked = []
    for reason in ("v4 mislabels sarcasm", "v3 too slow", "v2 drifts"):
        decision = promoter(registry, audit).rollback(reason=reason)
        walked.append((decision.previous_version, decision.version))
    assert walked == [(4, 3), (3, 2), (2, 1)]
    assert registry.aliases["production"] == 1
    with pytest.raises(NothingToRollBack, match="no earlier production version before v1"):
        promoter(registry, audit).rollback()
    rollbacks = [row for row in reversed(audit.history("restar")) if row.action == "rollback"]
    assert [(row.version, row.reason) for row in rollbacks] == [
        (3, "v4 mislabels sarcasm"),
        (2, "v3 too slow"),
        (1, "v2 drifts"),
    ]


def test_a_promotion_after_a_rollback_is_undone_first(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95, 2: 0.96, 3: 0.97})
    for version in (1, 2):
        promoter(registry, audit).promote(version)
    promoter(registry, audit).rollback()  # 2 -> 1
    promoter(registry, audit).promote(3)  # 1 -> 3
    assert promoter(registry, audit).rollback().version == 1  # undoes 3, not back to 2
    with pytest.raises(NothingToRollBack):
        promoter(registry, audit).rollback()


def test_rollback_to_goes_straight_to_a_version_production_held_before(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95, 2: 0.96, 3: 0.97, 4: 0.98})
    for version in (1, 2, 3):
        promoter(registry, audit).promote(version)
    with pytest.raises(NothingToRollBack, match="v4 is not a version production held before v3"):
        promoter(registry, audit).rollback(to=4)
    with pytest.raises(NothingToRollBack, match="held before"):
        promoter(registry, audit).rollback(to=3)  # the version in force
    decision = promoter(registry, audit).rollback(to=1, reason="back to the first")
    assert (decision.previous_version, decision.version) == (3, 1)
    with pytest.raises(NothingToRollBack):
        promoter(registry, audit).rollback()  # 2 and 3 were undone with the jump


def test_alias_moved_during_gates_aborts_without_moving(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95, 2: 0.96, 3: 0.97})
    promoter(registry, audit).promote(1)
    sneaky = promoter(registry, audit)
    original = sneaky.gates[0].check

    def check_while_someone_else_promotes(candidate, production):
        registry.aliases["production"] = 3  # another promotion finished meanwhile
        return original(candidate, production)

    sneaky.gates[0].check = check_while_someone_else_promotes
    with pytest.raises(PromotionConflict, match="moved from v1 to v3"):
        sneaky.promote(2)
    assert registry.aliases["production"] == 3
    assert audit.history("restar")[0].decision == "aborted"


def test_promoting_the_current_production_changes_nothing(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95})
    promoter(registry, audit).promote(1)
    assert promoter(registry, audit).promote(1).decision == "unchanged"
    assert registry.moves == 1


def test_crashing_gate_fails_closed(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95})
    broken = promoter(registry, audit)

    def explode(candidate, production):
        raise RuntimeError("plug-in bug")

    broken.gates[0].check = explode
    decision = broken.promote(1)
    assert decision.decision == "rejected"
    assert "plug-in bug" in decision.gates[0].detail


def test_status_warns_when_production_moved_outside(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95, 2: 0.96})
    promoter(registry, audit).promote(1)
    assert promoter(registry, audit).status()["warning"] is None
    registry.aliases["production"] = 2  # someone used the MLflow UI
    status = promoter(registry, audit).status()
    assert "moved outside restar-promote" in status["warning"]
    assert status["aliases"]["production"] == 2


class NoisyGate:
    """A gate that could not measure (as the latency gate on a host too noisy to time)."""

    name = "noisy"

    def check(self, candidate: VersionInfo, production: VersionInfo | None) -> GateResult:
        return GateResult(self.name, False, 12.0, 200.0, "could not measure reliably", False, True)


def test_an_inconclusive_gate_leaves_the_version_undecided_and_moves_nothing(audit: AuditLog) -> None:
    registry = FakeRegistry({1: 0.95, 2: 0.96})
    promoter(registry, audit).promote(1)
    noisy = promoter(registry, audit)
    noisy.gates.append(NoisyGate())  # type: ignore[arg-type]
    assert noisy.promote(2, dry_run=True).decision == "undecided"
    decision = noisy.promote(2)
    assert (decision.decision, registry.aliases["production"]) == ("undecided", 1)
    assert audit.history("restar")[0].decision == "undecided"
    registry.accuracies[2] = 0.5  # a gate that did decide, and failed: rejected, whatever the noise
    assert noisy.promote(2).decision == "rejected"
