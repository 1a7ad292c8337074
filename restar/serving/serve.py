"""`restar serve`: the exported TorchServe archive as a local service whose files stay out of the work tree.

TorchServe 0.12 writes `key_file.json` into its working directory, its logs into `$LOG_LOCATION` and
`$METRICS_LOCATION` (`logs/` under the working directory when unset), unpacks archives under `$TEMP`
(which must exist) and keeps its pid file in the temp folder. So every server runs with its working
directory in a per-user state folder, `serve_home()`:

    serve.json          what `status` and `stop` read: pids, URLs, the version served
    config.properties   torchserve/config.properties as served (ports moved when asked)
    log4j2.xml          TorchServe's own log config without the console appender
    key_file.json       TorchServe's token keys (removed at stop)
    logs/               TorchServe's logs, and console.log (its launcher's output)
    tmp/                TEMP: unpacked archives, pid file, worker sockets (a short /tmp/restar-ts-*
                        folder instead when this path is too long for a Unix socket)
    gateway/            the nginx gateway's config, temp folders and log (with a gateway)
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import time
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import requests

from restar.errors import RestarError
from restar.serving.serve_local import (
    GatewayError,
    LocalTorchServe,
    TorchServeError,
    free_ports,
    launch_gateway,
    launch_torchserve,
    local_config,
    stop_torchserve,
    torchserve_env,
    wait_until_serving,
)

MODEL = "restar"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServeError(RestarError):
    """The server cannot be started, or its config breaks the serving rules."""


@dataclass(frozen=True)
class ServeHome:
    """The state folder of one local server and the files TorchServe writes into it."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "serve.json"

    @property
    def key_file(self) -> Path:
        return self.root / "key_file.json"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def console_log(self) -> Path:
        return self.log_dir / "console.log"

    @property
    def log_config(self) -> Path:
        return self.root / "log4j2.xml"

    @property
    def gateway_dir(self) -> Path:
        return self.root / "gateway"


@dataclass(frozen=True)
class ServeState:
    """What `start` records in serve.json for `status` and `stop`."""

    pid: int  # the `torchserve` launcher, leader of the server's process group
    inference_url: str
    management_url: str
    metrics_url: str
    model_store: str
    model_version: str | None
    started_at: float
    gateway_pid: int | None = None
    gateway_url: str | None = None


def serve_home(env: Mapping[str, str] | None = None) -> ServeHome:
    """$RESTAR_SERVE_HOME, else $XDG_STATE_HOME/restar/serve, else ~/.local/state/restar/serve.

    A relative XDG_STATE_HOME is ignored, as the XDG base directory spec says."""
    env = os.environ if env is None else env
    if env.get("RESTAR_SERVE_HOME"):
        return ServeHome(Path(env["RESTAR_SERVE_HOME"]).expanduser().absolute())
    state = env.get("XDG_STATE_HOME", "")
    if state and Path(state).is_absolute():
        base = Path(state)
    else:
        base = Path(env["HOME"]) if env.get("HOME") else Path.home()
        base = base / ".local" / "state"
    return ServeHome(base / "restar" / "serve")


def prepare_home(home: ServeHome) -> None:
    """Create the state folder (private: the key file is a secret) and TorchServe's quiet log config."""
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.log_dir.mkdir(exist_ok=True)
    home.log_config.write_text(quiet_log_config(torchserve_log_config()))


def torchserve_log_config() -> str:
    """The log4j2.xml TorchServe 0.12 ships inside its frontend jar."""
    spec = find_spec("ts")
    if spec is None or not spec.submodule_search_locations:
        raise ServeError("TorchServe is not installed: pip install -e '.[serve]'")
    jar = Path(spec.submodule_search_locations[0]) / "frontend" / "model-server.jar"
    with zipfile.ZipFile(jar) as archive:
        return archive.read("log4j2.xml").decode()


