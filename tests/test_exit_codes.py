"""Every row of the exit-code table (docs/cli.md), through the real commands on a real embedded registry, so
the table and the commands cannot drift apart. Each code has scenarios; each scenario runs the installed
`restar` / `restar-promote` in a subprocess and must exit with its row's code. Code 5 (the registry
refused the login) needs MLflow's basic-auth server: tests/test_security.py runs it there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from registry.audit import AuditLog
from registry.service import Registry
from restar.model.pyfunc import log_pyfunc

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow
ELSEWHERE = {5: "tests/test_security.py::test_wrong_password_is_named_and_moves_nothing"}


def documented_codes() -> set[int]:
    page = (REPO_ROOT / "docs" / "cli.md").read_text()
    table = page.split("**Exit codes**", 1)[1].split("\n\n", 2)[1]
    return {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}


@pytest.fixture(scope="module")
def store(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """v1 registered (accuracy 0.5) in an embedded store, an eval file, policies and inputs."""
    root = tmp_path_factory.mktemp("codes")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "RESTAR_AUDIT_DB_URL": f"sqlite:///{root / 'audit.db'}",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        with mlflow.start_run() as run:
            info = log_pyfunc(tiny_model_dir)
        Registry("restar").register(info.model_uri, run.info.run_id, {}, {"eval_accuracy": 0.5})
        mlflow.set_tracking_uri(None)
    texts = ["Great value.", "Broke in a day.", "It is fine."] * 10
    pd.DataFrame({"text": texts}).to_parquet(root / "eval.parquet")
    pd.DataFrame({"text": texts}).to_csv(root / "in.csv", index=False)
    pd.DataFrame({"review": texts}).to_csv(root / "no_text.csv", index=False)
    (root / "blocker").write_text("a file where the output's folder should be\n")
    for name, gates in {
        "pass": [{"name": "accuracy", "params": {"min": 0.0}}],
        "fail": [{"name": "accuracy", "params": {"min": 0.99}}],
        "noisy": [  # passes that disagree, on both sides of the limit: the gate cannot decide
            {
                "name": "latency_limit_inside_the_noise",
                "params": {
                    "calls": 5,
                    "warmup": 2,
                    "trials": 3,
                    "max_spread": 1e-6,
                    "data": str(root / "eval.parquet"),
                },
            }
        ],
    }.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "gates": gates}))
    env["PYTHONPATH"] = install_gate_plugin(root / "plugins")
    return {"root": str(root), **env}


def install_gate_plugin(folder: Path) -> str:
    """A gate plug-in (module and entry point) in `folder`, for the commands' PYTHONPATH: the real
    latency gate, with its average limit put between the fastest and the slowest pass it measured, so
    that the noise straddles the limit on any host."""
    folder.mkdir()
    (folder / "restar_noise_gate.py").write_text(
        "from promotion.gates import LatencyGate\n\n\n"
        "class LimitInsideTheNoise(LatencyGate):\n"
        "    name = 'latency_limit_inside_the_noise'\n\n"
        "    def judge(self, report, params):\n"
        "        means = report['latency_cpu_trial_avg_ms']\n"
        "        limit = (min(means) + max(means)) / 2\n"
        "        return super().judge(report, params.model_copy(update={'max_avg_ms': limit}))\n"
    )
    dist = folder / "restar_noise_gate-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: restar-noise-gate\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[restar.gates]\nlatency_limit_inside_the_noise = restar_noise_gate:LimitInsideTheNoise\n"
    )
    return os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


def run(store: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in store.items() if key != "root"}
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=store["root"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def scenarios(root: str) -> dict[int, list[list[str]]]:
    predict = ["restar", "predict", "--input", f"{root}/in.csv", "--model-uri"]
    return {
        0: [["restar-promote", "--version", "1", "--dry-run", "--policy", f"{root}/pass.yaml"]],
        1: [
            [
                "restar",
                "predict",
                "--input",
                f"{root}/no_text.csv",
                "--output",
                f"{root}/o.csv",
                "--model-uri",
                "models:/restar/1",
            ],
            ["restar-promote", "--version", "1", "--dry-run", "--policy", f"{root}/fail.yaml"],
        ],
        2: [["restar", "predict", "--no-such-option"], ["restar-promote", "--to", "1"]],
        3: [  # one "not found", the same code from every command
            [*predict, "models:/restar/99", "--output", f"{root}/o.csv"],
            [*predict, "models:/restar@nope", "--output", f"{root}/o.csv"],
            ["restar", "report", "99", "--policy", f"{root}/pass.yaml"],
            ["restar", "registry", "describe", "99"],
            ["restar-promote", "--version", "99", "--policy", f"{root}/pass.yaml"],
            ["restar-promote", "--rollback", "--policy", f"{root}/pass.yaml"],  # nothing to roll back
        ],
        6: [[*predict, "models:/restar/1", "--output", f"{root}/blocker/o.csv"]],
        7: [["restar-promote", "--version", "1", "--policy", f"{root}/noisy.yaml"]],
    }


def test_every_documented_code_has_a_scenario() -> None:
    assert documented_codes() == set(scenarios("root")) | {4} | set(ELSEWHERE)


@pytest.mark.parametrize("code", sorted(scenarios("root")))
def test_each_scenario_exits_with_its_documented_code(store: dict[str, str], code: int) -> None:
    for command in scenarios(store["root"])[code]:
        done = run(store, *command)
        assert done.returncode == code, f"{' '.join(command)}: {done.returncode}\n{done.stderr[-2000:]}"
        if code not in (0, 2):
            assert "Traceback" not in done.stderr, done.stderr
    assert not (Path(store["root"]) / "o.csv").exists()  # no failed command wrote its output


def test_a_concurrent_promotion_exits_4(store: dict[str, str]) -> None:
    """Another restar-promote holds the model's lock past the wait (60 s): nothing moves, exit 4."""
    audit = AuditLog(store["RESTAR_AUDIT_DB_URL"])
    with audit.lock("restar", "another-promotion"):
        done = run(store, "restar-promote", "--version", "1", "--policy", f"{store['root']}/pass.yaml")
    assert done.returncode == 4, done.stderr
    assert "another promotion" in done.stderr + done.stdout
