"""The README's Quickstart and the serving and container docs pages, run as written on a fresh clone.

Every fenced `bash` block of those sections (README.md's Quickstart; whole pages under docs/ for what
were the README's "Serving production" and "Containers" sections) runs in order in one clone of the
committed tree, each block as one `bash -euo pipefail` script, so a command that no longer works as
documented fails here.
A block preceded by `<!-- docs-test: skip (why) -->` is not run (a server that runs until Ctrl-C),
one preceded by `<!-- docs-test: docker (why) -->` runs only where a Docker engine answers (always in
CI), and the Quickstart's `bash scripts/test.sh` line is left out: it is the command running this test.

The clone gets its own `.venv` that sees this environment's packages (a `.pth` file), so the
README's `bash scripts/smoke.sh` runs its real setup step without downloading anything.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests import docker_kit

REPO_ROOT = Path(__file__).resolve().parents[1]
# (file, `## ` section or None for the whole page), in the order the blocks run.
SECTIONS = (
    ("README.md", "Quickstart"),
    ("docs/serving.md", None),
    ("docs/follow.md", None),
    ("docs/scale-out.md", None),
    ("docs/replicas.md", None),
    ("docs/containers.md", None),
)
SKIP_MARKER = re.compile(r"<!--\s*docs-test:\s*skip\b")
DOCKER_MARKER = re.compile(r"<!--\s*docs-test:\s*docker\b")
SELF_COMMAND = "bash scripts/test.sh"

pytestmark = pytest.mark.slow


def section(markdown: str, title: str) -> str:
    """The text under `## title`, up to the next heading of the same level."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def bash_blocks(text: str, docker_runs: bool = True) -> list[tuple[str, bool]]:
    """(script, skipped) for each ```bash block, in order; a docker block is skipped unless docker_runs."""
    blocks = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```bash\n(?P<body>.*?)```", text, re.DOTALL):
        before = match.group("before")
        skipped = bool(SKIP_MARKER.search(before)) or (bool(DOCKER_MARKER.search(before)) and not docker_runs)
        blocks.append((match.group("body"), skipped))
    return blocks


def runnable(script: str) -> str:
    return "\n".join(line for line in script.splitlines() if not line.strip().startswith(SELF_COMMAND))


def test_block_extraction() -> None:
    text = (
        "intro\n```bash\necho one\nbash scripts/test.sh  # all\n```\n"
        "<!-- docs-test: skip (a server) -->\n```bash\nmlflow ui\n```\n```python\nx = 1\n```\n"
    )
    blocks = bash_blocks(text)
    assert blocks == [("echo one\nbash scripts/test.sh  # all\n", False), ("mlflow ui\n", True)]
    assert runnable(blocks[0][0]) == "echo one"
    docker = "<!-- docs-test: docker (an engine) -->\n```bash\ndocker compose build\n```\n"
    assert bash_blocks(docker, docker_runs=True) == [("docker compose build\n", False)]
    assert bash_blocks(docker, docker_runs=False) == [("docker compose build\n", True)]


def server_logs(home: Path) -> str:
    """The tails of the logs `restar serve` kept (in the state folder under HOME), for a failure message."""
    logs = sorted((home / ".local" / "state").glob("restar/serve/logs/*.log"))
    return "".join(f"\n--- {log.name}\n{log.read_text(errors='replace')[-2000:]}" for log in logs)


def fresh_clone(destination: Path) -> Path:
    """A clone of the committed tree with a .venv that reuses this environment's packages."""
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(destination)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(destination / ".venv")], check=True)
    print_site = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = subprocess.run(
        [str(destination / ".venv/bin/python"), "-c", print_site], capture_output=True, text=True, check=True
    ).stdout.strip()
    (Path(site) / "outer_env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # The console scripts those packages installed (dvc, mlflow, torchserve...), as pip would have
    # put them in the clone's venv; the project's own come from its setup step.
    outer_bin, clone_bin = Path(sys.executable).parent, destination / ".venv" / "bin"
    for script in outer_bin.iterdir():
        own = script.name.startswith(("python", "pip", "activate", "restar"))
        if not own and script.is_file() and not (clone_bin / script.name).exists():
            shutil.copy2(script, clone_bin / script.name)
    return destination


def test_readme_quickstart_and_serving_blocks_run_on_a_fresh_clone(tmp_path: Path, reviews_dir: Path) -> None:
    for tool in ("git", "java", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    clone = fresh_clone(tmp_path / "clone")
    # As a user's shell after `source .venv/bin/activate` (the README asks for it once per shell).
    env = {
        **os.environ,
        "PATH": f"{clone / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(clone / ".venv"),
        # The clone has no ../shared beside it: the real rows where this checkout has them, else
        # generated ones in the same schema (tests/conftest.py reviews_dir).
        "RESTAR_DATA_DIR": str(reviews_dir),
        "HOME": str(tmp_path / "home"),  # anything written "outside the tree" lands here
        # ... except Docker's client config, where the `docker compose` plugin is (scripts/docker_setup.sh)
        "DOCKER_CONFIG": os.environ.get("DOCKER_CONFIG", str(Path.home() / ".docker")),
    }
    for variable in ("MLFLOW_TRACKING_URI", "RESTAR_AUDIT_DB_URL"):
        env.pop(variable, None)
    ran = []
    docker_reason = docker_kit.unavailable_reason()
    if docker_reason and os.environ.get("CI"):
        pytest.fail(docker_reason)
    for path, heading in SECTIONS:
        markdown = (REPO_ROOT / path).read_text()
        title = f"{path} '{heading}'" if heading else path
        text = section(markdown, heading) if heading else markdown
        blocks = bash_blocks(text, docker_runs=docker_reason is None)
        for number, (script, skipped) in enumerate(blocks, start=1):
            if skipped:
                continue
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", runnable(script)],
                cwd=clone,
                env=env,
                capture_output=True,
                text=True,
                timeout=1200,
            )
            assert result.returncode == 0, (
                f"{title} block {number} failed ({result.returncode}):\n{script}\n"
                f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
                f"{server_logs(Path(env['HOME']))}"
            )
            ran.append(f"{title} #{number}")
    assert ran, "no documented block ran"
    # DVC rewrites dvc.lock and the metrics files by design; nothing new may appear unignored.
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert untracked == "", f"the documented commands left files git does not know about:\n{untracked}"
