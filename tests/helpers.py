from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from ts.context import Context, RequestProcessor

from restar.labels import LABELS
from restar.model.inference import ModelMetadata
from restar.training.fetch_model import packaged_encoder_dir

# What restar.training.metrics.classification_metrics returns, and the pipeline writes with a
# dev_/eval_ prefix.
METRIC_NAMES = (
    "accuracy",
    "macro_f1",
    "f1_negative",
    "f1_neutral",
    "f1_positive",
    "coverage",
    "selective_accuracy",
    "ece",
)


def make_tiny_model(out_dir: Path, temperature: float = 1.3) -> Path:
    source = packaged_encoder_dir()
    config = AutoConfig.from_pretrained(
        source,
        num_hidden_layers=1,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, config=config)
    with torch.no_grad():  # a head with visible spread, so probabilities differ between texts
        model.classifier.weight.normal_(0.0, 2.0)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(out_dir)
    ModelMetadata(temperature=temperature, max_length=64, base_model="tiny-test").save(out_dir)
    return out_dir


def strict_json(text: str) -> object:
    """json.loads that refuses NaN and Infinity, which Python's accepts but JSON does not have."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


HANDLER_FILE = Path(__file__).resolve().parents[1] / "torchserve" / "handler.py"


def load_handler(model_dir: Path, workdir: Path, version: str = "1"):
    """torchserve/handler.py's RestarHandler, initialized as TorchServe would on a copy of `model_dir`.
    Its initialize sets TS_DECODE_INPUT_REQUEST in os.environ: call it under a MonkeyPatch that
    sets that variable, so it is restored after."""
    archive_dir = workdir / "model"
    shutil.copytree(model_dir, archive_dir)
    (archive_dir / "registry.json").write_text(json.dumps({"version": version}))
    spec = importlib.util.spec_from_file_location("restar_ts_handler", HANDLER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.RestarHandler()
    handler.initialize(batch_context(archive_dir, 1))
    return handler, archive_dir


def batch_context(model_dir: Path, size: int) -> Context:
    """TorchServe's own Context for a batch of `size` JSON requests (metrics are dropped)."""
    context = Context("restar", str(model_dir), {}, size, None, "0.12.0")
    context.metrics = SimpleNamespace(add_time=lambda *args, **kwargs: None)
    context.request_processor = [RequestProcessor({"Content-Type": "application/json"}) for _ in range(size)]
    return context
