"""Progress bars on a terminal only: a command whose stderr is a file or a pipe shows none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from restar import progress

BIN = Path(sys.executable).parent


def test_off_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in progress.QUIET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user's own setting wins
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert progress.quiet_unless_terminal() is True
    assert os.environ["TQDM_DISABLE"] == "1"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"


def test_left_alone_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in progress.QUIET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress.quiet_unless_terminal() is False
    assert not set(progress.QUIET) & set(os.environ)


def test_a_logged_prediction_run_has_no_progress_bar(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("text\n" + "Great value.\nBroke in a day.\n" * 50)
    env = {key: value for key, value in os.environ.items() if key not in progress.QUIET}
    command = [str(BIN / "restar"), "predict", "--input", str(tmp_path / "in.csv")]
    command += ["--output", str(tmp_path / "out.csv"), "--model-uri", str(tiny_model_dir)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "it/s" not in done.stderr and "row/s" not in done.stderr
