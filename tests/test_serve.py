"""`restar serve`: the state folder rules, and a real TorchServe started, called, inspected and stopped
through the CLI as a user runs it, leaving nothing in the directory it was started from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from restar.cli import cli
from restar.serving.serve import (
    ServeError,
    ServeHome,
    ServeState,
    check_config,
    is_alive,
    quiet_log_config,
    serve_home,
    server_config,
    start,
    token_command,
    torchserve_log_config,
    write_state,
)
from restar.serving.serve_local import MAX_SOCKET_DIR, find_nginx, torchserve_temp
from tests.served import export_production, register_production

REPO_ROOT = Path(__file__).resolve().parents[1]
RESTAR = Path(sys.executable).parent / "restar"
CONFIG = REPO_ROOT / "torchserve" / "config.properties"
LABELS = {"negative", "neutral", "positive", "abstain"}


# --- the state folder and the serving rules (no server) ---


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RESTAR_SERVE_HOME": "/srv/rs", "XDG_STATE_HOME": "/x", "HOME": "/h"}, "/srv/rs"),
        ({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}, "/x/state/restar/serve"),
        ({"XDG_STATE_HOME": "relative/state", "HOME": "/h"}, "/h/.local/state/restar/serve"),
        ({"XDG_STATE_HOME": "", "HOME": "/h"}, "/h/.local/state/restar/serve"),
        ({"HOME": "/h"}, "/h/.local/state/restar/serve"),
    ],
)
def test_state_folder_follows_restar_serve_home_then_xdg_then_home(env: dict, expected: str) -> None:
    assert serve_home(env).root == Path(expected)


def test_a_relative_restar_serve_home_is_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert serve_home({"RESTAR_SERVE_HOME": "state"}).root == tmp_path / "state"


def test_the_shipped_config_keeps_the_serving_rules() -> None:
    check_config(CONFIG.read_text())
    moved = server_config(CONFIG, [9101, 9102, 9103, 9104, 9105])
    assert "inference_address=http://127.0.0.1:9101" in moved
    assert "grpc_management_port=9105" in moved


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("inference_address=http://127.0.0.1:8080", "inference_address=http://0.0.0.0:8080"), "loopback"),
        (("management_address=http://127.0.0.1:8081", "management_address=http://10.0.0.5:8081"), "loopback"),
        (("grpc_inference_address=127.0.0.1", "grpc_inference_address=0.0.0.0"), "loopback"),
        (("grpc_management_address=127.0.0.1\n", ""), "grpc_management_address"),
        (("disable_token_authorization=false", "disable_token_authorization=true"), "token"),
        (("enable_model_api=false", "enable_model_api=true"), "model API"),
        (("enable_envvars_config=false", "enable_envvars_config=true"), "TS_"),
    ],
)
def test_a_config_that_breaks_the_rules_is_refused(change: tuple[str, str], message: str) -> None:
    text = CONFIG.read_text()
    assert change[0] in text
    with pytest.raises(ServeError, match=message):
        check_config(text.replace(*change))


def test_torchserve_logs_go_to_files_only() -> None:
    shipped = torchserve_log_config()
    assert '<AppenderRef ref="STDOUT"/>' in shipped  # what TorchServe does by default
    quiet = quiet_log_config(shipped)
    assert "STDOUT" not in quiet.split("<Loggers>")[1]
    assert quiet.count("<AppenderRef") == shipped.count("<AppenderRef") - 1
    assert "${env:LOG_LOCATION:-logs}/ts_log.log" in quiet


def test_the_token_command_prints_the_inference_key(tmp_path: Path) -> None:
    key_file = tmp_path / "a dir with spaces" / "key_file.json"
    key_file.parent.mkdir()
    key_file.write_text(json.dumps({"inference": {"key": "abc123"}, "management": {"key": "m"}}))
    done = subprocess.run(["bash", "-c", token_command(key_file)], capture_output=True, text=True, check=True)
    assert done.stdout == "abc123\n"


def test_status_with_nothing_running_says_so_and_exits_3(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "status", "--home", str(tmp_path / "home")])
    assert result.exit_code == 3
    assert "not running" in result.output


def test_a_stale_record_is_removed_with_its_key_file(tmp_path: Path) -> None:
    home = ServeHome(tmp_path / "home")
    home.root.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_state(home, _state(gone.pid))
    home.key_file.write_text("{}")
    result = CliRunner().invoke(cli, ["serve", "status", "--home", str(home.root), "--json"])
    assert result.exit_code == 3
    assert json.loads(result.output)["running"] is False
    assert not home.state_file.exists() and not home.key_file.exists()


def test_a_damaged_record_is_named(tmp_path: Path) -> None:
    (tmp_path / "serve.json").write_text("{not json")
    result = CliRunner().invoke(cli, ["serve", "status", "--home", str(tmp_path)])
    assert result.exit_code == 1
    assert "serve.json is not a `restar serve` record" in result.output


def test_start_refuses_while_a_server_is_recorded_running(tmp_path: Path) -> None:
    home = ServeHome(tmp_path / "home")
    home.root.mkdir()
    write_state(home, _state(os.getpid()))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "restar.mar").write_bytes(b"")
    with pytest.raises(ServeError, match="already serving"):
        start(home, tmp_path / "store", CONFIG)


def test_start_without_an_archive_names_the_export_command(tmp_path: Path) -> None:
    home = tmp_path / "home"
    args = ["serve", "start", "--home", str(home), "--model-store", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "restar export-torchserve" in result.output
    assert not home.exists()


def test_stop_with_nothing_running_is_fine(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "stop", "--home", str(tmp_path)])
    assert result.exit_code == 0
    assert "nothing was running" in result.output


def _state(pid: int) -> ServeState:
    url = "http://127.0.0.1:1"
    return ServeState(pid, url, url, url, "/nowhere", "1", 0.0)


# --- a real TorchServe through the CLI ---


@pytest.fixture(scope="module")
def model_store(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """restar.mar exported from a registry whose production version (1) is the tiny model."""
    root = tmp_path_factory.mktemp("serve_export")
    return export_production(register_production(tiny_model_dir, root), root)


@pytest.fixture
def user(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """An empty directory to run from and a state folder; whatever a failed test left running is stopped."""
    (tmp_path / "cwd").mkdir()
    paths = {"cwd": tmp_path / "cwd", "home": tmp_path / "state" / "restar-serve"}
    yield paths
    if (paths["home"] / "serve.json").exists():
        restar_serve(paths, "stop")


def restar_serve(user: dict[str, Path], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESTAR_SERVE_HOME": str(user["home"])}
    return subprocess.run(
        [str(RESTAR), "serve", *args],
        cwd=user["cwd"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_args(model_store: Path, *extra: str) -> list[str]:
    return [
        "start",
        "--model-store",
        str(model_store),
        "--config",
        str(CONFIG),
        "--free-ports",
        "--json",
        *extra,
    ]


def predict(url: str, token: str | None, texts: list[str]) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(url, json={"texts": texts}, headers=headers, timeout=60)


@pytest.mark.slow
def test_start_predict_status_stop_leaves_nothing_in_the_work_tree(model_store: Path, user) -> None:
    started = restar_serve(user, *start_args(model_store, "--detach"))
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    assert info["key_file"] == str(user["home"] / "key_file.json")
    assert info["model_version"] == "1"

    # The token, read as the README says.
    token = subprocess.run(
        ["bash", "-c", info["token_command"]], capture_output=True, text=True, check=True
    ).stdout.strip()
    answer = predict(info["predictions_url"], token, ["Love it", "Broke in a day"])
    assert answer.status_code == 200
    assert [row["label"] in LABELS for row in answer.json()] == [True, True]
    assert {row["model_version"] for row in answer.json()} == {1}
    refused = predict(info["predictions_url"], "not-the-key", ["Love it"])
    assert refused.status_code == 400 and "token" in refused.text.lower()  # TorchServe 0.12's answer

    status = restar_serve(user, "status", "--json")
    assert status.returncode == 0, status.stdout
    shown = json.loads(status.stdout)
    assert shown["running"] is True and shown["answering"] is True
    assert {key: shown[key] for key in info} == info

    logs = user["home"] / "logs"
    assert "/predictions/restar" in (logs / "access_log.log").read_text()
    assert "/predictions/restar" not in (logs / "console.log").read_text()  # nothing per request on a console

    stopped = restar_serve(user, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"pid {info['pid']}" in stopped.stdout
    assert not is_alive(info["pid"])
    assert restar_serve(user, "status").returncode == 3
    assert not (user["home"] / "key_file.json").exists()
    assert not (user["home"] / "serve.json").exists()
    assert list(user["cwd"].iterdir()) == []
    assert not (REPO_ROOT / "key_file.json").exists()


@pytest.mark.slow
def test_ctrl_c_stops_a_foreground_server(model_store: Path, user) -> None:
    env = {**os.environ, "RESTAR_SERVE_HOME": str(user["home"])}
    process = subprocess.Popen(
        [str(RESTAR), "serve", *start_args(model_store)],
        cwd=user["cwd"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As in a terminal: a suite started in the background (`cmd &`) ignores SIGINT, and a child
        # inherits that, so the Ctrl-C sent below would never arrive.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        printed = ""
        while not printed.endswith("}\n"):
            line = process.stdout.readline()
            assert line, process.stderr.read()
            printed += line
        info = json.loads(printed)
        assert restar_serve(user, "status").returncode == 0
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()  # show what the server printed and logged
            stderr = process.communicate()[1][-3000:]
            logs = "".join(path.read_text()[-2000:] for path in sorted(user["home"].rglob("*.log")))
            restar_serve(user, "stop")
            pytest.fail(f"no exit 120 s after SIGINT\nstderr: {stderr}\nlogs: {logs}")
        assert code == 0
    finally:
        if process.poll() is None:
            process.kill()
            restar_serve(user, "stop")
    assert not is_alive(info["pid"])
    assert not (user["home"] / "serve.json").exists()
    assert list(user["cwd"].iterdir()) == []


@pytest.mark.slow
def test_the_gateway_runs_in_front_and_stops_with_it(model_store: Path, user) -> None:
    try:
        find_nginx()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    started = restar_serve(user, *start_args(model_store, "--detach", "--gateway"))
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    try:
        token = json.loads((user["home"] / "key_file.json").read_text())["inference"]["key"]
        assert predict(info["gateway_url"], token, ["Love it"]).status_code == 200
        assert requests.get(info["gateway_url"], timeout=10).status_code == 405  # the gateway's own answer
    finally:
        assert restar_serve(user, "stop").returncode == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(info["gateway_url"], timeout=10)
    assert list(user["cwd"].iterdir()) == []


def test_temp_folder_stays_short_enough_for_worker_sockets(tmp_path: Path) -> None:
    assert torchserve_temp(tmp_path) == tmp_path.resolve() / "tmp"
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    temp = torchserve_temp(deep)
    assert len(str(temp)) <= MAX_SOCKET_DIR and temp.parent == Path("/tmp")
    assert torchserve_temp(deep) == temp  # `torchserve --stop` must find the same folder
    assert torchserve_temp(tmp_path / ("d" * 60) / ("f" * 60)) != temp
