"""docker-compose.yml brought up for real: PostgreSQL, the MLflow registry on it, TorchServe behind its
gateway; `restar-promote` on the host against the containerized registry; the batch predictor; the
`auth` and `replicas` profiles; and `down -v` leaving nothing behind.

The stack runs as its own compose project with every published port moved to a free one on 127.0.0.1
(the RESTAR_*_PORT variables), so it cannot collide with a stack a developer runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
import yaml
from cryptography.fernet import Fernet

from registry.service import Registry
from restar.model.pyfunc import log_pyfunc
from restar.serving.serve_local import free_ports
from tests import docker_kit
from tests.helpers import make_tiny_model
from tests.test_follow import Load

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow
PASSWORD = "compose-test-password"
GATEWAY_KEY = "compose-test-gateway-key-0123456789"
WEBHOOK_SECRET = "compose-test-webhook-secret"


@dataclass
class Stack:
    project: str
    root: Path
    env: dict[str, str]
    ports: dict[str, int]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [*docker_kit.compose_command(self.project, self.root / ".env"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert done.returncode == 0, (
                f"docker compose {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def up(self, *services: str, profile: str | None = None) -> None:
        profiles = ["--profile", profile] if profile else []
        self.compose(*profiles, "up", "-d", "--wait", "--wait-timeout", "300", *services)

    def host_env(self) -> dict[str, str]:
        """What restar-promote and restar follow on the host need to reach the containerized registry."""
        return {
            "MLFLOW_TRACKING_URI": self.url("mlflow"),
            "RESTAR_AUDIT_DB_URL": f"postgresql+psycopg2://mlflow:{PASSWORD}@127.0.0.1:{self.ports['postgres']}/mlflow",
            "RESTAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def inference_key(self, service: str, folder: str = "/home/model-server") -> str:
        text = self.compose("exec", "-T", service, "cat", f"{folder}/key_file.json").stdout
        return json.loads(text)["inference"]["key"]

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            kind: docker_kit.docker(*command, "--filter", label, check=False).stdout.split()
            for kind, command in {
                "containers": ("ps", "-aq"),
                "networks": ("network", "ls", "-q"),
                "volumes": ("volume", "ls", "-q"),
            }.items()
        }


@pytest.fixture(scope="module")
def stack(images: docker_kit.BuiltImages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("compose")
    (root / "batch").mkdir()
    (root / "batch").chmod(0o777)
    names = ["RESTAR_POSTGRES_PORT", "RESTAR_MLFLOW_PORT", "RESTAR_GATEWAY_PORT"]
    names += ["RESTAR_TS_MANAGEMENT_PORT", "RESTAR_TS_METRICS_PORT"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    settings = {
        "POSTGRES_DB": "mlflow",
        "POSTGRES_USER": "mlflow",
        "POSTGRES_PASSWORD": PASSWORD,
        "MLFLOW_AUTH_ADMIN_PASSWORD": "compose-admin-password",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "compose-test-secret",
        "RESTAR_GATEWAY_KEY": GATEWAY_KEY,
        "RESTAR_BATCH_DIR": str(root / "batch"),
        # TorchServe follows production: the registry posts its webhooks to the follower in the container
        "RESTAR_FOLLOW": "1",
        "RESTAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "RESTAR_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "RESTAR_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        **{name: str(port) for name, port in ports.items()},
    }
    (root / ".env").write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    stack = Stack(
        project=docker_kit.unique("restar-test"),
        root=root,
        env=images.env,
        ports={
            "postgres": ports["RESTAR_POSTGRES_PORT"],
            "mlflow": ports["RESTAR_MLFLOW_PORT"],
            "gateway": ports["RESTAR_GATEWAY_PORT"],
        },
    )
    try:
        yield stack
    finally:
        stack.compose("--profile", "*", "down", "-v", "--remove-orphans", "--timeout", "20", check=False)


@dataclass
class Gateway:
    """The compose gateway as tests/test_follow.py's Load drives a server: one POST per call."""

    url: str
    key: str

    def predict(self, body: dict) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return requests.post(f"{self.url}/predictions/restar", json=body, headers=headers, timeout=60)

    def served_version(self) -> int | None:
        answer = self.predict({"text": "Which version answers?"})
        return answer.json().get("model_version") if answer.status_code == 200 else None


def wait_for_version(stack: Stack, gateway: Gateway, version: int, timeout_s: float = 300) -> float:
    """Seconds until the gateway answers with `version`; the follower's log when it never does."""
    started = time.monotonic()
    while gateway.served_version() != version:
        if time.monotonic() - started > timeout_s:
            log = stack.compose("logs", "--tail", "60", "torchserve", check=False).stdout
            pytest.fail(f"v{version} not served after {timeout_s} s; the torchserve service's log:\n{log}")
        time.sleep(1)
    return time.monotonic() - started


