import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from promotion.cli import cli as promote_cli
from restar.cli import cli

COMMANDS = sorted(cli.commands)


def walk(
    root: click.Group, group: click.Group, path: list[str]
) -> list[tuple[click.Group, list[str], click.Command]]:
    """(root CLI, argument path, command) for `group` and every command below it."""
    found = [(root, path, group)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += walk(root, command, [*path, name])
        else:
            found.append((root, [*path, name], command))
    return found


EVERY_COMMAND = [*walk(cli, cli, []), *walk(promote_cli, promote_cli, [])]


def test_all_commands_present() -> None:
    assert set(COMMANDS) == {
        "bench",
        "convert",
        "evaluate",
        "export-torchserve",
        "fetch-model",
        "follow",
        "freeze",
        "inconsistencies",
        "predict",
        "prepare",
        "promote",
        "rank-eval",
        "register",
        "registry",
        "report",
        "serve",
        "train",
        "train-baseline",
    }


@pytest.mark.parametrize(
    ("root", "path", "command"),
    EVERY_COMMAND,
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_every_command_has_help(root: click.Group, path: list[str], command: click.Command) -> None:
    result = CliRunner().invoke(root, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"{' '.join(path)} --{param.name} has no help text"


def predict_args(source: Path, out: Path, model_dir: Path) -> list[str]:
    """`restar predict` of `source` into `out` with the model in `model_dir`."""
    return ["predict", "--input", str(source), "--output", str(out), "--model-uri", str(model_dir)]


def test_predict_through_the_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    pd.DataFrame({"text": ["good", "bad", ""]}).to_csv(tmp_path / "in.csv", index=False)
    result = CliRunner().invoke(
        cli, predict_args(tmp_path / "in.csv", tmp_path / "out.jsonl", tiny_model_dir)
    )
    assert result.exit_code == 0, result.output
    assert "wrote 3 predictions" in result.output
    assert len(pd.read_json(tmp_path / "out.jsonl", lines=True)) == 3


def test_predict_error_is_a_message_not_a_traceback(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("body\nhello\n")
    result = CliRunner().invoke(cli, predict_args(tmp_path / "in.csv", tmp_path / "out.csv", tiny_model_dir))
    assert result.exit_code == 1
    assert "missing 'text' column" in result.output
    assert "Traceback" not in result.output


def test_bad_config_is_rejected_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  keep_layer: 2\n")
    result = CliRunner().invoke(cli, ["fetch-model", "--config", str(bad), "--out", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "model.keep_layer" in result.output
    assert not (tmp_path / "m").exists()


def test_bench_writes_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    pd.DataFrame({"text": ["a fine review", "another one", "", "third text here"]}).to_parquet(
        tmp_path / "e.parquet"
    )
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--model-uri",
            str(tiny_model_dir),
            "--data",
            str(tmp_path / "e.parquet"),
            "-n",
            "5",
            "--warmup",
            "2",
            "--output",
            str(tmp_path / "b.json"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["calls"] == 5
    assert 0 < report["latency_p50_ms"] <= report["latency_p95_ms"]
    assert report["hardware"]["torch_threads"] >= 1
    assert report["hardware"]["cpu"]


def test_installed_console_script(tiny_model_dir: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("restar")
    pd.DataFrame({"text": ["good", "bad"]}).to_csv(tmp_path / "in.csv", index=False)
    result = subprocess.run(
        [str(script), *predict_args(tmp_path / "in.csv", tmp_path / "out.csv", tiny_model_dir)],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(tmp_path / "out.csv")) == 2
