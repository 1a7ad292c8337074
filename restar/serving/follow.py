"""Serving follows production: when the registry moves `production`, roll TorchServe to that version.

MLflow's model-registry webhooks (SQL backends) POST a signed `model_version_alias.created` event to
the receiver here. It checks the signature (HMAC-SHA256 of `<delivery id>.<timestamp>.<body>`, the
Standard Webhooks scheme MLflow follows), answers 202 at once, and a single worker thread rolls
TorchServe to the version the registry's alias holds *now* (the event is only a wake-up call, so
deliveries that arrive late or out of order cannot leave an old version serving):

    export vN to <model store>/restar-vN.mar -> register it (management API, synchronous) -> wait
    until its workers are READY -> make it the default version -> for each old version: wait until
    its queue has stayed empty for a quiet period, then unregister it.

Clients keep posting to /predictions/restar (the default version) and see no failed request. Where
the backend sends no webhooks (a file store), `--poll` re-checks the alias on a timer and `--once`
reconciles once (a post-promotion hook can run it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from restar.errors import RestarError

if TYPE_CHECKING:  # `restar --help` imports this module: requests and http.server load when used
    from http.server import ThreadingHTTPServer

    import requests

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# mlflow.webhooks.constants (not imported: the receiver needs no MLflow)
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
ALIAS_CREATED = "model_version_alias.created"
TOLERANCE_S = 300  # Standard Webhooks' replay window: older (or future) timestamps are refused
WEBHOOK_PATH = "/webhook"


class FollowError(RestarError):
    """TorchServe's management API refused a step of a roll, or a version did not become ready."""


class SignatureError(Exception):
    """A delivery that must not be acted on; `status` is what the receiver answers."""

    def __init__(self, message: str, status: HTTPStatus):
        super().__init__(message)
        self.status = status


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The signature header MLflow sends: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> str:
    """Check a delivery's signature and timestamp; returns its delivery id. Raises SignatureError:
    401 when a header is missing, 403 when the signature is wrong or the timestamp is out of the window."""
    values = {name: headers.get(name) for name in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_ID_HEADER)}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise SignatureError(f"missing {', '.join(missing)}", HTTPStatus.UNAUTHORIZED)
    delivery_id, timestamp = values[DELIVERY_ID_HEADER], values[TIMESTAMP_HEADER]
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix time", HTTPStatus.FORBIDDEN) from None
    if abs(age) > tolerance_s:
        raise SignatureError(
            f"timestamp {age:.0f} s away from now (window {tolerance_s:.0f} s)", HTTPStatus.FORBIDDEN
        )
    expected = sign(secret, delivery_id, timestamp, body).encode()
    # The header may carry several space-separated signatures (a rotated secret); one must match.
    if not any(hmac.compare_digest(expected, given.encode()) for given in values[SIGNATURE_HEADER].split()):
        raise SignatureError("bad signature", HTTPStatus.FORBIDDEN)
    return delivery_id


@dataclass(frozen=True)
class AliasEvent:
    model: str
    alias: str
    version: int


def parse_event(body: bytes) -> AliasEvent | None:
    """The alias event in a delivery; None for any other event (or a payload without one)."""
    payload = json.loads(body)
    if f"{payload.get('entity')}.{payload.get('action')}" != ALIAS_CREATED:
        return None
    data = payload.get("data") or {}
    if not str(data.get("version", "")).isdigit():
        return None
    return AliasEvent(str(data.get("name")), str(data.get("alias")), int(data["version"]))


class SeenDeliveries:
    """Delivery ids seen within the replay window: a replayed delivery is answered but not acted on."""

    def __init__(self, window_s: float = TOLERANCE_S):
        self.window_s = window_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            self._seen = {key: at for key, at in self._seen.items() if now - at <= 2 * self.window_s}
            if delivery_id in self._seen:
                return False
            self._seen[delivery_id] = now
            return True


