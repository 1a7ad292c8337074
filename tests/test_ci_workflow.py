"""The GitHub workflow (.github/workflows/ci.yml) and scripts/docker_setup.sh: lint, and what they run."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"
DOCKER_SETUP = REPO_ROOT / "scripts" / "docker_setup.sh"
README_SECTION = re.compile(r"^## Quickstart\n(.*?)(?=^## )", re.MULTILINE | re.DOTALL)
VERSIONS_LINE = re.compile(r"^docker: engine \S+ \(client \S+\), compose v?\d\S*$", re.MULTILINE)


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}:{Path('/usr/local/bin')}:{Path('/usr/bin')}")
    assert found, f"{name} is not installed (it comes with the dev extras)"
    return found


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def run_lines(job: str) -> list[str]:
    """Every command line of the job's `run:` steps, comments and blank lines dropped."""
    lines = []
    for step in workflow()["jobs"][job]["steps"]:
        for line in step.get("run", "").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def step_using(job: str, action: str) -> dict:
    (step,) = [s for s in workflow()["jobs"][job]["steps"] if s.get("uses", "").startswith(f"{action}@")]
    return step


def readme_test_command() -> str:
    """The test command of the README's Quickstart block, without its comment."""
    quickstart = README_SECTION.search((REPO_ROOT / "README.md").read_text())
    assert quickstart, "README.md has no '## Quickstart' section"
    block = re.search(r"```bash\n(.*?)```", quickstart.group(1), re.DOTALL)
    assert block, "README.md's Quickstart has no bash block"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    (command,) = [c for c in commands if c.startswith("bash scripts/test.sh")]
    return command


def ci_test_command() -> str:
    """What .ci/run runs: the README's command plus pytest options."""
    lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    (command,) = [line.strip() for line in lines if line.startswith("bash scripts/test.sh")]
    return command


def test_actionlint_is_clean() -> None:
    done = subprocess.run(
        [tool("actionlint"), "-no-color", str(WORKFLOW.relative_to(REPO_ROOT))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_test_job_runs_the_readme_command() -> None:
    readme = readme_test_command()
    ci = ci_test_command()
    assert shlex.split(ci)[: len(shlex.split(readme))] == shlex.split(readme), (ci, readme)
    tests = [line for line in run_lines("test") if "scripts/test.sh" in line]
    assert tests == [ci], tests


def test_images_job_builds_both_images_from_the_smoke_archive() -> None:
    jobs = workflow()["jobs"]
    assert jobs["images"]["needs"] in ("smoke", ["smoke"])
    builds = [shlex.split(line) for line in run_lines("images") if line.startswith("docker compose build")]
    assert len(builds) == 1, builds
    assert {"predictor", "torchserve"} <= set(builds[0][3:]), builds
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    assert {"predictor", "torchserve"} <= set(services)

    upload = step_using("smoke", "actions/upload-artifact")
    download = step_using("images", "actions/download-artifact")
    assert upload["with"]["path"] == "torchserve/model-store/restar.mar"
    assert download["with"]["name"] == upload["with"]["name"]
    assert download["with"]["path"] == "torchserve/model-store"
    assert any("scripts/smoke.sh" in line for line in run_lines("smoke"))


def test_docker_setup_parses() -> None:
    done = subprocess.run(["bash", "-n", str(DOCKER_SETUP)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_docker_setup_leaves_a_running_engine_alone() -> None:
    if not shutil.which("docker"):
        pytest.skip("no docker CLI")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Docker engine answers `docker info` (scripts/docker_setup.sh starts one as root)")
    done = subprocess.run(["bash", str(DOCKER_SETUP)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "starting dockerd" not in done.stdout, done.stdout
    assert VERSIONS_LINE.search(done.stdout), done.stdout + done.stderr
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    assert compose.returncode == 0, compose.stdout + compose.stderr


FAKE_DOCKER = """#!/bin/sh
case "$1" in
    info) test -e "$FAKE_DIR/up" ;;
    version) echo "99.0.0 98.0.0" ;;
    compose) echo "2.99.0" ;;
esac
"""


def fake_tools(tmp_path: Path, dockerd: str) -> dict[str, str]:
    """A root-looking PATH whose docker answers once the fake dockerd has touched `up`; HOME in tmp_path.

    A fake dockerd that outlives the script ends in `exec sleep`, so that no process named dockerd is left.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "docker": FAKE_DOCKER,
        "dockerd": f"#!/bin/sh\n{dockerd}\n",
        "debootstrap": "#!/bin/sh\n",
        "id": "#!/bin/sh\necho 0\n",
        "pgrep": "#!/bin/sh\nexit 1\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "HOME": str(tmp_path),
        "RESTAR_DOCKERD_LOG": str(tmp_path / "dockerd.log"),
        "RESTAR_DOCKERD_WAIT_S": "2",
    }


def test_docker_setup_starts_dockerd_and_waits_for_it(tmp_path: Path) -> None:
    env = fake_tools(tmp_path, 'echo started; sleep 1; touch "$FAKE_DIR/up"; exec sleep 2')
    done = subprocess.run(["bash", str(DOCKER_SETUP)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "starting dockerd" in done.stdout
    assert "docker: engine 99.0.0 (client 98.0.0), compose 2.99.0" in done.stdout, done.stdout
    assert "started" in (tmp_path / "dockerd.log").read_text()


@pytest.mark.parametrize("dockerd", ["echo cannot start >&2; exit 1", "echo stuck; exec sleep 5"])
def test_docker_setup_fails_when_dockerd_never_answers(tmp_path: Path, dockerd: str) -> None:
    env = fake_tools(tmp_path, dockerd)
    done = subprocess.run(["bash", str(DOCKER_SETUP)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout + done.stderr
    assert ("cannot start" in done.stderr) or ("stuck" in done.stderr), done.stderr


def test_docker_setup_without_an_engine_or_root_exits_0(tmp_path: Path) -> None:
    env = fake_tools(tmp_path, "exit 1")
    (tmp_path / "bin" / "id").write_text("#!/bin/sh\necho 1000\n")
    done = subprocess.run(["bash", str(DOCKER_SETUP)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "needs root" in done.stdout and "container tests will skip" in done.stdout, done.stdout
    assert not (tmp_path / "dockerd.log").exists()
