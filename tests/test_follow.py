"""Serving follows production: signed MLflow webhooks roll a running TorchServe with no failed request.

The fast tests check the receiver (signatures, replays, other events) over real HTTP; the slow one runs
a real `mlflow server` (SQLite: webhooks need a SQL backend), a real TorchServe in follower mode and
`restar follow` as a process, moves `production` with restar-promote's Promoter under a steady load,
and counts the requests that failed while the served version changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import pytest
import requests

from promotion.policy import Policy
from promotion.promote import Promoter
from registry.audit import AuditLog
from registry.service import Registry
from restar.model.pyfunc import log_pyfunc
from restar.serving.follow import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Follower,
    FollowError,
    FollowSettings,
    Management,
    Receiver,
    SignatureError,
    Worker,
    audited_moves,
    make_server,
    sign,
    verify,
)
from restar.serving.serve_local import (
    LocalTorchServe,
    free_ports,
    launch_torchserve,
    local_config,
    wait_until_serving,
)
from tests.faults_kit import MlflowServer
from tests.test_promote import FakeRegistry

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECRET = "s3cret-for-tests"
BODY = json.dumps(
    {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-01-01T00:00:00+00:00",
        "data": {"name": "restar", "alias": "production", "version": "2"},
    }
).encode()


def signed_headers(body: bytes = BODY, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    delivery_id, timestamp = str(uuid.uuid4()), str(int(time.time() if at is None else at))
    return {
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, delivery_id, timestamp, body),
    }


def test_a_signed_delivery_verifies() -> None:
    headers = signed_headers()
    assert verify(SECRET, headers, BODY) == headers[DELIVERY_ID_HEADER]


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (
            lambda h, b: (
                {**h, SIGNATURE_HEADER: sign("wrong", h[DELIVERY_ID_HEADER], h[TIMESTAMP_HEADER], b)},
                b,
            ),
            403,
        ),
        (lambda h, b: (h, b.replace(b'"2"', b'"3"')), 403),  # body changed after signing
        (lambda h, b: ({**h, DELIVERY_ID_HEADER: "other-id"}, b), 403),  # id is part of what is signed
        (lambda h, b: ({k: v for k, v in h.items() if k != SIGNATURE_HEADER}, b), 401),
        (lambda h, b: ({k: v for k, v in h.items() if k != TIMESTAMP_HEADER}, b), 401),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: "yesterday"}, b), 403),
    ],
    ids=["wrong-secret", "tampered-body", "other-id", "no-signature", "no-timestamp", "bad-timestamp"],
)
def test_bad_or_missing_signatures_are_refused(change, status: int) -> None:
    headers, body = change(signed_headers(), BODY)
    with pytest.raises(SignatureError) as refused:
        verify(SECRET, headers, body)
    assert refused.value.status == status


@pytest.mark.parametrize("offset_s", [-301, 301])
def test_stale_or_future_timestamps_are_refused_even_when_signed(offset_s: int) -> None:
    headers = signed_headers(at=time.time() + offset_s)
    with pytest.raises(SignatureError, match="window"):
        verify(SECRET, headers, BODY)
    assert verify(SECRET, headers, BODY, now=time.time() + offset_s)  # the same delivery, in its window


def test_one_matching_signature_of_several_is_enough() -> None:
    headers = signed_headers()
    headers[SIGNATURE_HEADER] = f"v1,b2xkIHNlY3JldA== {headers[SIGNATURE_HEADER]}"  # rotated secret first
    assert verify(SECRET, headers, BODY)


@dataclass
class CountingFollower:
    """Stands in for the TorchServe side: counts the reconciles the receiver's worker runs."""

    calls: list[float] = field(default_factory=list)

    def reconcile(self) -> str:
        self.calls.append(time.monotonic())
        return "rolled"


