"""`restar follow`: serve what `production` holds, a thin command over restar.serving.follow."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import click

from restar.cli.options import audit_db_option, model_store_option
from restar.errors import RestarError
from restar.serving.follow import REPO_ROOT, FollowSettings, build_follower, create_webhook, run


@click.command("follow")
@click.option(
    "--torchserve-management",
    "management_url",
    default="http://127.0.0.1:8081",
    show_default=True,
    help="TorchServe's management API (loopback; started with torchserve/config.follow.properties).",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default="key_file.json",
    show_default=True,
    help="The key_file.json TorchServe wrote in its working directory (its management key).",
)
@model_store_option("TorchServe's --model-store: each version is exported there as restar-v<N>.mar.")
@click.option(
    "--secret-env",
    default="RESTAR_WEBHOOK_SECRET",
    show_default=True,
    help="Environment variable holding the webhook secret (never pass the secret itself on a command line).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the webhook receiver binds.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Receiver port.")
@click.option("--model", default="restar", show_default=True, help="Registered model to follow.")
@click.option("--alias", default="production", show_default=True, help="Alias whose version is served.")
@click.option(
    "--poll",
    type=click.FloatRange(min=1),
    help="Also re-check the alias every N seconds (for registries that send no webhooks: a file store).",
)
@click.option("--once", is_flag=True, help="Roll to what the alias holds now, then exit (no receiver).")
@click.option(
    "--create-webhook",
    "webhook_url",
    metavar="URL",
    help="Create (or update) the registry webhook that posts alias events to URL, then exit.",
)
@audit_db_option("SQLAlchemy URL of restar-promote's audit log [default: next to the MLflow store].")
@click.option(
    "--allow-unaudited",
    is_flag=True,
    help="Also serve a version moved past the gates (e.g. in the MLflow UI); by default it is refused.",
)
@click.option(
    "--torchserve-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=REPO_ROOT / "torchserve",
    show_default="the repository's torchserve/",
    envvar="RESTAR_TORCHSERVE_DIR",
    show_envvar=True,
    help="Folder with the handler.py and model-config.yaml that each exported archive packs.",
)
def follow_command(
    management_url: str,
    key_file: Path,
    model_store: Path,
    secret_env: str,
    host: str,
    port: int,
    model: str,
    alias: str,
    poll: float | None,
    once: bool,
    webhook_url: str | None,
    audit_url: str | None,
    allow_unaudited: bool,
    torchserve_dir: Path,
) -> None:
    """Serve what `production` holds: roll TorchServe to each version the alias moves to.

    Reads the registry from MLFLOW_TRACKING_URI. Example: set up once, then run the receiver:

    \b
        export RESTAR_WEBHOOK_SECRET=$(openssl rand -hex 32)
        restar follow --create-webhook http://127.0.0.1:8765/webhook
        restar follow --torchserve-management http://127.0.0.1:8081 --key-file ts/key_file.json
    """
    from registry.errors import RegistryError

    settings = FollowSettings(management_url, key_file, model_store, model, alias)
    settings = replace(
        settings,
        audit_url=audit_url,
        allow_unaudited=allow_unaudited,
        handler=torchserve_dir / "handler.py",
        model_config=torchserve_dir / "model-config.yaml",
    )
    secret = os.environ.get(secret_env, "") if not once else ""
    if not once and not secret:
        raise click.BadParameter(
            f"${secret_env} is empty; set it to the webhook secret", param_hint="--secret-env"
        )
    if not webhook_url and not (settings.handler.is_file() and settings.model_config.is_file()):
        raise click.BadParameter(
            f"{torchserve_dir} holds no handler.py and model-config.yaml", param_hint="--torchserve-dir"
        )
    try:
        if webhook_url:
            click.echo(json.dumps(create_webhook(webhook_url, secret, model), indent=2))
        elif once:
            click.echo(build_follower(settings).reconcile())
        else:
            run(settings, secret, host, port, poll)
    except (RestarError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from exc
