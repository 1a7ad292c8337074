"""Static checks of the Dockerfiles and docker-compose.yml: quick, and where no Docker engine runs.
tests/test_image_predictor.py, test_image_torchserve.py and test_compose_stack.py run them for real."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from restar.serving.serve_local import render_gateway_config

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILES = ["Dockerfile", "torchserve/Dockerfile", "docker/mlflow.Dockerfile"]


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}:{Path('/usr/local/bin')}:{Path('/usr/bin')}")
    assert found, f"{name} is not installed (it comes with the dev extras)"
    return found


def instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO_ROOT / path).read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def entrypoint(path: str = "Dockerfile") -> list[str]:
    (value,) = [args for keyword, args in instructions(path) if keyword == "ENTRYPOINT"]
    return json.loads(value)


@pytest.mark.parametrize("path", DOCKERFILES)
def test_hadolint_is_clean(path: str) -> None:
    done = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(REPO_ROOT / path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", DOCKERFILES)
def test_images_are_pinned_non_root_and_cpu_only(path: str) -> None:
    pairs = instructions(path)
    args = dict(arg.split("=", 1) for keyword, arg in pairs if keyword == "ARG" and "=" in arg)
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim-bookworm", args["BASE_IMAGE"])  # the upstream default
    bases = [args.split()[0] for keyword, args in pairs if keyword == "FROM"]
    assert bases and set(bases) == {"${BASE_IMAGE}"}, bases
    users = [args for keyword, args in pairs if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(args for keyword, args in pairs if keyword == "RUN")
    assert "pip install" not in runs, "installs go through docker/pip-install.sh (CA bundle, torch source)"
    if "pip-install.sh torch" in runs:
        assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
        assert (
            "--mount=type=secret,id=ca_bundle --mount=type=bind,source=docker/wheels,target=/wheels" in runs
        )


def test_pip_installs_take_cpu_torch_and_leave_no_ca_bundle_behind() -> None:
    script = (REPO_ROOT / "docker" / "pip-install.sh").read_text()
    assert script.count('install --index-url "$TORCH_INDEX_URL" torch==2.13.0+cpu') == 1
    assert script.count("install --find-links /wheels torch==2.13.0+cpu") == 1
    assert "/run/secrets/ca_bundle" in script and "trap 'rm -f \"$bundle\"' EXIT" in script
    assert subprocess.run(["sh", "-n", str(REPO_ROOT / "docker" / "pip-install.sh")]).returncode == 0
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert "/docker/wheels/*.whl" in ignored and "/docker/baked/" in ignored


def test_compose_matches_the_compose_spec() -> None:
    done = subprocess.run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(REPO_ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services_are_healthy_local_and_secret_free() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "mlflow",
        "mlflow-auth",
        "torchserve",
        "gateway",
        "torchserve-1",
        "torchserve-2",
        "gateway-replicas",
        "predictor",
        "predictor-baked",
    }
    for name in ("postgres", "mlflow", "torchserve", "torchserve-1", "torchserve-2", "gateway-replicas"):
        assert "healthcheck" in services[name], name
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    for match in re.finditer(r"PASSWORD:\s*(\S+)", text):
        assert match.group(1).startswith("${"), "passwords must come from the env file"
    assert "${POSTGRES_PASSWORD" in services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert services["predictor"]["image"] == "ml-app:v1"
    assert services["predictor"]["profiles"] == ["batch"]
    assert services["predictor"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert (REPO_ROOT / ".env.example").is_file()
    assert ".env" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_predictor_image_runs_restar_predict() -> None:
    assert entrypoint() == ["restar", "predict"]
    env = " ".join(args for keyword, args in instructions("Dockerfile") if keyword == "ENV")
    assert "RESTAR_MODEL_URI=${MODEL_URI}" in env
    args = [args for keyword, args in instructions("Dockerfile") if keyword == "ARG"]
    assert "MODEL_URI=models:/restar@production" in args


def test_container_config_differs_from_the_local_one_only_in_addresses() -> None:
    def settings(name: str) -> dict[str, str]:
        lines = (REPO_ROOT / "torchserve" / name).read_text().splitlines()
        pairs = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
        return {k: v for k, v in pairs.items() if not k.endswith("_address")}

    local, container = settings("config.properties"), settings("config.container.properties")
    assert local == container
    assert settings("config.follow.properties") == settings("config.follow.container.properties")
    follow = (REPO_ROOT / "torchserve" / "config.follow.container.properties").read_text().splitlines()
    assert "management_address=http://127.0.0.1:8081" in follow  # the model API stays in the container
    assert local["disable_token_authorization"] == "false"
    assert local["enable_model_api"] == "false"
    assert local["metrics_mode"] == "prometheus"
    addresses = [
        line
        for line in (REPO_ROOT / "torchserve" / "config.properties").read_text().splitlines()
        if line.endswith(("8080", "8081", "8082"))
    ]
    assert addresses and all("127.0.0.1" in line for line in addresses)


def test_gateway_is_the_only_way_to_torchserves_inference_port() -> None:
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    assert not any(port.endswith(":8080") for port in services["torchserve"]["ports"])
    gateway = services["gateway"]
    assert gateway["ports"] == ["127.0.0.1:${RESTAR_GATEWAY_PORT:-8000}:8000"]
    assert gateway["depends_on"] == {"torchserve": {"condition": "service_healthy"}}
    assert re.fullmatch(r"\$\{RESTAR_NGINX_IMAGE:-nginx:\d[\w.-]*\}", gateway["image"])
    (volume,) = gateway["volumes"]
    source, target, mode = volume.split(":")
    assert (REPO_ROOT / source).is_file()
    assert mode == "ro"
    command = gateway["command"]
    assert command[command.index("-c") + 1] == target
    assert command[-2:] == ["-g", "daemon off;"]


def test_container_gateway_config_is_the_rendered_template() -> None:
    expected = render_gateway_config("torchserve:8080", listen="0.0.0.0:8000")
    shipped = (REPO_ROOT / "torchserve" / "nginx.container.conf").read_text()
    assert shipped == expected, (
        "torchserve/nginx.container.conf is stale: regenerate it with "
        "render_gateway_config('torchserve:8080', listen='0.0.0.0:8000') from restar.serving.serve_local"
    )
    container = (REPO_ROOT / "torchserve" / "config.container.properties").read_text()
    assert "inference_address=http://0.0.0.0:8080" in container.splitlines()
    assert "listen 127.0.0.1:8000;" in render_gateway_config("127.0.0.1:8080")  # loopback by default


def test_replicas_sit_behind_their_gateway_each_with_its_own_keys() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = {name: service for name, service in services.items() if re.fullmatch(r"torchserve-\d+", name)}
    gateway = services["gateway-replicas"]
    assert len(replicas) >= 2
    assert gateway["environment"]["RESTAR_REPLICAS"].split() == sorted(replicas)
    assert gateway["environment"]["RESTAR_GATEWAY_KEY"].startswith("${")  # from .env, never in the file
    assert gateway["depends_on"] == {name: {"condition": "service_healthy"} for name in replicas}
    assert gateway["ports"] == ["127.0.0.1:${RESTAR_GATEWAY_PORT:-8000}:8000"]
    assert {service["profiles"][0] for service in (*replicas.values(), gateway)} == {"replicas"}
    for name, replica in replicas.items():
        assert replica["environment"]["RESTAR_REPLICA"] == name
        # the entrypoint runs TorchServe there, so its key_file.json lands on the keys volume
        assert replica["environment"]["RESTAR_TS_WORKDIR"] == f"/srv/restar-keys/{name}"
        assert "ports" not in replica, f"{name}: replicas are reached through the gateway only"
        assert replica["image"] == services["torchserve"]["image"]
        assert replica["volumes"] == ["torchserve-keys:/srv/restar-keys"]
        assert 'cd "$$RESTAR_TS_WORKDIR"' in replica["healthcheck"]["test"][-1]
        assert "restar-ts-healthcheck.py" in replica["healthcheck"]["test"][-1]
        assert "command" not in replica and "entrypoint" not in replica  # the image's entrypoint
    keys_volume = compose["volumes"]["torchserve-keys"]["driver_opts"]
    assert keys_volume["type"] == "tmpfs" and "uid=10001" in keys_volume["o"]
    mounts = {volume.split(":")[1]: volume.split(":") for volume in gateway["volumes"]}
    assert mounts["/srv/restar-keys"] == ["torchserve-keys", "/srv/restar-keys", "ro"]
    script = REPO_ROOT / "torchserve" / "gateway-replicas.sh"
    for source, _target, mode in (v for v in mounts.values() if v[0].startswith("./")):
        assert (REPO_ROOT / source).is_file() and mode == "ro"
    assert gateway["entrypoint"] == ["/bin/sh", mounts["/etc/restar/gateway-replicas.sh"][1]]
    text = script.read_text()
    assert "RESTAR_TEMPLATE:-/etc/restar/nginx.replicas.conf" in text
    assert "RESTAR_KEYS_DIR:-/srv/restar-keys" in text
    assert mounts["/etc/restar/nginx.replicas.conf"][0] == "./torchserve/nginx.replicas.conf"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