@pytest.fixture
def receiver_url() -> Iterator[tuple[str, CountingFollower]]:
    follower = CountingFollower()
    worker = Worker(follower)  # type: ignore[arg-type]
    worker.start()
    server = make_server(Receiver(SECRET, "restar", "production", worker), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", follower
    finally:
        server.shutdown()
        server.server_close()
        worker.stop()


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_the_receiver_acts_once_per_signed_production_event(receiver_url) -> None:
    url, follower = receiver_url
    headers = signed_headers()
    accepted = requests.post(f"{url}/webhook", data=BODY, headers=headers, timeout=10)
    assert (accepted.status_code, accepted.json()) == (202, {"status": "accepted", "version": 2})
    wait_for(lambda: len(follower.calls) == 1, 10, "the worker to reconcile")
    replay = requests.post(f"{url}/webhook", data=BODY, headers=headers, timeout=10)
    assert replay.json() == {"status": "duplicate"}
    unsigned = requests.post(f"{url}/webhook", data=BODY, timeout=10)
    assert unsigned.status_code == 401
    forged = requests.post(f"{url}/webhook", data=BODY, headers=signed_headers(secret="guess"), timeout=10)
    assert forged.status_code == 403
    for data in (
        {"name": "other", "alias": "production", "version": "1"},
        {"name": "restar", "alias": "staging", "version": "1"},
    ):
        body = json.dumps({"entity": "model_version_alias", "action": "created", "data": data}).encode()
        ignored = requests.post(f"{url}/webhook", data=body, headers=signed_headers(body), timeout=10)
        assert (ignored.status_code, ignored.json()) == (200, {"status": "ignored"})
    time.sleep(0.5)
    assert len(follower.calls) == 1
    assert requests.get(f"{url}/health", timeout=10).json() == {"last_result": "rolled"}


def test_the_policy_post_promote_command_runs_after_each_move(tmp_path: Path) -> None:
    """The fallback where the registry sends no webhooks: restar-promote runs the policy's command."""
    seen = tmp_path / "seen.jsonl"
    record = (
        "import json, os, sys; open(sys.argv[1], 'a').write(json.dumps("
        "[os.environ['RESTAR_MODEL'], os.environ['RESTAR_ALIAS'], os.environ['RESTAR_VERSION']]) + '\\n')"
    )
    policy = Policy(
        name="hooked",
        gates=[{"name": "accuracy", "params": {"min": 0.9}}],
        post_promote=[sys.executable, "-c", record, str(seen)],
    )
    registry = FakeRegistry({1: 0.95, 2: 0.5, 3: 0.97})
    promoter = Promoter(registry, AuditLog(f"sqlite:///{tmp_path / 'audit.db'}"), policy, actor="t")  # type: ignore[arg-type]
    promoter.promote(1)
    promoter.promote(2)  # rejected by the gate: no move, no hook
    promoter.promote(3)
    promoter.rollback()
    lines = [json.loads(line) for line in seen.read_text().splitlines()]
    assert lines == [
        ["restar", "production", "1"],
        ["restar", "production", "3"],
        ["restar", "production", "1"],
    ]


def test_only_versions_moved_by_restar_promote_are_served(tmp_path: Path) -> None:
    """The export guard's rule: a version set past the gates (the MLflow UI's alias pencil) is refused."""
    audit_url = f"sqlite:///{tmp_path / 'audit.db'}"
    policy = Policy(name="open", gates=[{"name": "accuracy", "params": {"min": 0.0}}])
    Promoter(FakeRegistry({1: 0.9, 2: 0.9}), AuditLog(audit_url), policy, actor="t").promote(1)  # type: ignore[arg-type]
    settings = FollowSettings("http://127.0.0.1:1", tmp_path / "key_file.json", tmp_path, audit_wait_s=0.2)
    check = audited_moves(replace(settings, audit_url=audit_url))
    check(1)
    with pytest.raises(
        FollowError, match="v2 holds production, but the audit log has no restar-promote move"
    ):
        check(2)
    audited_moves(replace(settings, audit_url=audit_url, allow_unaudited=True))(2)

    # No management API at all: a roll would fail with AttributeError, not the refusal.
    follower = Follower(management=None, export=str, production=lambda: 2, check=check)  # type: ignore[arg-type]
    with pytest.raises(FollowError):
        follower.reconcile()


def test_the_torchserve_dir_must_hold_what_archives_pack(tmp_path: Path) -> None:
    """--torchserve-dir (RESTAR_TORCHSERVE_DIR: the TorchServe image sets it) names the handler and
    model config outside a checkout; a folder without them is refused before anything starts."""
    from click.testing import CliRunner

    from restar.cli.follow import follow_command as command

    result = CliRunner().invoke(
        command,
        ["--once", "--key-file", str(tmp_path / "k.json")],
        env={"RESTAR_TORCHSERVE_DIR": str(tmp_path)},
    )
    assert result.exit_code == 2
    assert f"{tmp_path} holds no handler.py and model-config.yaml" in result.output


# --- end to end ---------------------------------------------------------------------------------------


@dataclass
class Load:
    """`clients` threads posting predictions back to back; each answer's status and model version."""

    server: LocalTorchServe
    clients: int = 4
    # (wall time, status, model version or the error)
    results: list[tuple[float, int, int | str | None]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _client(self, index: int) -> None:
        while not self.stop.is_set():
            sent = time.time()
            try:
                response = self.server.predict({"text": f"client {index}: works well, arrived late"})
                ok = response.status_code == 200
                version = response.json().get("model_version") if ok else response.text[:200]
                self.results.append((time.time(), response.status_code, version))
            except (requests.RequestException, ValueError) as exc:
                self.results.append((time.time(), 0, repr(exc)))
            self.latencies.append(time.time() - sent)

    def failed(self) -> list[tuple[float, int, int | str | None]]:
        return [result for result in self.results if result[1] != 200]

    def latest_version(self) -> int | None:
        return self.results[-1][2] if self.results else None


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on SQLite, allowed to post webhooks to a loopback http receiver."""
    server = MlflowServer(tmp_path_factory.mktemp("follow_registry"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
        patch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
        url = server.start()
    try:
        yield url
    finally:
        server.stop()


def follow_command(*args: str) -> list[str]:
    return [str(BIN / "restar"), "follow", *args]


def register_two_versions(model_dir: Path, tracking: str, root: Path) -> Registry:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking)
        patch.chdir(root)
        mlflow.set_tracking_uri(tracking)
        registry = Registry("restar", tracking)
        for _ in range(2):
            with mlflow.start_run() as run:
                info = log_pyfunc(model_dir)
            registry.register(info.model_uri, run.info.run_id, {}, {"eval_accuracy": 0.5})
        mlflow.set_tracking_uri(None)
    return registry


def start_empty_torchserve(work: Path) -> LocalTorchServe:
    """TorchServe with the follower config: no model until `restar follow` registers one."""
    config = local_config(REPO_ROOT / "torchserve" / "config.follow.properties", free_ports(5))
    server = launch_torchserve(work / "model-store", config, work / "run", work / "run" / "ts.log")
    (work / "model-store").mkdir(exist_ok=True)

    def answering() -> bool:
        if not (server.workdir / "key_file.json").is_file():
            return False
        try:
            key = json.loads((server.workdir / "key_file.json").read_text())["management"]["key"]
            headers = {"Authorization": f"Bearer {key}"}
            return requests.get(f"{server.management_url}/models", headers=headers, timeout=5).ok
        except (requests.ConnectionError, ValueError, KeyError):
            return False

    wait_for(answering, 120, "TorchServe's management API")
    return server


def registered_versions(server: LocalTorchServe) -> set[int]:
    key = server.keys["management"]
    response = requests.get(
        f"{server.management_url}/models/restar/all", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    return {int(entry["modelVersion"]) for entry in response.json()} if response.ok else set()


def roll_under_load(server: LocalTorchServe, move, target: int, log: Path) -> dict[str, float]:
    """Move the alias with `move()` while 4 clients post; return once `target` alone is registered."""
    with Load(server) as load:
        wait_for(lambda: len(load.results) >= 20, 60, "the load to start")
        moved_at = time.time()
        move()
        try:
            wait_for(lambda: load.latest_version() == target, 300, f"responses from v{target}")
            switched_at = time.time()
            wait_for(
                lambda: registered_versions(server) == {target}, 300, "the old version to be unregistered"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nfollower log:\n{log.read_text()[-4000:]}") from exc
        time.sleep(2)  # requests after the old version went
    served_after = [version for at, _, version in load.results if at > switched_at]
    figures = {
        "requests": len(load.results),
        "failed": len(load.failed()),
        "switch_s": round(switched_at - moved_at, 1),
        "max_latency_s": round(max(load.latencies), 2),
        "other_version_after_switch": sum(1 for version in served_after if version != target),
    }
    print(f"roll to v{target} under load: {figures}")
    assert load.failed() == [], (
        f"{len(load.failed())} failed requests: {load.failed()[:5]}\nfollower log:\n{log.read_text()[-3000:]}"
    )
    return figures


@pytest.mark.slow
def test_production_moves_roll_torchserve_with_no_failed_request(
    registry_server: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry_server,
        "RESTAR_WEBHOOK_SECRET": SECRET,
        "RESTAR_AUDIT_DB_URL": f"sqlite:///{tmp_path / 'audit.db'}",  # the follower serves audited moves only
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    (port,) = free_ports(1)
    webhook = subprocess.run(
        follow_command("--create-webhook", f"http://127.0.0.1:{port}/webhook"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert webhook.returncode == 0, webhook.stderr
    assert json.loads(webhook.stdout)["events"] == ["model_version_alias.created"]

    registry = register_two_versions(tiny_model_dir, registry_server, tmp_path)
    policy = Policy(name="permissive", gates=[{"name": "accuracy", "params": {"min": 0.0}}])
    promoter = Promoter(registry, AuditLog(f"sqlite:///{tmp_path / 'audit.db'}"), policy, actor="test")
    promoter.promote(1)

    server = start_empty_torchserve(tmp_path / "ts")
    log = tmp_path / "follow.log"
    with open(log, "w") as out:
        follower = subprocess.Popen(
            follow_command(
                "--torchserve-management",
                server.management_url,
                "--key-file",
                str(server.workdir / "key_file.json"),
                "--model-store",
                str(tmp_path / "ts" / "model-store"),
                "--port",
                str(port),
            ),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_serving(server, 300)  # the follower's start-up reconcile registered v1
        assert registered_versions(server) == {1}

        promoted = roll_under_load(server, lambda: promoter.promote(2), 2, log)
        assert sorted((tmp_path / "ts" / "model-store").glob("*.mar")) == [
            tmp_path / "ts" / "model-store" / f"restar-v{n}.mar" for n in (1, 2)
        ]
        rolled_back = roll_under_load(server, promoter.rollback, 1, log)
        text = log.read_text()
        assert "delivery " in text, text[-3000:]  # the rolls were driven by webhook deliveries
        assert "v1: archive restar-v1.mar already in the model store" in text
        (tmp_path / "figures.json").write_text(json.dumps({"promote": promoted, "rollback": rolled_back}))
    finally:
        follower.terminate()
        follower.wait(timeout=30)
        server.stop()


@pytest.mark.slow
def test_an_expired_management_key_is_renewed(tmp_path: Path) -> None:
    """TorchServe's keys expire (token_expiration_min); the follower renews its key with the API key."""
    config = local_config(REPO_ROOT / "torchserve" / "config.follow.properties", free_ports(5))
    config = config.replace("token_expiration_min=60", "token_expiration_min=1")
    (tmp_path / "store").mkdir()
    server = launch_torchserve(tmp_path / "store", config, tmp_path / "run", tmp_path / "run" / "ts.log")
    try:
        key_file = server.workdir / "key_file.json"
        wait_for(key_file.is_file, 120, "key_file.json")
        management = Management(server.management_url, key_file)
        wait_for(lambda: _answers(management), 120, "the management API")
        old_key = json.loads(key_file.read_text())["management"]["key"]
        time.sleep(65)
        assert management.versions() == []  # refused with the old key, renewed, asked again
        assert json.loads(key_file.read_text())["management"]["key"] != old_key
    finally:
        server.stop()


def _answers(management: Management) -> bool:
    try:
        return management.versions() == []
    except (requests.ConnectionError, ValueError, KeyError):
        return False
