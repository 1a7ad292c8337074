"""Dependency audit: pip-audit over the packages installed in the project's venv, against a triage file.

Usually run through scripts/audit_deps.sh, which installs pip-audit in a venv of its own. Asks the
PyPI vulnerability service first and OSV when PyPI answered for no package.

Exit codes: 0 no finding outside the triage file, or no vulnerability service answered (a WARNING: the
network, not the product); 1 findings the triage file does not name; 2 a bad triage file.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_TRIAGE = Path(__file__).resolve().parents[1] / "configs" / "pip_audit_triage.yaml"
SERVICES = ("pypi", "osv")
RUN_TIMEOUT_S = 240


class TriageError(ValueError):
    """The triage file is not a list of {id, package, reason}."""


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...] = ()
    fix_versions: tuple[str, ...] = ()

    @property
    def ids(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass(frozen=True)
class Triaged:
    id: str
    package: str
    reason: str

    def covers(self, finding: Finding) -> bool:
        return normalize(self.package) == normalize(finding.package) and self.id in finding.ids


@dataclass
class Audit:
    """One pip-audit run against one vulnerability service."""

    service: str
    audited: int = 0
    skipped: int = 0
    findings: list[Finding] = field(default_factory=list)
    problem: str = ""  # why nothing was audited: pip-audit's error or a skip reason


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def load_triage(path: Path) -> list[Triaged]:
    entries = (yaml.safe_load(path.read_text()) or {}).get("triaged") or []
    triaged = []
    for index, entry in enumerate(entries):
        values = {key: str(entry.get(key) or "").strip() for key in ("id", "package", "reason")}
        missing = [key for key, value in values.items() if not value]
        if missing:
            raise TriageError(f"{path}: triaged[{index}] needs {', '.join(missing)}")
        triaged.append(Triaged(**values))
    return triaged


def parse_report(report: dict, service: str) -> Audit:
    """pip-audit's JSON: dependencies with `vulns`, or with a `skip_reason` when not audited."""
    audit = Audit(service)
    for dependency in report.get("dependencies", []):
        if "skip_reason" in dependency:
            audit.skipped += 1
            audit.problem = audit.problem or dependency["skip_reason"]
            continue
        audit.audited += 1
        audit.findings += [
            Finding(
                dependency["name"],
                dependency["version"],
                vuln["id"],
                tuple(vuln.get("aliases") or ()),
                tuple(vuln.get("fix_versions") or ()),
            )
            for vuln in dependency.get("vulns", [])
        ]
    return audit


def run_pip_audit(pip_audit: str, site_packages: str, service: str) -> Audit:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [pip_audit, "--path", site_packages, "--vulnerability-service", service, "--format", "json"]
        command += ["--output", str(report), "--aliases", "on", "--desc", "off", "--skip-editable"]
        command += ["--progress-spinner", "off", "--timeout", "10"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return Audit(service, problem=f"pip-audit ran past {RUN_TIMEOUT_S} s")
        try:
            return parse_report(json.loads(report.read_text()), service)
        except (OSError, ValueError):  # no report: pip-audit failed before auditing (network, usually)
            lines = (done.stderr or done.stdout).strip().splitlines()
            return Audit(service, problem=lines[-1] if lines else f"pip-audit exited {done.returncode}")


def first_answering_service(pip_audit: str, site_packages: str, services: list[str]) -> Audit | None:
    for service in services:
        audit = run_pip_audit(pip_audit, site_packages, service)
        if audit.audited:
            return audit
        print(f"pip-audit ({service}): no package audited ({audit.skipped} skipped): {audit.problem}")
    return None


def finding_row(finding: Finding) -> str:
    fixes = ", ".join(finding.fix_versions) or "none"
    aliases = f" ({', '.join(finding.aliases)})" if finding.aliases else ""
    return f"  {finding.package} {finding.version}: {finding.id}{aliases}; fixed in {fixes}"


def report(audit: Audit, triaged: list[Triaged]) -> int:
    open_findings = [f for f in audit.findings if not any(t.covers(f) for t in triaged)]
    print(
        f"pip-audit ({audit.service}): {audit.audited} packages audited, {audit.skipped} skipped, "
        f"{len(audit.findings)} findings, {len(audit.findings) - len(open_findings)} triaged"
    )
    for entry in triaged:
        if not any(entry.covers(f) for f in audit.findings):
            print(f"note: triaged {entry.id} ({entry.package}) is no longer found: remove it from the triage")
    if not open_findings:
        return 0
    print("FAIL: findings not in the triage file (upgrade, or triage with a reason):")
    print("\n".join(finding_row(finding) for finding in open_findings))
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pip-audit", required=True, help="the pip-audit executable")
    parser.add_argument("--site-packages", required=True, help="the installed set to audit")
    parser.add_argument("--triage", type=Path, default=DEFAULT_TRIAGE)
    parser.add_argument("--services", default=",".join(SERVICES), help="tried in order, comma-separated")
    args = parser.parse_args(argv)
    try:
        triaged = load_triage(args.triage)
    except (OSError, TriageError, yaml.YAMLError) as exc:
        print(f"ERROR: {exc}")
        return 2
    audit = first_answering_service(args.pip_audit, args.site_packages, args.services.split(","))
    if audit is None:
        print(
            "WARNING: dependency audit not done: no vulnerability service answered for any package. "
            "Not failing the build (the network, not the product); rerun where pypi.org's JSON API "
            "or api.osv.dev is reachable."
        )
        return 0
    return report(audit, triaged)


if __name__ == "__main__":
    sys.exit(main())
