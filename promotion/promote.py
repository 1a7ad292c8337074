"""Promote, force and roll back the `production` alias: gates first, then compare-and-set under a lock.

Every attempt leaves one audit record, whatever its outcome.

The alias lives in the MLflow registry and the record in the audit database, and no transaction spans
both; the registry (or this process) may die between the two writes, or after the registry moved the
alias but before its answer arrived. So a move is written ahead: under the lock the record is first
written `pending`, then the alias is set, then the record becomes `moved`. A record therefore claims a
move (`moved`) only once the registry confirmed it. A record left `pending` (the connection was lost
mid-move: the move may or may not have happened) is settled by the next promote, rollback or status
under the same lock, from what the registry then says the alias holds: `moved` if it holds the
record's version, else `aborted`. The tag on the version (`restar.<alias>`) only mirrors the audit log
for the MLflow UI: failing to write it is a warning.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import subprocess
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from promotion.gates import Gate, GateResult
from promotion.policy import Policy, build_gates
from registry.audit import AuditLog, AuditRecord
from registry.service import STAGING, Registry, RegistryError, RegistryUnavailable, VersionInfo

logger = logging.getLogger(__name__)
POST_PROMOTE_TIMEOUT_S = 900


class PromotionError(Exception):
    """Base class for promotion outcomes that are not a plain gate failure."""


class PromotionConflict(PromotionError):
    """The alias moved while gates ran (a concurrent promotion): nothing was changed."""


class NothingToRollBack(PromotionError):
    """The audit log holds no earlier production version to return to."""


@dataclass
class Decision:
    """What happened to one promotion attempt."""

    action: str  # promote | force | rollback | dry_run
    # moved | rejected | undecided (a gate could not measure) | aborted | unchanged | passed (dry run) |
    # pending (mid-move)
    decision: str
    model: str
    alias: str
    version: int
    previous_version: int | None
    gates: list[GateResult] = field(default_factory=list)
    reason: str = ""

    @property
    def passed(self) -> bool:
        """Every gate that decides passed (report-only gates are shown, never decide)."""
        return all(gate.passed or gate.advisory for gate in self.gates)

    @property
    def undecided(self) -> bool:
        """No gate failed, but one could not measure reliably: neither a pass nor a fail."""
        failed = [gate for gate in self.gates if not (gate.passed or gate.advisory)]
        return bool(failed) and all(gate.inconclusive for gate in failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "decision": self.decision,
            "model": self.model,
            "alias": self.alias,
            "version": self.version,
            "previous_version": self.previous_version,
            "gates_passed": self.passed,
            "gates": [gate.as_dict() for gate in self.gates],
            "reason": self.reason,
        }


def decision_tag(decision: Decision, policy: str) -> str:
    """One short line for the registry's versions table, e.g. `promote:rejected (release; failed
    accuracy)`; the audit log keeps the values."""
    failed = [gate.gate for gate in decision.gates if not (gate.passed or gate.advisory)]
    count = len(decision.gates)
    gates = f"failed {', '.join(failed)}" if failed else f"{count}/{count} gates passed"
    return f"{decision.action}:{decision.decision} ({policy}; {gates})"


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def run_gates(gates: list[Gate], candidate: VersionInfo, production: VersionInfo | None) -> list[GateResult]:
    """Every gate's result; a gate that crashes fails with the error as its detail."""
    results = []
    for gate in gates:
        try:
            result = gate.check(candidate, production)
        except Exception as exc:  # a broken plug-in must fail closed, not abort the audit
            result = GateResult(gate.name, False, None, None, f"gate error: {type(exc).__name__}: {exc}")
        logger.info("gate %s: %s", gate.name, "pass" if result.passed else "FAIL")
        results.append(result)
    return results


def undo_stack(moves: list[AuditRecord]) -> list[int]:
    """The versions the alias holds and held, as an undo stack replayed from the audit log's moves
    (oldest first): a promotion pushes its version; a rollback pops back to its version (or pushes it,
    if it is no longer on the stack). The last element is the version in force."""
    stack: list[int] = []
    for move in moves:
        if move.action == "rollback" and move.version in stack:
            last = len(stack) - 1 - stack[::-1].index(move.version)
            del stack[last + 1 :]
        else:
            stack.append(move.version)
    return stack


class Promoter:
    """Moves one alias (default `production`) of one registered model under one policy."""

    def __init__(self, registry: Registry, audit: AuditLog, policy: Policy, actor: str | None = None):
        self.registry = registry
        self.audit = audit
        self.policy = policy
        self.alias = policy.alias
        self.actor = actor or registry.user or default_actor()  # the server-authenticated user first
        self.gates = build_gates(policy)

    def promote(
        self, version: int | None = None, dry_run: bool = False, force: bool = False, reason: str = ""
    ) -> Decision:
        """Run every gate on `version` (default: the `staging` version) and move the alias if all pass."""
        if force and not reason.strip():
            raise ValueError("--force needs --reason")
        candidate = self.registry.version(version if version is not None else STAGING)
        expected = self.registry.alias_version(self.alias)
        gates = run_gates(self.gates, candidate, expected)
        action = "dry_run" if dry_run else ("force" if force else "promote")
        decision = Decision(
            action,
            "passed",
            self.registry.model_name,
            self.alias,
            candidate.version,
            expected.version if expected else None,
            gates,
            reason,
        )
        if dry_run:
            decision.decision = (
                "passed" if decision.passed else "undecided" if decision.undecided else "rejected"
            )
        elif decision.undecided and not force:
            decision.decision = "undecided"
        elif not (decision.passed or force):
            decision.decision = "rejected"
        elif expected is not None and expected.version == candidate.version and self._audited(expected):
            decision.decision = "unchanged"  # (a holder set outside restar-promote is moved again: audited)
        else:
            self._move(decision)
            return decision
        self._record(decision)
        return decision

    def rollback(self, reason: str = "", to: int | None = None) -> Decision:
        """Undo the last move of the alias that is still in force (see `undo_stack`): each rollback steps
        one move further back, never toggles. `to`: straight back to a version the alias held before,
        still on the stack. No gates run. If the alias was moved outside restar-promote (the MLflow UI),
        the first rollback returns it to the version the last audited move set."""
        self.settle()
        current = self.registry.alias_version(self.alias)
        if current is None:
            raise NothingToRollBack(f"{self.registry.model_name} has no {self.alias!r} alias to roll back")
        stack = undo_stack(self.audit.moves(self.registry.model_name, self.alias))
        if stack and stack[-1] != current.version:
            target_version = stack[-1]
            reason = (
                f"{reason} [{self.alias} v{current.version} was set outside restar-promote; back to the "
                f"last audited v{target_version}]"
            ).strip()
        elif to is not None:
            if to not in stack[:-1]:
                held = ", ".join(f"v{version}" for version in stack[:-1]) or "none"
                raise NothingToRollBack(
                    f"v{to} is not a version {self.alias} held before v{current.version} "
                    f"(to roll back to: {held})"
                )
            target_version = to
        elif len(stack) < 2:
            raise NothingToRollBack(
                f"the audit log has no earlier {self.alias} version before v{current.version} of "
                f"{self.registry.model_name}"
            )
        else:
            target_version = stack[-2]
        target = self.registry.version(target_version)
        decision = Decision(
            "rollback",
            "passed",
            self.registry.model_name,
            self.alias,
            target.version,
            current.version,
            [],
            reason,
        )
        self._move(decision)
        return decision

    def _audited(self, holder: VersionInfo) -> bool:
        """Whether the last audited move of the alias set the version that holds it now."""
        last = self.audit.last_move(self.registry.model_name, self.alias)
        return last is not None and last.version == holder.version

    def _lock(self) -> AbstractContextManager[None]:
        holder = f"{self.actor}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        return self.audit.lock(self.registry.model_name, holder)

    def settle(self) -> None:
        """Settle the records an interrupted move left `pending` (see the module docstring)."""
        with self._lock():
            self._settle_pending()

    def _settle_pending(self) -> None:
        """Under the lock, so no move is in flight: the registry says whether each announced move happened."""
        for record in self.audit.pending(self.registry.model_name, self.alias):
            holder = self.registry.alias_version(self.alias)
            held = holder.version if holder else None
            outcome = "moved" if held == record.version else "aborted"
            note = (
                f"[connection to the registry lost mid-move; settled by {self.actor}: "
                f"{self.alias} held v{held}]"
            )
            self.audit.settle(record.id, outcome, f"{record.reason} {note}".strip())
            logger.warning("interrupted move of %s to v%s settled: %s", self.alias, record.version, outcome)

    def _move(self, decision: Decision) -> None:
        """Compare-and-set under the model's lock: move only if the alias still holds the version it
        held when the gates started (`decision.previous_version`); the move is written ahead."""
        with self._lock():
            self._settle_pending()
            current = self.registry.alias_version(self.alias)
            current_version = current.version if current else None
            if current_version != decision.previous_version:
                decision.decision = "aborted"
                decision.reason = (
                    f"{decision.reason} [{self.alias} moved from v{decision.previous_version} to "
                    f"v{current_version} during this promotion]"
                ).strip()
                self._record(decision)
                raise PromotionConflict(decision.reason)
            decision.decision = "pending"
            record = self._write_audit(decision)
            self._set_alias(decision, record)
            decision.decision = "moved"
            self.audit.settle(record.id, "moved")
        self._tag(decision)
        self._post_promote(decision)

    def _post_promote(self, decision: Decision) -> None:
        """The policy's post_promote command; a failure is a warning, the move stands."""
        if not self.policy.post_promote:
            return
        env = {
            **os.environ,
            "RESTAR_MODEL": decision.model,
            "RESTAR_ALIAS": decision.alias,
            "RESTAR_VERSION": str(decision.version),
        }
        command = " ".join(self.policy.post_promote)
        try:
            done = subprocess.run(
                self.policy.post_promote,
                env=env,
                capture_output=True,
                text=True,
                timeout=POST_PROMOTE_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("post_promote %r did not run to the end: %s", command, exc)
            return
        if done.returncode != 0:
            logger.warning(
                "post_promote %r exited %d: %s", command, done.returncode, done.stderr.strip()[-2000:]
            )
        else:
            logger.info("post_promote %r done", command)

    def _set_alias(self, decision: Decision, record: AuditRecord) -> None:
        try:
            self.registry.set_alias(self.alias, decision.version)
        except RegistryUnavailable as exc:  # the move may have happened: the record stays pending
            raise RegistryUnavailable(
                f"{exc} (the move of {self.alias} to v{decision.version} is recorded as pending: the next "
                "restar-promote, or restar-promote status, settles it once the registry answers)"
            ) from exc
        except RegistryError as exc:  # the registry answered: nothing moved
            decision.decision = "aborted"
            decision.reason = f"{decision.reason} [registry refused the move: {exc}]".strip()
            self.audit.settle(record.id, "aborted", decision.reason)
            raise

    def _record(self, decision: Decision) -> None:
        self._write_audit(decision)
        self._tag(decision)

    def _write_audit(self, decision: Decision) -> AuditRecord:
        return self.audit.record(
            model_name=decision.model,
            alias=decision.alias,
            version=decision.version,
            previous_version=decision.previous_version,
            action=decision.action,
            decision=decision.decision,
            gate_results=[gate.as_dict() for gate in decision.gates],
            actor=self.actor,
            reason=decision.reason,
        )

    def _tag(self, decision: Decision) -> None:
        try:
            self.registry.set_tags(
                decision.version,
                {f"restar.{self.alias}": decision_tag(decision, self.policy.name)},
            )
        except RegistryError as exc:
            logger.warning("v%s not tagged (the audit log has the decision): %s", decision.version, exc)

    def status(self, limit: int = 10) -> dict[str, Any]:
        """Aliases now, recent decisions, and a warning when the alias moved outside restar-promote."""
        self.settle()
        versions = self.registry.versions()
        aliases = {alias: v.version for v in versions for alias in v.aliases}
        last = self.audit.last_move(self.registry.model_name, self.alias)
        current = aliases.get(self.alias)
        warning = None
        if current is not None and (last is None or last.version != current):
            undo = "" if last is None else f"restar-promote --rollback returns it to v{last.version}; "
            warning = (
                f"{self.alias} is v{current} but the last audited move set "
                f"{'nothing' if last is None else f'v{last.version}'}: it was moved outside restar-promote "
                f"(the MLflow UI?). {undo}restar-promote --version {current} gates v{current} and audits it"
            )
        return {
            "model": self.registry.model_name,
            "aliases": aliases,
            "versions": [v.version for v in versions],
            "recent": [record.as_dict() for record in self.audit.history(self.registry.model_name, limit)],
            "warning": warning,
        }
