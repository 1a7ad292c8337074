"""Security: the registry behind MLflow's basic-auth app, and no pickles in the logged model.

One real `mlflow server --app-name basic-auth` on 127.0.0.1 (SQLite, the repository's
configs/mlflow_basic_auth.ini as it is) holds two versions of the tiny model, logged and registered
the way the pipeline does, with `production` on v1. Users: the admin, `reader` (the config's default,
READ) and `releaser` (EDIT on the registered model).
"""

from __future__ import annotations

import configparser
import os
import pickle
import re
import secrets
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import requests
import yaml
from click.testing import CliRunner
from safetensors import safe_open

from promotion.cli import EXIT_AUTH
from promotion.cli import cli as promote_cli
from promotion.promote import default_actor
from registry.audit import AuditLog
from registry.service import Registry
from restar.model.pyfunc import log_run_model
from restar.serving.serve_local import free_ports

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AUTH_CONFIG = REPO_ROOT / "configs" / "mlflow_basic_auth.ini"
ALIAS_ENDPOINT = "/api/2.0/mlflow/registered-models/alias"
USERS = ("admin", "reader", "releaser")
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclass(frozen=True)
class AuthServer:
    url: str
    root: Path
    passwords: dict[str, str]

    def env(self, user: str | None, password: str | None = None) -> dict[str, str]:
        """This process's environment, logged in as `user` (None: no credentials at all)."""
        env = {key: value for key, value in os.environ.items() if key not in CREDENTIAL_ENV}
        env.update(
            PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
            MLFLOW_TRACKING_URI=self.url,
            RESTAR_AUDIT_DB_URL=f"sqlite:///{self.root / 'audit.db'}",
        )
        if user is not None:
            env["MLFLOW_TRACKING_USERNAME"] = user
            env["MLFLOW_TRACKING_PASSWORD"] = password or self.passwords[user]
        return env

    def auth(self, user: str) -> tuple[str, str]:
        return user, self.passwords[user]

    def production(self) -> int:
        response = requests.get(
            f"{self.url}/api/2.0/mlflow/registered-models/alias",
            params={"name": "restar", "alias": "production"},
            auth=self.auth("admin"),
            timeout=10,
        )
        response.raise_for_status()
        return int(response.json()["model_version"]["version"])

    def audit(self) -> AuditLog:
        return AuditLog(f"sqlite:///{self.root / 'audit.db'}")


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def start_server(root: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    command = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/store.db"]
    command += ["--artifacts-destination", str(root / "artifacts")]
    with open(root / "server.log", "w") as log:
        return subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=1)
    except subprocess.TimeoutExpired:  # uvicorn's graceful shutdown takes seconds; nothing here needs it
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[AuthServer]:
    """`mlflow server --app-name basic-auth` started here, in its own folder (the ini's relative user
    database lands there); the admin password and the CSRF key are fresh secrets."""
    root = tmp_path_factory.mktemp("mlflow_auth")
    (port,) = free_ports(1)
    server = AuthServer(f"http://127.0.0.1:{port}", root, {u: secrets.token_urlsafe(16) for u in USERS})
    env = server.env(None)
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(AUTH_CONFIG),
        MLFLOW_AUTH_ADMIN_PASSWORD=server.passwords["admin"],
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
    )
    process = start_server(root, port, env)
    try:
        request.getfixturevalue("tiny_model_dir")  # built while the server boots
        wait_for_health(server.url, process, root / "server.log")
        create_users(server)
        yield server
    finally:
        stop_server(process)


def create_users(server: AuthServer) -> None:
    for user in ("reader", "releaser"):
        response = requests.post(
            f"{server.url}/api/2.0/mlflow/users/create",
            json={"username": user, "password": server.passwords[user]},
            auth=server.auth("admin"),
            timeout=10,
        )
        assert response.status_code == 200, response.text