def quiet_log_config(log4j_xml: str) -> str:
    """TorchServe's log config with its console appender unused: logs go to the rolling files only
    (TorchServe otherwise prints about five lines per request)."""
    quiet = log4j_xml.replace('<AppenderRef ref="STDOUT"/>', "")
    if "STDOUT" in quiet.split("<Loggers>", 1)[-1]:
        raise ServeError("TorchServe's log4j2.xml changed shape: cannot take its console appender out")
    return quiet


def read_properties(config_text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in config_text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.lstrip().startswith("#")}


def check_config(config_text: str) -> None:
    """The serving rules: every listener on loopback, token authorization on, model API off."""
    props = read_properties(config_text)
    for name in ("inference", "management", "metrics"):
        host = urlsplit(props.get(f"{name}_address", "")).hostname
        if host not in LOOPBACK:
            raise ServeError(f"{name}_address must be a loopback address, got {host!r}")
    for name in ("grpc_inference_address", "grpc_management_address"):
        if props.get(name) not in LOOPBACK:
            raise ServeError(f"{name} must be set to a loopback address, got {props.get(name)!r}")
    if props.get("disable_token_authorization", "false").lower() != "false":
        raise ServeError("token authorization must stay on (disable_token_authorization=false)")
    if props.get("enable_model_api", "false").lower() != "false":
        raise ServeError("the model API must stay off (enable_model_api=false)")
    if props.get("enable_envvars_config", "false").lower() != "false":
        raise ServeError(
            "TS_* environment variables must not override the config (enable_envvars_config=false)"
        )


def server_config(config: Path, ports: list[int] | None) -> str:
    """`config`, with its 5 ports moved to `ports` when given, checked against the serving rules."""
    text = local_config(config, ports) if ports else config.read_text()
    check_config(text)
    return text


def read_state(home: ServeHome) -> ServeState | None:
    if not home.state_file.is_file():
        return None
    try:
        return ServeState(**json.loads(home.state_file.read_text()))
    except (ValueError, TypeError) as exc:
        raise ServeError(f"{home.state_file} is not a `restar serve` record ({exc}); remove it") from exc


def write_state(home: ServeHome, state: ServeState) -> None:
    staged = home.state_file.with_suffix(".json.tmp")
    staged.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(staged, home.state_file)


def is_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def live_state(home: ServeHome) -> ServeState | None:
    """The recorded server if its process still runs; a stale record (and key file) is removed."""
    state = read_state(home)
    if state is not None and not is_alive(state.pid):
        forget(home)
        return None
    return state


def forget(home: ServeHome) -> None:
    home.state_file.unlink(missing_ok=True)
    home.key_file.unlink(missing_ok=True)


def archive_version(mar: Path) -> str | None:
    """The model version in the archive's manifest (the registry version, as exported)."""
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    return manifest.get("model", {}).get("modelVersion")


