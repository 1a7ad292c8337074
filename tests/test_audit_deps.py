"""scripts/audit_deps.py with a stand-in pip-audit that answers per vulnerability service as told."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "audit_deps.py"

# Writes the report named for the service in $STUB_REPORTS to --output; "unreachable" fails as pip-audit
# does when the service cannot be resolved.
STUB = """#!{python}
import json, pathlib, sys
args = sys.argv[1:]
service = args[args.index("--vulnerability-service") + 1]
answer = json.loads(pathlib.Path({reports!r}).read_text())[service]
if answer == "unreachable":
    sys.exit("requests.exceptions.ConnectionError: Failed to resolve 'api.osv.dev'")
pathlib.Path(args[args.index("--output") + 1]).write_text(json.dumps(answer))
sys.exit(1 if any(d.get("vulns") for d in answer["dependencies"]) else 0)
"""

URLLIB3_VULN = {"id": "PYSEC-2099-1", "aliases": ["GHSA-aaaa-bbbb-cccc"], "fix_versions": ["9.9.9"]}
WITH_FINDING = {
    "dependencies": [
        {"name": "urllib3", "version": "2.0.0", "vulns": [URLLIB3_VULN]},
        {"name": "click", "version": "8.1.0", "vulns": []},
    ]
}
CLEAN = {"dependencies": [{"name": "click", "version": "8.1.0", "vulns": []}]}
ALL_SKIPPED = {
    "dependencies": [
        {
            "name": "click",
            "skip_reason": "Dependency not found on PyPI and could not be audited: click (8.1.0)",
        }
    ]
}


def audit(tmp_path: Path, answers: dict, triaged: list[dict] | None = None) -> subprocess.CompletedProcess:
    reports = tmp_path / "answers.json"
    reports.write_text(json.dumps(answers))
    stub = tmp_path / "pip-audit"
    stub.write_text(STUB.format(python=sys.executable, reports=str(reports)))
    stub.chmod(0o755)
    triage = tmp_path / "triage.yaml"
    triage.write_text(yaml.safe_dump({"triaged": triaged or []}))
    command = [sys.executable, str(SCRIPT), "--pip-audit", str(stub), "--site-packages", str(tmp_path)]
    return subprocess.run([*command, "--triage", str(triage)], capture_output=True, text=True, timeout=60)


def test_an_untriaged_finding_fails(tmp_path: Path) -> None:
    done = audit(tmp_path, {"pypi": WITH_FINDING, "osv": "unreachable"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "urllib3 2.0.0: PYSEC-2099-1 (GHSA-aaaa-bbbb-cccc); fixed in 9.9.9" in done.stdout


def test_a_finding_triaged_by_alias_passes_and_stale_entries_are_named(tmp_path: Path) -> None:
    triaged = [
        {"id": "GHSA-aaaa-bbbb-cccc", "package": "URLLib3", "reason": "we never send proxied requests"},
        {"id": "GHSA-gone-gone-gone", "package": "click", "reason": "was fixed"},
    ]
    done = audit(tmp_path, {"pypi": WITH_FINDING, "osv": "unreachable"}, triaged)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 packages audited, 0 skipped, 1 findings, 1 triaged" in done.stdout
    assert "GHSA-gone-gone-gone (click) is no longer found" in done.stdout


def test_a_triage_entry_for_another_package_does_not_cover_the_finding(tmp_path: Path) -> None:
    triaged = [{"id": "PYSEC-2099-1", "package": "requests", "reason": "wrong package"}]
    done = audit(tmp_path, {"pypi": WITH_FINDING, "osv": "unreachable"}, triaged)
    assert done.returncode == 1


def test_osv_is_asked_when_pypi_audits_nothing(tmp_path: Path) -> None:
    done = audit(tmp_path, {"pypi": ALL_SKIPPED, "osv": WITH_FINDING})
    assert done.returncode == 1
    assert "pip-audit (pypi): no package audited (1 skipped): Dependency not found" in done.stdout
    assert "pip-audit (osv): 2 packages audited" in done.stdout


def test_no_service_answering_warns_without_failing(tmp_path: Path) -> None:
    done = audit(tmp_path, {"pypi": ALL_SKIPPED, "osv": "unreachable"})
    assert done.returncode == 0
    assert "WARNING: dependency audit not done" in done.stdout
    assert "Failed to resolve 'api.osv.dev'" in done.stdout


@pytest.mark.parametrize(
    "entry", [{"id": "X-1", "package": "click"}, {"id": "", "package": "a", "reason": "b"}]
)
def test_a_triage_entry_needs_id_package_and_reason(tmp_path: Path, entry: dict) -> None:
    done = audit(tmp_path, {"pypi": CLEAN, "osv": CLEAN}, [entry])
    assert done.returncode == 2
    assert "triaged[0] needs" in done.stdout


def test_the_committed_triage_file_is_valid_and_ci_runs_the_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("audit_deps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "audit_deps", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    for entry in module.load_triage(module.DEFAULT_TRIAGE):
        assert entry.reason
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert ci.index("scripts/test.sh") < ci.index("scripts/audit_deps.sh")
