"""The nginx gateway (torchserve/nginx.conf) in front of a real TorchServe: what each method and path gets."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import requests

from restar.serving.serve_local import (
    GATEWAY_TEMPLATE,
    GatewayError,
    LocalGateway,
    LocalTorchServe,
    find_nginx,
    free_ports,
    gateway,
    render_gateway_config,
)
from tests.served import register_production, serve_production

MAX_BODY = 1048576  # TorchServe's max_request_size
PROBS = ["p_neg", "p_neu", "p_pos"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTorchServe]:
    """TorchServe serving the export of a registry whose production version is the tiny model."""
    uri = register_production(tiny_model_dir, tmp_path_factory.mktemp("gw_registry"))
    with serve_production(uri, tmp_path_factory.mktemp("gw_torchserve")) as server:
        yield server


@pytest.fixture(scope="module")
def gw(served: LocalTorchServe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGateway]:
    with gateway(served.inference_url, tmp_path_factory.mktemp("gateway")) as running:
        yield running


@pytest.fixture(scope="module")
def token(served: LocalTorchServe) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.keys['inference']}", "Content-Type": "application/json"}


def call(base: str, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> requests.Response:
    return requests.request(method, base + path, headers=headers, data=body, timeout=60)


def assert_json_error(response: requests.Response, status: int, *phrases: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    payload = response.json()
    assert payload["status"] == status
    for phrase in phrases:
        assert phrase in payload["error"]
    return payload


def rows(response: requests.Response) -> list[dict]:
    payload = response.json()
    return payload if isinstance(payload, list) else [payload]


def test_post_predictions_is_torchserves_answer(gw, served, token) -> None:
    for body in ({"text": "Great box, love it!"}, {"texts": ["Broke in a day", "It is fine"]}):
        raw = json.dumps(body).encode()
        through = call(gw.url, "POST", "/predictions/restar", token, raw)
        direct = call(served.inference_url, "POST", "/predictions/restar", token, raw)
        assert through.status_code == direct.status_code == 200
        assert type(through.json()) is type(direct.json())
        mine, theirs = rows(through), rows(direct)
        assert [row["label"] for row in mine] == [row["label"] for row in theirs]
        for a, b in zip(mine, theirs, strict=True):
            assert [a[p] for p in PROBS] == pytest.approx([b[p] for p in PROBS], abs=1e-6)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (None, b'{"text": broken'),  # the handler's 400 (a bad token: the gateway's own 401, below)
        (None, json.dumps({"texts": ["x"] * 65}).encode()),  # the handler's 413
    ],
)
def test_torchserve_errors_pass_through_unchanged(gw, served, token, headers, body: bytes) -> None:
    headers = token if headers is None else headers
    through = call(gw.url, "POST", "/predictions/restar", headers, body)
    direct = call(served.inference_url, "POST", "/predictions/restar", headers, body)
    assert 400 <= direct.status_code < 500
    assert (through.status_code, through.content) == (direct.status_code, direct.content)
    assert through.headers.get("Content-Type") == direct.headers.get("Content-Type")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_on_predictions_get_405(gw, token, method: str) -> None:
    # With the token and a valid body: TorchServe itself would answer each with a prediction.
    response = call(gw.url, method, "/predictions/restar", token, b'{"text": "hello"}')
    payload = assert_json_error(response, 405, f"method {method} not allowed", "use POST")
    assert payload["error"] == f"method {method} not allowed on /predictions/restar; use POST"
    assert response.headers["Allow"] == "POST"


def test_head_on_predictions_gets_405_without_a_body(gw, token) -> None:
    response = call(gw.url, "HEAD", "/predictions/restar", token)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.content == b""


def test_a_missing_or_wrong_token_gets_401_before_any_worker(gw, token) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        refused = call(gw.url, "POST", "/predictions/restar", headers, b'{"text": "hello"}')
        assert_json_error(refused, 401, "missing or wrong bearer token")
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="restar"'
    assert call(gw.url, "POST", "/predictions/restar", token, b'{"text": "hello"}').status_code == 200
    broken = call(gw.url, "POST", "/predictions/restar", token, b'{"text": broken')
    assert broken.status_code == 400  # the handler's own 400 still reaches the client


@pytest.mark.parametrize(
    "path",
    [
        "/explanations/restar",
        "/v1/models/restar:predict",
        "/v2/models/restar/infer",
        "/predictions/other",
        "/predictions/restar/1",  # TorchServe's versioned path
        "/models",
        "/api-description",
        "/",
    ],
)
def test_other_paths_get_404_naming_the_path(gw, token, path: str) -> None:
    response = call(gw.url, "POST", path, token, b'{"text": "hello"}')
    assert_json_error(response, 404, f"no route for {path};")


def test_a_path_that_would_break_the_json_is_not_echoed(gw, token) -> None:
    response = call(gw.url, "GET", '/a%22b%5C"}', token)
    assert_json_error(response, 404, "no route for (path not shown)")


def test_ping_is_proxied_with_torchserves_token_check(gw, served, token) -> None:
    assert call(gw.url, "GET", "/ping", token).json() == {"status": "Healthy"}
    assert call(served.inference_url, "GET", "/ping", {}).status_code == 400  # TorchServe's own answer
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic eDp5"}):
        refused = call(gw.url, "GET", "/ping", headers)
        assert_json_error(refused, 401, "missing or wrong bearer token")
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="restar"'
    post = call(gw.url, "POST", "/ping", token)
    assert_json_error(post, 405, "method POST not allowed on /ping; use GET")
    assert post.headers["Allow"] == "GET"


def test_bodies_over_torchserves_limit_get_413_from_the_gateway(gw, token) -> None:
    response = call(gw.url, "POST", "/predictions/restar", token, b"x" * (MAX_BODY + 1))
    assert_json_error(response, 413, "over 1048576 bytes")
    # A body at the limit reaches TorchServe: the handler refuses the text as too long.
    at_limit = json.dumps({"text": "x" * (MAX_BODY - 12)}).encode()
    assert len(at_limit) == MAX_BODY
    response = call(gw.url, "POST", "/predictions/restar", token, at_limit)
    assert response.status_code == 413
    assert "too long" in response.json()["error"]
    assert call(gw.url, "POST", "/predictions/restar", token, b'{"text": "still there?"}').status_code == 200


def test_upstream_connections_are_kept_alive(gw, served, token) -> None:
    for _ in range(5):
        assert call(gw.url, "POST", "/predictions/restar", token, b'{"text": "hi"}').status_code == 200
    ts_port = int(served.inference_url.rsplit(":", 1)[1])
    to_torchserve = [
        conn
        for process in psutil.Process(gw.process.pid).children()
        for conn in process.net_connections("tcp")
        if conn.raddr and conn.raddr.port == ts_port and conn.status == psutil.CONN_ESTABLISHED
    ]
    assert len(to_torchserve) == 1  # one pooled connection reused, not one per request


def test_the_gateway_binds_loopback_and_keeps_its_files_in_its_run_dir(gw) -> None:
    master = psutil.Process(gw.process.pid)
    listening = [
        conn.laddr
        for process in (master, *master.children())
        for conn in process.net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening and {address.ip for address in listening} == {"127.0.0.1"}
    assert int((gw.workdir / "nginx.pid").read_text()) == master.pid
    assert (gw.workdir / "client_body_temp").is_dir()
    assert len(master.children()) == 1  # one worker


def test_an_unreachable_torchserve_gets_a_json_502(tmp_path: Path) -> None:
    (closed,) = free_ports(1)
    with gateway(f"http://127.0.0.1:{closed}", tmp_path / "gw") as lonely:
        response = call(lonely.url, "POST", "/predictions/restar", {}, b'{"text": "hi"}')
        assert_json_error(response, 502, "TorchServe is not answering")
        assert lonely.stop() == 0


def test_missing_nginx_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GatewayError, match="apt-get install nginx-light"):
        find_nginx(search_path=str(tmp_path))
    assert Path(find_nginx()).name == "nginx"


def test_config_takes_only_host_port_addresses() -> None:
    config = render_gateway_config("torchserve:8080", listen="0.0.0.0:8001")
    assert "listen 0.0.0.0:8001;" in config
    assert "server torchserve:8080;" in config
    assert re.search(r"^[^#]*@[A-Z]+@", config, flags=re.M) is None
    with pytest.raises(ValueError, match="host:port"):
        render_gateway_config("torchserve:8080", listen="127.0.0.1:8000; include /etc/passwd")


class ScriptedUpstream(http.server.ThreadingHTTPServer):
    """A stand-in for TorchServe that answers POSTs with the next (status, body) of a script, then 200,
    each after `delay` seconds."""

    def __init__(self, script: list[tuple[int, bytes]], delay: float = 0.0):
        self.script = list(script)
        self.delay = delay
        self.received: list[bytes] = []
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedUpstream

    def do_POST(self) -> None:
        self.server.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.server.delay)
        status, body = self.server.script.pop(0) if self.server.script else (200, b'{"label": "positive"}')
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def scripted(
    script: list[tuple[int, bytes]], workdir: Path, delay: float = 0.0, template: Path = GATEWAY_TEMPLATE
) -> Iterator[tuple[ScriptedUpstream, LocalGateway]]:
    upstream = ScriptedUpstream(script, delay)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        with gateway(f"http://127.0.0.1:{upstream.server_port}", workdir, template=template) as running:
            yield upstream, running
    finally:
        upstream.shutdown()
        upstream.server_close()


WORKER_DIED = (507, b'{"code": 507, "type": "InternalServerException", "message": "Worker died."}')


def test_a_dead_workers_507_is_resent_once(tmp_path: Path) -> None:
    with scripted([WORKER_DIED], tmp_path / "gw") as (upstream, gw):
        response = call(gw.url, "POST", "/predictions/restar", {}, b'{"text": "resend me"}')
        assert (response.status_code, response.json()) == (200, {"label": "positive"})
        assert upstream.received == [b'{"text": "resend me"}'] * 2


def test_a_second_507_reaches_the_client_unchanged(tmp_path: Path) -> None:
    with scripted([WORKER_DIED, WORKER_DIED], tmp_path / "gw") as (upstream, gw):
        response = call(gw.url, "POST", "/predictions/restar", {}, b'{"text": "twice"}')
        assert (response.status_code, response.content) == WORKER_DIED
        assert len(upstream.received) == 2


def test_other_upstream_errors_are_not_resent(tmp_path: Path) -> None:
    answers = [(413, b'{"error": "too many texts", "status": 413}'), (503, b'{"code": 503}'), (500, b"{}")]
    with scripted(list(answers), tmp_path / "gw") as (upstream, gw):
        for expected in answers:
            response = call(gw.url, "POST", "/predictions/restar", {}, b'{"text": "once"}')
            assert (response.status_code, response.content) == expected
        assert len(upstream.received) == 3


def test_the_retry_hop_listens_on_loopback_only(tmp_path: Path) -> None:
    config = render_gateway_config("torchserve:8080", listen="0.0.0.0:8000", retry_hop="127.0.0.1:8001")
    assert "listen 127.0.0.1:8001;" in config and "server 127.0.0.1:8001;" in config
    with pytest.raises(ValueError, match="loopback"):
        render_gateway_config("torchserve:8080", retry_hop="0.0.0.0:8001")


def worker_pids(server: LocalTorchServe) -> set[int]:
    pids = set()
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "model_service_worker" in " ".join(process.cmdline()):
                pids.add(process.pid)
        except psutil.Error:  # gone, or a zombie not yet reaped
            pass
    return pids


def test_a_worker_killed_under_load_costs_no_request(gw, served, token) -> None:
    """SIGKILL the only worker while 8 clients post: TorchServe answers the batch it held 507, the
    gateway resends those requests, and they wait in the queue for the restarted worker. Last in the
    module: it ends with the new worker answering."""
    access_log = served.workdir / "logs" / "access_log.log"
    lost_before = access_log.read_text().count('" 507 ')
    answers: list[tuple[float, int]] = []
    stop = threading.Event()

    def client(index: int) -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set():
            body = json.dumps({"text": f"review {index}-{n}: sturdy, but the lid cracked"}).encode()
            status = session.post(
                f"{gw.url}/predictions/restar", data=body, headers=token, timeout=120
            ).status_code
            answers.append((time.monotonic(), status))
            n += 1

    old = worker_pids(served)
    assert len(old) == 1
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        os.kill(min(old), signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not worker_pids(served) - old and time.monotonic() < deadline:
            time.sleep(0.1)
        respawned = time.monotonic()
        while sum(end > respawned for end, _ in answers) < 16 and time.monotonic() < deadline:
            time.sleep(0.1)  # the new worker loads the model, then answers
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
    assert sum(end > respawned for end, _ in answers) >= 16, "the restarted worker never answered"
    assert {status for _, status in answers} == {200}, Counter(status for _, status in answers)
    # The test means something only if TorchServe did lose a batch.
    assert access_log.read_text().count('" 507 ') > lost_before


def hurried_template(folder: Path) -> Path:
    """The shipped template with a 1 s read timeout instead of 130 s: what a slow answer gets, in 1 s."""
    shipped = GATEWAY_TEMPLATE.read_text()
    assert "proxy_read_timeout 130s;" in shipped
    path = folder / "nginx.conf"
    path.write_text(shipped.replace("proxy_read_timeout 130s;", "proxy_read_timeout 1s;"))
    return path


def test_an_answer_slower_than_the_read_timeout_gets_a_json_504(tmp_path: Path) -> None:
    with scripted([], tmp_path / "gw", delay=3.0, template=hurried_template(tmp_path)) as (_, slow):
        response = call(slow.url, "POST", "/predictions/restar", {}, b'{"text": "take your time"}')
        assert_json_error(response, 504, "TorchServe did not answer in time")


# The gateway table of docs/serving.md, row by row: each row's request goes to a real gateway (in front of
# the real TorchServe, or of a scripted stand-in where TorchServe must misbehave) and exactly the status
# codes the row names come back. A row without a scenario, or a scenario without a row, fails.
def documented_gateway_table() -> dict[str, str]:
    page = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    table = page.split("It passes two routes and answers the rest itself", 1)[1].split("\n\n", 2)[1]
    cells = [line.strip("|").split(" | ", 1) for line in table.splitlines()[2:]]
    return {request.strip(): answer.strip() for request, answer in cells}


def documented_statuses(answer: str) -> set[int]:
    return {int(code) for code in re.findall(r"\b[245]\d\d\b", answer)}


def observe_predictions(gw, served, token, tmp_path: Path) -> set[int]:
    good = call(gw.url, "POST", "/predictions/restar", token, b'{"text": "Works well."}')
    bad = call(gw.url, "POST", "/predictions/restar", token, b'{"text": broken')
    direct = call(served.inference_url, "POST", "/predictions/restar", token, b'{"text": broken')
    assert (bad.status_code, bad.content) == (direct.status_code, direct.content)  # passed unchanged
    return {good.status_code, bad.status_code}


def observe_ping(gw, served, token, tmp_path: Path) -> set[int]:
    return {call(gw.url, "GET", "/ping", token).status_code}


def observe_tokens(gw, served, token, tmp_path: Path) -> set[int]:
    seen = set()
    for path, method in (("/predictions/restar", "POST"), ("/ping", "GET")):
        for headers in ({}, {"Authorization": "Bearer wrong-key"}):
            response = call(gw.url, method, path, headers, b'{"text": "hi"}' if method == "POST" else b"")
            assert response.headers.get("WWW-Authenticate") == 'Bearer realm="restar"'
            seen.add(response.status_code)
    # "TorchServe itself answers such a request 400"
    seen.add(call(served.inference_url, "POST", "/predictions/restar", {}, b'{"text": "hi"}').status_code)
    return seen


def observe_methods(path: str, allow: str) -> Callable[..., set[int]]:
    def observe(gw, served, token, tmp_path: Path) -> set[int]:
        methods = [m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD") if m != allow]
        responses = [call(gw.url, method, path, token, b'{"text": "hi"}') for method in methods]
        assert {response.headers.get("Allow") for response in responses} == {allow}
        return {response.status_code for response in responses}

    return observe


def observe_other_paths(gw, served, token, tmp_path: Path) -> set[int]:
    paths = ["/explanations/restar", "/v1/models/restar:predict", "/v2/models/restar/infer", "/models", "/"]
    paths += ["/predictions/other", "/predictions/restar/1"]
    return {call(gw.url, "POST", path, token, b'{"text": "hi"}').status_code for path in paths}


def observe_body_limit(gw, served, token, tmp_path: Path) -> set[int]:
    return {call(gw.url, "POST", "/predictions/restar", token, b"x" * (MAX_BODY + 1)).status_code}


def observe_dead_worker(gw, served, token, tmp_path: Path) -> set[int]:
    seen = set()
    for script in ([WORKER_DIED], [WORKER_DIED, WORKER_DIED]):
        with scripted(script, tmp_path / f"gw{len(script)}") as (upstream, stand_in):
            seen.add(call(stand_in.url, "POST", "/predictions/restar", {}, b'{"text": "x"}').status_code)
            assert len(upstream.received) == 2  # resent once, never twice
    assert 200 in seen  # one 507: the resent request's answer
    return seen - {200}


def observe_silent_torchserve(gw, served, token, tmp_path: Path) -> set[int]:
    (closed,) = free_ports(1)
    with gateway(f"http://127.0.0.1:{closed}", tmp_path / "closed") as lonely:
        unreachable = call(lonely.url, "POST", "/predictions/restar", {}, b'{"text": "hi"}').status_code
    with scripted([], tmp_path / "slow", delay=3.0, template=hurried_template(tmp_path)) as (_, slow):
        late = call(slow.url, "POST", "/predictions/restar", {}, b'{"text": "hi"}').status_code
    return {unreachable, late}


# Each row's request cell starts with its key.
GATEWAY_ROWS: dict[str, Callable[..., set[int]]] = {
    "`POST /predictions/restar`": observe_predictions,
    "`GET /ping`": observe_ping,
    "either route with a missing or wrong bearer token": observe_tokens,
    "any other method on `/predictions/restar`": observe_methods("/predictions/restar", "POST"),
    "any other method on `/ping`": observe_methods("/ping", "GET"),
    "any other path": observe_other_paths,
    "body over 1 MiB": observe_body_limit,
    "TorchServe answers 507": observe_dead_worker,
    "TorchServe not answering / answering after 130 s": observe_silent_torchserve,
}
# Rows whose answer is TorchServe's own, so they name no code: what TorchServe answers there.
PASSED_THROUGH = {"`POST /predictions/restar`": {200, 400}, "`GET /ping`": {200}}


def row_key(request_cell: str) -> str:
    (key,) = [key for key in GATEWAY_ROWS if request_cell.startswith(key)]
    return key


def test_every_row_of_the_documented_gateway_table_has_a_scenario() -> None:
    assert sorted(row_key(cell) for cell in documented_gateway_table()) == sorted(GATEWAY_ROWS)


@pytest.mark.parametrize("key", GATEWAY_ROWS)
def test_the_documented_gateway_table_row(gw, served, token, tmp_path: Path, key: str) -> None:
    (answer,) = [answer for cell, answer in documented_gateway_table().items() if cell.startswith(key)]
    expected = PASSED_THROUGH.get(key) or documented_statuses(answer)
    assert GATEWAY_ROWS[key](gw, served, token, tmp_path) == expected, answer
