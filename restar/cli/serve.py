"""`restar serve start|stop|status`: the exported TorchServe archive on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from restar.cli.errors import user_errors
from restar.cli.options import EXISTING_FILE, FOLDER, json_option, model_store_option
from restar.cli.output import report

if TYPE_CHECKING:
    from restar.serving.serve import ServeHome

EXIT_NOT_SERVING = 3  # `restar serve status`: nothing is running
EXIT_NOT_ANSWERING = 4  # `restar serve status`: the process runs but does not answer /ping

home_option = click.option(
    "--home",
    type=FOLDER,
    default=None,
    help="State folder for keys, logs and temp files "
    "[default: $RESTAR_SERVE_HOME, else $XDG_STATE_HOME/restar/serve, else ~/.local/state/restar/serve].",
)


def serve_home_from(home: Path | None) -> ServeHome:
    from restar.serving.serve import ServeHome, serve_home

    return serve_home() if home is None else ServeHome(home.absolute())


@click.group("serve")
def serve_group() -> None:
    """Serve the exported TorchServe archive on this machine: loopback only, token auth on.

    TorchServe's key file, logs and temp files go to a per-user state folder, never the work tree.

    \b
    Example:
        restar export-torchserve
        restar serve start --detach
        restar serve status
        restar serve stop
    """


@serve_group.command("start")
@model_store_option("Folder holding restar.mar (written by `restar export-torchserve`).")
@click.option(
    "--config",
    "config_path",
    type=EXISTING_FILE,
    default="torchserve/config.properties",
    show_default=True,
    help="TorchServe config; must keep loopback addresses, token auth on and the model API off.",
)
@click.option("--detach", is_flag=True, help="Return once it serves, leaving it running in the background.")
@click.option(
    "--free-ports",
    is_flag=True,
    help="Listen on free loopback ports instead of the config's (to run beside another server).",
)
@click.option("--gateway", is_flag=True, help="Also run the nginx gateway (torchserve/nginx.conf) in front.")
@click.option(
    "--gateway-port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="Gateway port on 127.0.0.1 (a free one with --free-ports).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300,
    show_default=True,
    help="Seconds to wait for the first prediction.",
)
@home_option
@json_option
@user_errors
def serve_start_command(
    model_store: Path,
    config_path: Path,
    detach: bool,
    free_ports: bool,
    gateway: bool,
    gateway_port: int,
    timeout: float,
    home: Path | None,
    as_json: bool,
) -> None:
    """Start TorchServe on the exported archive; print its URL, key file and how to read the token.

    In the foreground by default (Ctrl-C stops it), or in the background with --detach.
    Exit codes: 0 served (and, in the foreground, stopped cleanly), 1 it could not start
    (no archive, already running, a config that breaks the rules, not answering in time).

    Example: restar serve start --detach
    """
    from restar.serving import serve

    paths = serve_home_from(home)
    ports = serve.free_ports(5) if free_ports else None
    listen = serve.gateway_listen_port(gateway_port if gateway else None, free_ports)
    state, server = serve.start(paths, model_store, config_path, ports, listen, timeout)
    report(serve.describe(state, paths), as_json)
    if detach:
        return
    click.echo("serving in the foreground: Ctrl-C stops it", err=True)
    code = serve.run_foreground(paths, server)
    if code:
        raise click.ClickException(f"TorchServe exited with {code}; its logs: {paths.log_dir}")


@serve_group.command("stop")
@home_option
@user_errors
def serve_stop_command(home: Path | None) -> None:
    """Stop the server `restar serve start` started (`torchserve --stop`, then its process group).

    Exit codes: 0 stopped, or nothing was running.

    Example: restar serve stop
    """
    from restar.serving import serve

    state = serve.stop(serve_home_from(home))
    click.echo("nothing was running" if state is None else f"stopped TorchServe (pid {state.pid})")


@serve_group.command("status")
@home_option
@json_option
@user_errors
def serve_status_command(home: Path | None, as_json: bool) -> None:
    """Show the running server: pid, URL, model version, key file, log folder.

    Exit codes: 0 running and answering, 3 not running, 4 running but not answering /ping.

    Example: restar serve status
    """
    from restar.serving import serve

    paths = serve_home_from(home)
    state = serve.live_state(paths)
    if state is None:
        if as_json:
            report({"running": False, "state_dir": str(paths.root)}, as_json)
        else:
            click.echo(f"not running (state folder {paths.root})")
        raise click.exceptions.Exit(EXIT_NOT_SERVING)
    answering = serve.is_answering(state, paths)
    report({"running": True, "answering": answering, **serve.describe(state, paths)}, as_json)
    if not answering:
        raise click.exceptions.Exit(EXIT_NOT_ANSWERING)
