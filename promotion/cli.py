"""`restar-promote`: gate a version into `production`, force, roll back, or show the status.

The policy in force: --policy, else $RESTAR_PROMOTION_POLICY, else the one the last pipeline run used
(outputs/dvc_run/promotion.json), else configs/promotion.yaml. The first line printed names it and
why (with --json, the `policy` key).

Exit codes: 0 done (a dry run: the gates pass), 1 a gate failed (nothing moved; a dry run too),
2 bad usage, 3 registry problem (unknown version, no `staging`, registry unreachable), 4 a concurrent
promotion got there first, 5 the registry refused the login or the permission (MLflow's basic-auth
app; nothing moved).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from registry.cli import EXIT_REGISTRY, json_option, table
from registry.errors import RegistryAuthError, RegistryError

if TYPE_CHECKING:  # the promoter imports MLflow and SQLAlchemy: `--help` and usage errors skip them
    from promotion.policy import PolicyChoice
    from promotion.promote import Decision, Promoter

EXIT_REJECTED = 1
EXIT_CONFLICT = 4
EXIT_AUTH = 5
EXIT_UNDECIDED = 7  # a gate could not measure reliably (the latency gate on a noisy host): nothing moved
EXIT_CODES = {"rejected": EXIT_REJECTED, "undecided": EXIT_UNDECIDED}  # decisions that are not a success


class PromoteError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def registry_failure(exc: RegistryError) -> PromoteError:
    return PromoteError(str(exc), EXIT_AUTH if isinstance(exc, RegistryAuthError) else EXIT_REGISTRY)


def open_promoter(choice: PolicyChoice, audit_url: str | None, actor: str | None = None) -> Promoter:
    """Policy, registry and audit log; any problem becomes a PromoteError with the right exit code."""
    from promotion.policy import PolicyError, load_policy
    from promotion.promote import Promoter
    from registry.audit import AuditLog
    from registry.service import Registry

    try:
        policy = load_policy(choice.path)
        return Promoter(Registry(policy.model), AuditLog(audit_url), policy, actor=actor)
    except PolicyError as exc:
        raise PromoteError(f"{exc} ({choice.why})", 2) from exc
    except RegistryError as exc:
        raise registry_failure(exc) from exc


def gate_table(decision: Decision) -> str:
    rows = [
        (
            g.gate,
            ("PASS" if g.passed else "UNDECIDED" if g.inconclusive else "FAIL")
            + (" (report)" if g.advisory else ""),
            _number(g.value),
            _number(g.threshold),
            _number(g.margin),
            g.detail,
        )
        for g in decision.gates
    ]
    return table(["gate", "result", "value", "threshold", "margin", "detail"], rows, max_width=110)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def summary(decision: Decision) -> str:
    previous = "none" if decision.previous_version is None else f"v{decision.previous_version}"
    moved = f"{decision.alias} -> v{decision.version} (was {previous})"
    if decision.action == "rollback":
        moved += "; a rollback runs no gates"
    what = {
        "moved": moved,
        "rejected": f"v{decision.version} rejected: {decision.alias} stays {previous}",
        "undecided": (
            f"v{decision.version} undecided: a gate could not measure reliably, {decision.alias} stays "
            f"{previous}; measure again when the host is quieter"
        ),
        "unchanged": f"v{decision.version} already holds {decision.alias}",
        "passed": f"v{decision.version} would pass",
        "aborted": f"aborted: {decision.reason}",
    }[decision.decision]
    return f"{decision.action}: {what}"


def announce_policy(choice: PolicyChoice, promoter: Promoter, as_json: bool) -> dict[str, str]:
    """Print which policy is in force and why (the first line; JSON output carries it instead)."""
    if not as_json:
        click.echo(choice.describe(promoter.policy.name))
    return choice.as_dict(promoter.policy.name)


def emit(decision: Decision, as_json: bool, output: Path | None, policy: dict[str, str]) -> None:
    """The decision as a table and a summary, or as JSON (with the policy that decided it)."""
    payload = {"policy": policy, **decision.as_dict()}
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(payload, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    if decision.gates:
        click.echo(gate_table(decision))
    click.echo(summary(decision))


def execute(
    promoter: Promoter,
    version: int | None,
    dry_run: bool = False,
    rollback: bool = False,
    force: bool = False,
    reason: str = "",
    to: int | None = None,
) -> Decision:
    """Run one promotion action, mapping service errors to exit codes."""
    from promotion.promote import NothingToRollBack, PromotionConflict
    from registry.audit import LockTimeout

    try:
        if rollback:
            return promoter.rollback(reason, to=to)
        return promoter.promote(version, dry_run=dry_run, force=force, reason=reason)
    except (PromotionConflict, LockTimeout) as exc:
        raise PromoteError(str(exc), EXIT_CONFLICT) from exc
    except RegistryError as exc:
        raise registry_failure(exc) from exc
    except NothingToRollBack as exc:
        raise PromoteError(str(exc), EXIT_REGISTRY) from exc


def write_release_report(
    promoter: Promoter, decision: Decision, as_json: bool, out: Path | None = None
) -> None:
    """After a decision: `restar report` of the version (to `out`, default outputs/reports/), its path
    printed and logged to the version's run under `reports/`. The decision stands whatever happens
    here, so a failure only warns."""
    from restar.report.release import write_report

    try:
        path = write_report(promoter.registry, promoter.audit, promoter.policy, decision.version, out)
        run_id = promoter.registry.version(decision.version).run_id
        if run_id:
            promoter.registry.client.log_artifact(run_id, str(path), "reports")
    except Exception as exc:  # any report failure leaves the move standing
        click.echo(
            f"WARNING: v{decision.version} {decision.decision}, but its report failed: {exc}", err=True
        )
        return
    if not as_json:  # --json output stays one document (the report is logged to the run)
        click.echo(f"report: {path}")


def policy_option(command: Any) -> Any:
    return click.option(
        "--policy",
        "policy_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=(
            "Promotion policy (YAML): the gates and their thresholds [default: $RESTAR_PROMOTION_POLICY, "
            "else the policy of the last pipeline run (outputs/dvc_run/promotion.json), "
            "else configs/promotion.yaml]."
        ),
    )(command)


def audit_option(command: Any) -> Any:
    return click.option(
        "--audit-db",
        "audit_url",
        envvar="RESTAR_AUDIT_DB_URL",
        help="SQLAlchemy URL of the audit log [default: next to the MLflow store].",
    )(command)


@click.group(invoke_without_command=True)
@click.option(
    "--version", type=click.IntRange(min=1), help="Version to promote [default: the `staging` one]."
)
@policy_option
@click.option(
    "--dry-run", is_flag=True, help="Run the gates and record them; move nothing (exit 1 if a gate fails)."
)
@click.option(
    "--rollback",
    is_flag=True,
    help="Undo the last move of `production` still in force (audited, no gates); again to step further back.",
)
@click.option(
    "--to",
    "rollback_to",
    type=click.IntRange(min=1),
    help="With --rollback: straight back to this version, one production held before.",
)
@click.option("--force", is_flag=True, help="Move even if a gate fails (gates still run; needs --reason).")
@click.option("--reason", default="", help="Why: recorded in the audit log.")
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the decision JSON here."
)
@audit_option
@json_option
@click.pass_context
def cli(
    ctx: click.Context,
    version: int | None,
    policy_path: Path | None,
    dry_run: bool,
    rollback: bool,
    rollback_to: int | None,
    force: bool,
    reason: str,
    output: Path | None,
    audit_url: str | None,
    as_json: bool,
) -> None:
    """Promote a registered version to `production` only if every gate of the policy passes.

    \b
    Examples:
        restar-promote --version 3
        restar-promote --dry-run
        restar-promote --rollback --reason "v4 mislabels sarcasm"
        restar-promote --rollback --to 2 --reason "back to the last good one"
        restar-promote status
    """
    if ctx.invoked_subcommand is not None:
        return
    if rollback and (version or force or dry_run):
        raise click.UsageError("--rollback takes no --version, --force or --dry-run")
    if rollback_to is not None and not rollback:
        raise click.UsageError("--to goes with --rollback")
    if force and not reason.strip():
        raise click.UsageError("--force needs --reason")
    from promotion.policy import choose_policy

    choice = choose_policy(policy_path)
    promoter = open_promoter(choice, audit_url)
    policy = announce_policy(choice, promoter, as_json)
    decision = execute(
        promoter, version, dry_run=dry_run, rollback=rollback, force=force, reason=reason, to=rollback_to
    )
    emit(decision, as_json, output, policy)
    if decision.decision == "moved":
        write_release_report(promoter, decision, as_json)
    if decision.decision in EXIT_CODES:  # a dry run that would be rejected fails the same way
        ctx.exit(EXIT_CODES[decision.decision])


@cli.command("status")
@policy_option
@audit_option
@click.option(
    "--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Recent decisions to show."
)
@json_option
def status_command(policy_path: Path | None, audit_url: str | None, limit: int, as_json: bool) -> None:
    """Aliases now, recent decisions, and a warning if `production` moved outside restar-promote.

    Example: restar-promote status
    """
    from promotion.policy import choose_policy

    choice = choose_policy(policy_path)
    promoter = open_promoter(choice, audit_url)
    policy = announce_policy(choice, promoter, as_json)
    try:
        status = promoter.status(limit)
    except RegistryError as exc:
        raise registry_failure(exc) from exc
    if as_json:
        click.echo(json.dumps({"policy": policy, **status}, indent=2, default=str))
        return
    aliases = (
        ", ".join(f"{alias}=v{version}" for alias, version in sorted(status["aliases"].items())) or "none"
    )
    click.echo(f"{status['model']}: versions {status['versions'] or 'none'}; aliases {aliases}")
    rows = [
        (
            r["created_at"],
            r["action"],
            r["decision"],
            r["version"],
            r["previous_version"],
            r["actor"],
            r["reason"],
        )
        for r in status["recent"]
    ]
    click.echo(table(["time", "action", "decision", "version", "previous", "actor", "reason"], rows))
    if status["warning"]:
        click.echo(f"WARNING: {status['warning']}", err=True)