class Management:
    """TorchServe's management API for one model, token-authorized with key_file.json's management key
    (re-read for every call; an expired key is renewed once through the API key)."""

    def __init__(self, url: str, key_file: Path, model: str = "restar", timeout_s: float = 300):
        self.url = url.rstrip("/")
        self.key_file = key_file
        self.model = model
        self.timeout_s = timeout_s

    def _key(self, kind: str) -> str:
        return json.loads(self.key_file.read_text())[kind]["key"]

    def _call(self, method: str, path: str, **params: object) -> requests.Response:
        import requests

        for attempt in range(2):
            headers = {"Authorization": f"Bearer {self._key('management')}"}
            response = requests.request(
                method, f"{self.url}{path}", params=params, headers=headers, timeout=self.timeout_s
            )
            if attempt == 0 and response.status_code == 400 and "InvalidKeyException" in response.text:
                self._renew_key()
                continue
            return response
        return response

    def _renew_key(self) -> None:
        """TorchServe rewrites key_file.json with a new management key when asked with the API key."""
        import requests

        logger.info("management key refused (expired?): renewing it")
        requests.get(
            f"{self.url}/token",
            params={"type": "management"},
            headers={"Authorization": f"Bearer {self._key('API')}"},
            timeout=30,
        )

    def versions(self) -> list[dict]:
        """Every registered version of the model, as TorchServe describes them; [] when none is."""
        response = self._call("GET", f"/models/{quote(self.model)}/all")
        if response.status_code == HTTPStatus.NOT_FOUND:
            return []
        _raise_for(response, "describe")
        return response.json()

    def default_version(self) -> int | None:
        response = self._call("GET", f"/models/{quote(self.model)}")
        if response.status_code == HTTPStatus.NOT_FOUND:
            return None
        _raise_for(response, "describe")
        return int(response.json()[0]["modelVersion"])

    def register(self, archive: str) -> None:
        """Register `archive` (a file name in the model store) with one worker, asynchronously: a
        synchronous registration (TorchServe's default) holds a frontend event-loop thread until the
        worker is up, and the inference connections that thread also serves stall with it (48 s in
        tests/test_follow.py). Callers wait for READY."""
        response = self._call(
            "POST", "/models", url=archive, model_name=self.model, initial_workers=1, synchronous="false"
        )
        if response.status_code == HTTPStatus.CONFLICT:  # already registered: nothing to do
            return
        _raise_for(response, f"register {archive}")

    def describe(self, version: int) -> dict:
        response = self._call("GET", f"/models/{quote(self.model)}/{version}")
        _raise_for(response, f"describe v{version}")
        return response.json()[0]

    def set_default(self, version: int) -> None:
        _raise_for(
            self._call("PUT", f"/models/{quote(self.model)}/{version}/set-default"), f"set v{version} default"
        )

    def unregister(self, version: int) -> None:
        response = self._call("DELETE", f"/models/{quote(self.model)}/{version}")
        if response.status_code != HTTPStatus.NOT_FOUND:
            _raise_for(response, f"unregister v{version}")


def _raise_for(response: requests.Response, step: str) -> None:
    if not response.ok:
        raise FollowError(f"TorchServe refused to {step}: {response.status_code} {response.text.strip()}")


def export_version(version: int, model_store: Path, model: str, handler: Path, model_config: Path) -> str:
    """Archive registry version `version` as <model store>/<model>-v<version>.mar (kept: a rollback
    reuses it); returns the file name. The archive's model name stays `model`."""
    name = f"{model}-v{version}.mar"
    if (model_store / name).is_file():
        logger.info("v%d: archive %s already in the model store", version, name)
        return name
    from restar.serving.export_torchserve import export_torchserve

    model_store.mkdir(parents=True, exist_ok=True)
    # A hidden folder on the store's file system: the finished archive is renamed into place.
    with tempfile.TemporaryDirectory(prefix=".follow-", dir=model_store) as work:
        export_torchserve(
            f"models:/{model}/{version}",
            artifacts_dir=Path(work) / "artifacts",
            model_store=Path(work),
            handler=handler,
            model_config=model_config,
            model_name=model,
        )
        os.replace(Path(work) / f"{model}.mar", model_store / name)
    logger.info("v%d: exported to %s", version, model_store / name)
    return name


