"""Loading, training set-up, calibration and export say nothing they should not, and refuse what they must."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file, save_file

from restar.config import TrainConfig
from restar.model.calibration import fit_calibration
from restar.model.inference import InferenceCore, model_kinds
from restar.model.onnx_export import convert
from restar.training.evaluate import HEADLINE_METRICS, headline_metrics
from restar.training.fetch_model import packaged_encoder_dir
from restar.training.finetune import build_trainer, load_encoder, to_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
TRANSFORMERS_NOISE = ("LOAD REPORT", "MISSING", "UNEXPECTED", "Loading weights")


@contextmanager
def no_warnings() -> Iterator[None]:
    """Every warning, however often it was seen before, is an error inside the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def assert_no_transformers_report(capfd: pytest.CaptureFixture[str]) -> None:
    out, err = capfd.readouterr()
    for noise in TRANSFORMERS_NOISE:
        assert noise not in out + err, f"{noise!r} printed:\n{err[-2000:]}"


def test_a_fine_tuned_model_loads_without_a_word(
    tiny_model_dir: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    model_kinds()  # imports MLflow, which hides its import-time warnings in a way an error filter defeats
    capfd.readouterr()
    with caplog.at_level(logging.INFO), no_warnings():
        core = InferenceCore.from_dir(tiny_model_dir)
    assert_no_transformers_report(capfd)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert len(core.predict(["Works well"])) == 1


def test_a_checkpoint_without_its_head_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_model_dir, tmp_path / "model")
    weights = load_file(broken / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("classifier.")}, broken / "model.safetensors"
    )
    with pytest.raises(ValueError, match=r"not a complete fine-tuned checkpoint.*classifier\.bias"):
        InferenceCore.from_dir(broken)


def test_the_new_head_is_reported_once_in_our_words(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="restar"), no_warnings():
        load_encoder(packaged_encoder_dir())
    assert_no_transformers_report(capfd)
    messages = [r.getMessage() for r in caplog.records if r.name == "restar.training.finetune"]
    assert len([m for m in messages if m.startswith("new 3-class head")]) == 1
    assert "classifier.bias, classifier.weight" in messages[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_training_batch_on_this_machine_warns_of_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer, model = load_encoder(tiny_model_dir)
    frame = pd.DataFrame({"text": ["Great", "Awful", "Fine I guess", "Broke"], "label": [2, 0, 1, 0]})
    rows = to_dataset(frame, tokenizer, 32)
    trainer = build_trainer(TrainConfig(batch_size=2), model, tokenizer, rows, rows, tmp_path)
    with no_warnings():  # pin_memory on a machine without an accelerator warned on every epoch
        batch = next(iter(trainer.get_train_dataloader()))
    assert batch["labels"].shape == (2,)


def test_calibration_takes_read_only_columns_quietly() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"label": rng.integers(0, 3, 60)})
    labels = frame["label"].to_numpy()  # pandas' copy-on-write hands out read-only arrays
    logits = rng.normal(size=(60, 3)) + np.eye(3)[labels] * 2
    logits.flags.writeable = False
    assert not labels.flags.writeable
    with no_warnings():
        temperature, bias = fit_calibration(logits, labels, with_bias=True)
    assert temperature > 0 and len(bias) == 3


def test_onnx_export_warns_of_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    with no_warnings():
        convert(model_dir, "onnx")
    assert (model_dir / "model.onnx").is_file()


# --- `dvc metrics show`: a few headline columns, filled for every run -------------------------------


def test_dvc_metrics_show_lines_up_the_runs(tmp_path: Path) -> None:
    declared = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    shown = [next(iter(entry)) for stage in declared.values() for entry in stage.get("metrics", [])]
    assert shown and all(path.endswith("/metrics.json") for path in shown)
    for name, stage in declared.items():  # the detailed files stay outputs: register and the gates read them
        if stage.get("metrics"):
            outs = [next(iter(out)) if isinstance(out, dict) else out for out in stage["outs"]]
            assert any(out.endswith("/metrics_eval.json") for out in outs), name

    (tmp_path / "dvc.yaml").write_text((REPO_ROOT / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    for number, path in enumerate(shown):
        run_dir = (tmp_path / path).parent
        run_dir.mkdir(parents=True)
        dev = {"dev_accuracy": 0.8, "dev_macro_f1": 0.5 + number / 10, "temperature": 1.1}
        (run_dir / "metrics_dev.json").write_text(json.dumps(dev))
        evaluation = {
            f"eval_{name}": 0.7 for name in ("accuracy", "macro_f1", "coverage", "ece", "f1_neutral")
        }
        evaluation |= {"eval_selective_accuracy": 0.9, "eval_rows": 1000}
        (run_dir / "metrics.json").write_text(json.dumps(headline_metrics(run_dir, evaluation)))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    result = subprocess.run(
        [*dvc, "metrics", "show", "--json"], cwd=tmp_path, check=True, capture_output=True, text=True
    )
    rows = json.loads(result.stdout)[""]["data"]
    assert sorted(rows) == sorted(shown)
    for path, row in rows.items():
        assert list(row["data"]) == list(HEADLINE_METRICS), path  # every column filled for every run
    assert rows[shown[0]]["data"]["dev_macro_f1"] == 0.5