def served_version(server: LocalTorchServe) -> str | None:
    """The version TorchServe says it loaded (the management API's model description); None if it
    does not say."""
    headers = {"Authorization": f"Bearer {server.keys['management']}"}
    try:
        response = requests.get(f"{server.management_url}/models/{MODEL}", headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()[0].get("modelVersion")
    except (requests.RequestException, ValueError, KeyError, IndexError, AttributeError):
        return None


def start(
    home: ServeHome,
    model_store: Path,
    config: Path,
    ports: list[int] | None = None,
    gateway_port: int | None = None,
    ready_timeout: float = 300,
) -> tuple[ServeState, LocalTorchServe]:
    """Start TorchServe on `model_store`/restar.mar with `config` in `home`; return once it answers a
    prediction (and the gateway, if `gateway_port`, answers too), with its state recorded."""
    mar = model_store / f"{MODEL}.mar"
    if not mar.is_file():
        raise ServeError(f"no archive at {mar}: run `restar export-torchserve` first")
    running = live_state(home)
    if running is not None:
        raise ServeError(f"already serving (pid {running.pid}, {home.root}): `restar serve stop` first")
    config_text = server_config(config, ports)
    prepare_home(home)
    server = launch_torchserve(
        model_store.resolve(), config_text, home.root, home.console_log, log_config=home.log_config
    )
    try:
        wait_until_serving(server, ready_timeout)
        state = ServeState(
            pid=server.process.pid,
            inference_url=server.inference_url,
            management_url=server.management_url,
            metrics_url=server.metrics_url,
            model_store=str(model_store.resolve()),
            model_version=served_version(server) or archive_version(mar),
            started_at=time.time(),
        )
        if gateway_port is not None:
            gw = launch_gateway(server.inference_url, home.gateway_dir, gateway_port)
            state = ServeState(**{**asdict(state), "gateway_pid": gw.process.pid, "gateway_url": gw.url})
    except (TorchServeError, GatewayError) as exc:
        _stop_process_group(server.process.pid, home, timeout=60)
        forget(home)
        raise ServeError(f"{exc}\nTorchServe's logs: {home.log_dir}") from exc
    except BaseException:  # anything else (Ctrl-C included) must not leave a server behind either
        _stop_process_group(server.process.pid, home, timeout=60)
        forget(home)
        raise
    write_state(home, state)
    return state, server


def stop(home: ServeHome, timeout: float = 60) -> ServeState | None:
    """Stop the recorded server (gateway first, then `torchserve --stop`, SIGTERM/SIGKILL to its
    process group if it lingers) and forget it; None when nothing was running."""
    state = read_state(home)
    if state is None:
        return None
    if state.gateway_pid is not None:
        _terminate_group(state.gateway_pid, timeout)
    _stop_process_group(state.pid, home, timeout)
    forget(home)
    return state


def run_foreground(home: ServeHome, server: LocalTorchServe) -> int:
    """Wait for TorchServe; on Ctrl-C or SIGTERM stop it cleanly. Returns TorchServe's exit code
    (0 when stopped from here)."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return server.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(home)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_process_group(pid: int, home: ServeHome, timeout: float) -> None:
    if is_alive(pid):
        stop_torchserve(home.root, torchserve_env(home.root), timeout)
    _wait_gone(pid, timeout)
    _terminate_group(pid, timeout)  # a launcher that would not stop, or a JVM or worker that outlived it


def _terminate_group(pgid: int, timeout: float) -> None:
    """SIGTERM to what is left of process group `pgid`, SIGKILL after `timeout` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = _group_members(pgid)
        if not members:
            return
        for process in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
        psutil.wait_procs(members, timeout=timeout)


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def is_answering(state: ServeState, home: ServeHome) -> bool:
    """Whether TorchServe answers /ping (which wants the inference token in 0.12)."""
    try:
        key = json.loads(home.key_file.read_text())["inference"]["key"]
        response = requests.get(
            f"{state.inference_url}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
    except (OSError, ValueError, KeyError, requests.RequestException):
        return False
    return response.status_code == 200


def token_command(key_file: Path) -> str:
    """A shell one-liner that prints the inference token (TorchServe rewrites the file when a key
    is renewed, so read it each time rather than keeping a copy)."""
    program = 'import json,sys; print(json.load(open(sys.argv[1]))["inference"]["key"])'
    return f"python3 -c {shlex.quote(program)} {shlex.quote(str(key_file))}"


def describe(state: ServeState, home: ServeHome) -> dict[str, object]:
    """What a user needs to call the server: URLs, the version served, where the key and logs are."""
    record: dict[str, object] = {
        "pid": state.pid,
        "model_version": state.model_version,
        "predictions_url": f"{state.inference_url}/predictions/{MODEL}",
    }
    if state.gateway_url:
        record["gateway_url"] = f"{state.gateway_url}/predictions/{MODEL}"
    record |= {
        "key_file": str(home.key_file),
        "token_command": token_command(home.key_file),
        "log_dir": str(home.log_dir),
        "state_dir": str(home.root),
    }
    return record


def gateway_listen_port(port: int | None, use_free_ports: bool) -> int | None:
    """The gateway's port: none without a gateway, a free one when the server takes free ports."""
    if port is None:
        return None
    return free_ports(1)[0] if use_free_ports else port
