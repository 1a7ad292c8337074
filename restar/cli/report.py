"""`restar report`: one self-contained HTML page on a registered version."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from restar.cli.errors import user_errors
from restar.cli.options import EXISTING_FILE, audit_db_option, model_option, out_file_option

if TYPE_CHECKING:
    from promotion.policy import Policy


@click.command("report")
@click.argument("ref", metavar="VERSION")
@model_option
@click.option(
    "--policy",
    "policy_path",
    type=EXISTING_FILE,
    help="Promotion policy whose gates the page checks [default: as restar-promote chooses it: "
    "$RESTAR_PROMOTION_POLICY, else the last pipeline run's, else configs/promotion.yaml].",
)
@out_file_option("HTML file to write [default: outputs/reports/<model>-v<N>.html].")
@audit_db_option("SQLAlchemy URL of the audit log [default: next to the MLflow store].")
@click.option(
    "--measure-latency",
    is_flag=True,
    help="Run the latency gate now instead of showing what it recorded at promotion.",
)
@user_errors
def report_command(
    ref: str,
    model_name: str,
    policy_path: Path | None,
    out_path: Path | None,
    audit_url: str | None,
    measure_latency: bool,
) -> None:
    """One self-contained HTML page on VERSION (a number or an alias): gates with margins, metrics,
    evaluation plots, latency, lineage and audit history.

    Example: restar report production
    """
    from registry.audit import AuditLog
    from registry.service import Registry
    from restar.report.release import write_report

    policy = checked_policy(policy_path)
    registry = Registry(model_name)
    path = write_report(registry, AuditLog(audit_url), policy, ref, out_path, measure_latency)
    click.echo(f"report written to {path}")


def checked_policy(policy_path: Path | None) -> Policy:
    """The promotion policy restar-promote would choose, said on stdout, with its gates built: unknown
    gates and bad parameters are a usage error before the registry is asked."""
    from promotion.policy import PolicyError, build_gates, choose_policy, load_policy

    choice = choose_policy(policy_path)
    click.echo(f"policy {choice.path} {choice.why}")
    try:
        policy = load_policy(choice.path)
        build_gates(policy)
    except PolicyError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from exc
    return policy