@dataclass
class Follower:
    """Rolls TorchServe to the version `production` holds; one roll at a time (a lock)."""

    management: Management
    export: Callable[[int], str]  # version -> archive file name in the model store
    production: Callable[[], int | None]  # the version the alias holds now, from the registry
    # raises FollowError when `version` may not be served (moved past the gates); None: no check
    check: Callable[[int], None] | None = None
    ready_timeout_s: float = 300
    drain_quiet_s: float = 2.0  # an old version's queue must stay empty this long (> one batch)
    drain_timeout_s: float = 120
    poll_s: float = 0.2
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reconcile(self) -> str:
        """Roll to what the alias holds now; `no production` when nothing holds it."""
        version = self.production()
        if version is None:
            logger.warning("no version holds the alias: serving stays as it is")
            return "no production"
        if self.check is not None:
            self.check(version)
        return self.roll_to(version)

    def roll_to(self, version: int) -> str:
        """Serve `version` as the default and unregister every other; `unchanged` if already so."""
        with self.lock:
            registered = {int(entry["modelVersion"]) for entry in self.management.versions()}
            default = self.management.default_version() if registered else None
            if default == version and registered == {version}:
                logger.info("v%d already served: nothing to do", version)
                return "unchanged"
            started = time.monotonic()
            logger.info("rolling from v%s to v%d", default, version)
            if version not in registered:
                archive = self.export(version)
                logger.info("v%d: registering %s", version, archive)
                self.management.register(archive)
            try:
                self._wait_ready(version)
            except FollowError:
                if version != default:  # a version that cannot serve does not stay registered
                    self.management.unregister(version)
                raise
            if default != version:
                self.management.set_default(version)
                logger.info("v%d: now the default version: new requests go to it", version)
            for old in sorted(registered - {version}):
                self._drain(old)
                self.management.unregister(old)
                logger.info("v%d: unregistered", old)
            logger.info("v%d serving (roll took %.1f s)", version, time.monotonic() - started)
            return "rolled"

    def _wait_ready(self, version: int) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            workers = self.management.describe(version).get("workers", [])
            if workers and all(worker.get("status") == "READY" for worker in workers):
                logger.info("v%d: %d worker(s) READY", version, len(workers))
                return
            if time.monotonic() > deadline:
                raise FollowError(
                    f"v{version} has no READY worker after {self.ready_timeout_s:.0f} s: {workers}"
                )
            time.sleep(self.poll_s)

    def _drain(self, version: int) -> None:
        """Wait until `version`'s queue has been empty for drain_quiet_s: requests routed to it before
        the default moved are answered by it before its worker goes (or drain_timeout_s passes)."""
        deadline = time.monotonic() + self.drain_timeout_s
        quiet_since = None
        while time.monotonic() < deadline:
            pending = self.management.describe(version).get("jobQueueStatus", {}).get("pendingRequests", 0)
            now = time.monotonic()
            quiet_since = (quiet_since or now) if pending == 0 else None
            if quiet_since is not None and now - quiet_since >= self.drain_quiet_s:
                logger.info("v%d: drained", version)
                return
            time.sleep(self.poll_s)
        logger.warning("v%d: still busy after %.0f s; unregistering it anyway", version, self.drain_timeout_s)


class Worker:
    """One background thread that reconciles whenever woken; wake-ups during a roll fold into one more."""

    def __init__(self, follower: Follower):
        self.follower = follower
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="restar-follow", daemon=True)
        self.last_result = ""

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wanted.wait()
            self._wanted.clear()
            if self._stop.is_set():
                return
            try:
                self.last_result = self.follower.reconcile()
            except FollowError as exc:
                self.last_result = f"failed: {exc}"
                logger.error("%s", exc)
            except Exception as exc:  # keep following: the next event (or poll) retries
                self.last_result = f"failed: {exc}"
                logger.exception("roll failed; the next event or poll retries")


@dataclass(frozen=True)
class Receiver:
    """What the webhook endpoint accepts: signed with `secret`, about `model`'s `alias`."""

    secret: str
    model: str
    alias: str
    worker: Worker
    seen: SeenDeliveries = field(default_factory=SeenDeliveries)

    def handle(self, headers: Mapping[str, str], body: bytes) -> tuple[HTTPStatus, dict]:
        try:
            delivery_id = verify(self.secret, headers, body)
        except SignatureError as exc:
            logger.warning("delivery refused: %s", exc)
            return exc.status, {"error": str(exc)}
        if not self.seen.first_time(delivery_id):
            return HTTPStatus.OK, {"status": "duplicate"}
        try:
            event = parse_event(body)
        except (ValueError, AttributeError):
            return HTTPStatus.BAD_REQUEST, {"error": "not a JSON webhook payload"}
        if event is None or (event.model, event.alias) != (self.model, self.alias):
            return HTTPStatus.OK, {"status": "ignored"}
        logger.info("delivery %s: %s@%s -> v%d", delivery_id, event.model, event.alias, event.version)
        self.worker.wake()
        return HTTPStatus.ACCEPTED, {"status": "accepted", "version": event.version}