def grant(server: AuthServer, user: str, model: str, permission: str) -> None:
    response = requests.post(
        f"{server.url}/api/3.0/mlflow/users/permissions/grant",
        json={
            "username": user,
            "resource_type": "registered_model",
            "resource_id": model,
            "permission": permission,
        },
        auth=server.auth("admin"),
        timeout=10,
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def registered(auth_server: AuthServer, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """As the admin: the tiny model logged into a run (restar.model.pyfunc.log_run_model, as `restar convert`
    does) and registered twice (registry.Registry.register, as `restar register` does); `production`
    on v1, `staging` on v2; `releaser` may edit the registered model."""
    out_dir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in auth_server.env("admin").items():
            patch.setenv(key, value)
        mlflow.set_tracking_uri(auth_server.url)
        with mlflow.start_run() as run:
            record = log_run_model(run, tiny_model_dir, out_dir, auth_server.url)
        registry = Registry("restar", auth_server.url)
        lineage = {"restar.config_name": "security-test"}
        metrics = {"eval_accuracy": 0.95, "eval_macro_f1": 0.94}  # made up: gates read these tags
        registry.register(record["model_uri"], record["run_id"], lineage, metrics, alias="production")
        registry.register(record["model_uri"], record["run_id"], lineage, metrics, alias="staging")
    grant(auth_server, "releaser", "restar", "EDIT")
    policy = auth_server.root / "policy.yaml"
    gates = [{"name": "accuracy", "params": {"min": 0.5}}, {"name": "no_regression"}]
    policy.write_text(yaml.safe_dump({"name": "security-test", "gates": gates}))
    return {"record": record, "policy": policy}


def set_production(server: AuthServer, version: int, auth: tuple[str, str] | None) -> requests.Response:
    return requests.post(
        f"{server.url}{ALIAS_ENDPOINT}",
        json={"name": "restar", "alias": "production", "version": str(version)},
        auth=auth,
        timeout=10,
    )


def promote_in_process(
    server: AuthServer, policy: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    for key in CREDENTIAL_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    target = 3 - server.production()
    result = CliRunner().invoke(promote_cli, ["--version", str(target), "--policy", str(policy)])
    return result.exit_code, result.output


def test_unauthenticated_requests_cannot_move_production(
    auth_server: AuthServer, registered: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = auth_server.production()
    refused = set_production(auth_server, 3 - before, auth=None)
    assert refused.status_code == 401
    assert auth_server.production() == before

    code, output = promote_in_process(auth_server, registered["policy"], auth_server.env(None), monkeypatch)
    assert code == EXIT_AUTH, output
    assert "requires a login" in output and "MLFLOW_TRACKING_USERNAME" in output
    assert auth_server.production() == before


def test_read_only_user_is_refused_and_nothing_claims_a_move(
    auth_server: AuthServer, registered: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = auth_server.production()
    refused = set_production(auth_server, 3 - before, auth=auth_server.auth("reader"))
    assert refused.status_code == 403
    assert auth_server.production() == before

    env = auth_server.env("reader")
    code, output = promote_in_process(auth_server, registered["policy"], env, monkeypatch)
    assert code == EXIT_AUTH, output
    assert "denied user 'reader'" in output and "EDIT" in output
    assert auth_server.production() == before
    rows = auth_server.audit().history("restar", limit=100)
    assert not [row for row in rows if row.actor == "reader" and row.decision in ("moved", "pending")]


def test_wrong_password_is_named_and_moves_nothing(
    auth_server: AuthServer, registered: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = auth_server.production()
    rows_before = len(auth_server.audit().history("restar", limit=100))
    wrong = "not-" + auth_server.passwords["releaser"]
    env = auth_server.env("releaser", password=wrong)
    code, output = promote_in_process(auth_server, registered["policy"], env, monkeypatch)
    assert code == EXIT_AUTH, output
    assert "refused the login of user 'releaser'" in output
    assert wrong not in output
    assert auth_server.production() == before
    assert len(auth_server.audit().history("restar", limit=100)) == rows_before  # no gate ran


def test_restar_promote_with_credentials_from_the_environment(
    auth_server: AuthServer, registered: dict
) -> None:
    before = auth_server.production()
    target = 3 - before
    done = subprocess.run(
        [str(BIN / "restar-promote"), "--version", str(target), "--policy", str(registered["policy"])],
        cwd=auth_server.root,
        env=auth_server.env("releaser"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"production -> v{target} (was v{before})" in done.stdout
    assert auth_server.production() == target
    latest = auth_server.audit().history("restar", limit=1)[0]
    assert (latest.decision, latest.version, latest.previous_version) == ("moved", target, before)
    assert latest.actor == "releaser"  # the user the server authenticated, not this OS account
    assert latest.actor != default_actor()


def test_admin_password_and_users_stay_out_of_the_repository() -> None:
    config = configparser.ConfigParser()
    config.read(AUTH_CONFIG)
    settings = config["mlflow"]
    assert settings["default_permission"] == "READ"
    assert "admin_password" not in settings  # MLFLOW_AUTH_ADMIN_PASSWORD, from the environment
    assert re.fullmatch(r"sqlite:///[\w.-]+\.db", settings["database_uri"])  # relative: the server's folder


def test_compose_auth_profile_runs_the_basic_auth_app() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["mlflow-auth"]
    assert service["profiles"] == ["auth"]
    assert service["ports"] == ["127.0.0.1:${RESTAR_MLFLOW_PORT:-5000}:5000"]
    assert "healthcheck" in service
    assert "mlflow server --app-name basic-auth" in " ".join(service["command"])
    mounts = {target: (source, rest) for source, target, *rest in (v.split(":") for v in service["volumes"])}
    environment = service["environment"]
    assert mounts[environment["MLFLOW_AUTH_CONFIG_PATH"]] == ("./configs/mlflow_basic_auth.ini", ["ro"])
    users_volume, _ = mounts[service["working_dir"]]  # where the ini's relative user database lands
    assert users_volume in compose["volumes"]
    example = (REPO_ROOT / ".env.example").read_text()
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        # from .env; not `:?`, which compose would enforce for the default services too
        assert environment[key] == f"${{{key}:-}}"
        assert f"\n{key}=" in example
    assert '"mlflow[auth]==' in (REPO_ROOT / "docker" / "mlflow.Dockerfile").read_text()


PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".ckpt")


def pickle_problems(path: Path) -> list[str]:
    """Why `path` may hold a pickle: its suffix, pickle protocol 2-5 magic, or a zip (torch.save) with
    pickled members. A .safetensors file must open as safetensors."""
    name = path.name
    if name.endswith(".safetensors"):
        with safe_open(str(path), framework="numpy") as weights:  # raises unless it is one
            return [] if list(weights.keys()) else [f"{name}: safetensors without tensors"]
    problems = [f"{name}: pickle suffix"] if name.endswith(PICKLE_SUFFIXES) else []
    head = path.read_bytes()[:2]
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        problems.append(f"{name}: starts with pickle protocol {head[1]} magic")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            problems += [f"{name}: zip member {m}" for m in archive.namelist() if m.endswith(".pkl")]
    return problems


def test_logged_model_holds_no_pickle(auth_server: AuthServer, registered: dict) -> None:
    """Every file the pipeline's logging put in the server's artifact store (the run and the model
    that `models:/restar@production` resolves to): none a loader would unpickle, safetensors weights,
    and a pyfunc loaded from code, not cloudpickle."""
    files = [path for path in (auth_server.root / "artifacts").rglob("*") if path.is_file()]
    (mlmodel,) = [path for path in files if path.name == "MLmodel"]
    assert {"restar.json", "model.safetensors", "pyfunc_entry.py"} <= {path.name for path in files}
    assert [problem for path in files for problem in pickle_problems(path)] == []
    assert [path.name for path in files if path.suffix == ".safetensors"] == ["model.safetensors"]

    flavor = yaml.safe_load(mlmodel.read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(flavor["model_code_path"]).name == "pyfunc_entry.py"
    assert (mlmodel.parent / "pyfunc_entry.py").is_file()
    assert "python_model" not in flavor  # the cloudpickled PythonModel a class-based log would store
    assert registered["record"]["model_uri"].removeprefix("models:/") in str(mlmodel)


def test_pickle_check_catches_a_torch_save_file(tmp_path: Path) -> None:
    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.safe")  # a zip holding data.pkl
    (tmp_path / "plain").write_bytes(pickle.dumps([1, 2], protocol=4))
    assert any("data.pkl" in p for p in pickle_problems(tmp_path / "weights.safe"))
    assert pickle_problems(tmp_path / "plain") == ["plain: starts with pickle protocol 4 magic"]