def promote(stack: Stack, version: int) -> None:
    """`restar-promote --version N` on the host, against the registry and audit log in the containers."""
    policy = stack.root / "policy.yaml"
    policy.write_text(
        yaml.safe_dump({"name": "compose", "gates": [{"name": "accuracy", "params": {"min": 0.0}}]})
    )
    done = subprocess.run(
        [str(BIN / "restar-promote"), "--version", str(version), "--policy", str(policy)],
        cwd=stack.root,
        env={**os.environ, **stack.host_env()},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_stack_comes_up_healthy(stack: Stack) -> None:
    stack.up("postgres", "mlflow", "torchserve", "gateway")
    states = [json.loads(line) for line in stack.compose("ps", "--format", "json").stdout.splitlines()]
    assert {state["Service"]: state["Health"] for state in states} == {
        "postgres": "healthy",
        "mlflow": "healthy",
        "torchserve": "healthy",
        "gateway": "",  # no healthcheck of its own: it starts once TorchServe is healthy
    }
    assert requests.get(f"{stack.url('mlflow')}/health", timeout=10).ok
    key = stack.inference_key("torchserve")
    ping = requests.get(
        f"{stack.url('gateway')}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert ping.status_code == 200, ping.text


def test_restar_promote_on_the_host_moves_what_the_stack_serves_with_no_failed_request(
    stack: Stack, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # The webhook first, as an operator sets it up once: the server caches each event's webhook list
    # for MLFLOW_WEBHOOK_CACHE_TTL (60 s), so a webhook created just after an alias event (registering
    # sets `staging`) misses the alias events of the next minute (README "Serving follows production").
    webhook = subprocess.run(
        [str(BIN / "restar"), "follow", "--create-webhook", "http://torchserve:8765/webhook"],
        env={**os.environ, **stack.host_env()},
        capture_output=True,
        text=True,
    )
    assert webhook.returncode == 0, webhook.stderr
    registry_url = stack.url("mlflow")
    second_model = make_tiny_model(tmp_path / "second", temperature=3.0)
    mlflow.set_tracking_uri(registry_url)
    registry = Registry("restar", registry_url)
    versions = []
    for model_dir in (tiny_model_dir, second_model):
        with mlflow.start_run() as run:
            info = log_pyfunc(model_dir)
        versions.append(
            registry.register(info.model_uri, run.info.run_id, {}, {"eval_accuracy": 0.5}).version
        )
    mlflow.set_tracking_uri(None)

    gateway = Gateway(stack.url("gateway"), stack.inference_key("torchserve"))
    promote(stack, versions[0])
    first_s = wait_for_version(stack, gateway, versions[0])
    with Load(gateway, clients=4) as load:  # type: ignore[arg-type]
        time.sleep(2)
        promote(stack, versions[1])
        roll_s = wait_for_version(stack, gateway, versions[1])
        time.sleep(2)
    assert registry.version("production").version == versions[1]
    served = [version for _at, status, version in load.results if status == 200]
    assert versions[0] in served and versions[1] in served
    assert load.failed() == [], f"{len(load.failed())} of {len(load.results)} failed: {load.failed()[:5]}"
    follower_log = stack.compose("logs", "torchserve").stdout
    assert "webhook" in follower_log.lower(), follower_log[-3000:]
    print(
        f"compose follow: v{versions[0]} served {first_s:.1f} s after its promotion; "
        f"v{versions[1]} {roll_s:.1f} s after, {len(load.results)} requests during the roll, 0 failed"
    )


def test_the_batch_profile_scores_a_file(stack: Stack) -> None:
    reviews = pd.DataFrame({"text": ["Great value.", "Broke after a day.", "It is fine."]})
    reviews.to_csv(stack.root / "batch" / "reviews.csv", index=False)
    stack.compose("--profile", "batch", "run", "--rm", "predictor", timeout=300)
    predictions = pd.read_parquet(stack.root / "batch" / "predictions.parquet")
    assert len(predictions) == 3
    assert set(predictions.columns) >= {"label", "confidence", "p_neg", "p_neu", "p_pos"}


def test_the_auth_profile_comes_up_and_wants_a_login(stack: Stack) -> None:
    stack.compose("stop", "mlflow")
    stack.up("mlflow-auth", profile="auth")
    search = f"{stack.url('mlflow')}/api/2.0/mlflow/experiments/search?max_results=1"
    # The auth app's first answers are slow on a loaded two-core machine (a fresh worker, and a password
    # hash that is slow by design): one took over 10 s in CI.
    assert requests.get(search, timeout=90).status_code == 401
    answer = requests.get(search, auth=("admin", "compose-admin-password"), timeout=90)
    assert answer.status_code == 200, answer.text
    stack.compose("--profile", "auth", "stop", "mlflow-auth")


def test_the_replicas_profile_comes_up_behind_one_gateway_key(stack: Stack) -> None:
    stack.compose("stop", "gateway", "torchserve")
    stack.up("torchserve-1", "torchserve-2", "gateway-replicas", profile="replicas")
    url = f"{stack.url('gateway')}/predictions/restar"
    for _ in range(4):
        answer = requests.post(
            url,
            json={"text": "Does the job."},
            headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
            timeout=120,  # a replica's first answer waits for its worker, slow on a loaded machine
        )
        assert answer.status_code == 200, answer.text
    refused = requests.post(url, json={"text": "x"}, headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert refused.status_code == 401

    def served_by(count: int) -> set[str]:
        auth = {"Authorization": f"Bearer {GATEWAY_KEY}"}
        answers = [requests.post(url, json={"text": "Fine."}, headers=auth, timeout=60) for _ in range(count)]
        assert [a.status_code for a in answers] == [200] * count, [a.text for a in answers]
        return {a.headers["X-Restar-Replica"] for a in answers}

    # drain and undrain in the gateway's own image (its shell, no pgrep), as an operator runs them
    script = ["exec", "-T", "gateway-replicas", "sh", "/etc/restar/gateway-replicas.sh"]
    stack.compose("--profile", "replicas", *script, "drain", "torchserve-2")
    assert served_by(6) == {"torchserve-1"}
    stack.compose("--profile", "replicas", *script, "undrain", "torchserve-2")
    assert served_by(6) == {"torchserve-1", "torchserve-2"}


def test_down_v_leaves_no_container_network_or_volume(stack: Stack) -> None:
    assert any(stack.leftovers().values())
    stack.compose("--profile", "*", "down", "-v", "--remove-orphans", "--timeout", "20")
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": []}