def make_server(receiver: Receiver, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """The HTTP server: POST /webhook for deliveries, GET /health for the worker's last result."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != WEBHOOK_PATH:
                return self._answer(HTTPStatus.NOT_FOUND, {"error": "not found"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > 1 << 20:
                return self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "too large"})
            self._answer(*receiver.handle(self.headers, self.rfile.read(length)))

        def do_GET(self) -> None:
            if self.path != "/health":
                return self._answer(HTTPStatus.NOT_FOUND, {"error": "not found"})
            self._answer(HTTPStatus.OK, {"last_result": receiver.worker.last_result})

        def _answer(self, status: HTTPStatus, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("%s - %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)


def registry_production(model: str, alias: str) -> Callable[[], int | None]:
    """Reads the alias from the registry MLFLOW_TRACKING_URI names, on every call."""

    def production() -> int | None:
        from registry.service import Registry

        holder = Registry(model).alias_version(alias)
        return holder.version if holder else None

    return production


def create_webhook(url: str, secret: str, model: str = "restar", name: str | None = None) -> dict:
    """Create (or update, by name) the registry webhook that posts alias events to `url`."""
    from mlflow import MlflowClient

    client = MlflowClient()
    name = name or f"{model}-serving-follows-production"
    existing = next((hook for hook in _all_webhooks(client) if hook.name == name), None)
    if existing is None:
        hook = client.create_webhook(name, url, events=[ALIAS_CREATED], secret=secret)
        action = "created"
    else:
        hook = client.update_webhook(existing.webhook_id, url=url, events=[ALIAS_CREATED], secret=secret)
        action = "updated"
    logger.info("webhook %s %s -> %s", hook.name, action, url)
    return {
        "webhook": hook.name,
        "id": hook.webhook_id,
        "url": url,
        "events": [ALIAS_CREATED],
        "action": action,
    }


def _all_webhooks(client: object) -> list:
    hooks, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        hooks.extend(page)
        token = page.token
        if not token:
            return hooks


@dataclass(frozen=True)
class FollowSettings:
    management_url: str
    key_file: Path
    model_store: Path
    model: str = "restar"
    alias: str = "production"
    handler: Path = REPO_ROOT / "torchserve" / "handler.py"
    model_config: Path = REPO_ROOT / "torchserve" / "model-config.yaml"
    audit_url: str | None = None  # default: as restar-promote (RESTAR_AUDIT_DB_URL, else beside the store)
    allow_unaudited: bool = False
    audit_wait_s: float = 30


def audited_moves(settings: FollowSettings) -> Callable[[int], None]:
    """A check that `version` got the alias through restar-promote (the export guard's rule).

    restar-promote settles its audit row just after it moves the alias, and the webhook may arrive
    in between: the check waits up to `audit_wait_s` for the row before it refuses."""
    from registry.store import default_audit_url
    from restar.serving.export_torchserve import last_audited_move

    url = settings.audit_url or default_audit_url()

    def check(version: int) -> None:
        deadline = time.monotonic() + settings.audit_wait_s
        while True:
            last = last_audited_move(url, settings.model, settings.alias)
            if last is not None and last.version == version:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        problem = (
            f"v{version} holds {settings.alias}, but the audit log has no restar-promote move that put it "
            f"there (moved past the gates, e.g. in the MLflow UI)"
        )
        if settings.allow_unaudited:
            logger.warning("serving it anyway (--allow-unaudited): %s", problem)
            return
        raise FollowError(
            f"{problem}: serving stays as it is. Put v{version} through the gates with restar-promote, "
            f"or roll back; --allow-unaudited serves such versions"
        )

    return check


def build_follower(settings: FollowSettings) -> Follower:
    def export(version: int) -> str:
        return export_version(
            version, settings.model_store, settings.model, settings.handler, settings.model_config
        )

    management = Management(settings.management_url, settings.key_file, settings.model)
    return Follower(
        management, export, registry_production(settings.model, settings.alias), audited_moves(settings)
    )


def run(settings: FollowSettings, secret: str, host: str, port: int, poll_s: float | None = None) -> None:
    """Reconcile once at start, then on every signed alias event (and every `poll_s` seconds, if set)
    until interrupted."""
    cleanup_exports(settings.model_store)
    worker = Worker(build_follower(settings))
    server = make_server(Receiver(secret, settings.model, settings.alias, worker), host, port)
    worker.start()
    worker.wake()  # serve what production holds now: events missed while down are not replayed
    if poll_s:
        threading.Thread(target=_poll, args=(worker, poll_s), name="restar-follow-poll", daemon=True).start()
    logger.info(
        "following %s@%s: webhook receiver on http://%s:%d%s",
        settings.model,
        settings.alias,
        host,
        server.server_address[1],
        WEBHOOK_PATH,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        worker.stop()


def _poll(worker: Worker, every_s: float) -> None:
    while True:
        time.sleep(every_s)
        worker.wake()


def cleanup_exports(model_store: Path) -> None:
    """Remove export folders a killed follower left in the model store."""
    for leftover in model_store.glob(".follow-*"):
        shutil.rmtree(leftover, ignore_errors=True)
