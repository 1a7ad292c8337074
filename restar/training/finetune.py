"""The fine-tuning recipe: encoder with a 3-class head, tokenized data, loss and Hugging Face Trainer.

`restar.training.train` wraps it in an MLflow run for the pipeline; `scripts/sweep_finetune.py` runs
variants of it side by side. It imports no MLflow, so it runs wherever torch and transformers do, on CPU
or GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from restar.config import TrainConfig
from restar.labels import LABELS
from restar.model.transformer import LoadReport, key_patterns, load_pretrained
from restar.training.layer_cache import cache_key, cache_lower_layers, collate_states, top_layers_only

logger = logging.getLogger(__name__)


def load_encoder(pretrained_dir: Path):
    """Tokenizer and the pretrained encoder with a fresh 3-class head, in float32."""
    tokenizer = AutoTokenizer.from_pretrained(pretrained_dir)
    model, report = load_pretrained(
        AutoModelForSequenceClassification,
        pretrained_dir,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        dtype=torch.float32,
    )
    report_new_weights(model, report, pretrained_dir)
    return tokenizer, model


def report_new_weights(model: torch.nn.Module, report: LoadReport, pretrained_dir: Path) -> None:
    """The classification head is new by design; encoder weights the checkpoint lacked are not."""
    encoder_prefix = f"{model.base_model_prefix}."
    encoder = [key for key in report.missing if key.startswith(encoder_prefix)]
    head = [key for key in report.missing if not key.startswith(encoder_prefix)]
    logger.info(
        "new %d-class head (%s) on the encoder from %s", len(LABELS), key_patterns(head), pretrained_dir
    )
    if encoder:
        logger.warning(
            "%s lacks encoder weights, which start random: %s", pretrained_dir, key_patterns(encoder)
        )
    if report.unexpected:  # e.g. the pooler of an encoder whose classifier does not use one
        logger.info(
            "weights of %s this classifier does not use: %s", pretrained_dir, key_patterns(report.unexpected)
        )


def class_weights(labels: np.ndarray, scheme: str) -> torch.Tensor | None:
    """Loss weights against the class imbalance (~72% positive, ~9% neutral), mean 1 over classes."""
    if scheme == "none":
        return None
    counts = np.bincount(labels, minlength=len(LABELS)).astype(np.float64)
    weights = 1.0 / np.maximum(counts, 1.0)
    if scheme == "sqrt":
        weights = np.sqrt(weights)
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def weighted_loss(weights: torch.Tensor | None, label_smoothing: float = 0.0):
    def compute_loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits
        weight = None if weights is None else weights.to(logits.device)
        return torch.nn.functional.cross_entropy(
            logits, labels, weight=weight, label_smoothing=label_smoothing
        )

    return compute_loss


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    predicted = prediction.predictions.argmax(axis=1)
    labels = prediction.label_ids
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(
            f1_score(labels, predicted, labels=range(len(LABELS)), average="macro", zero_division=0)
        ),
    }


def to_dataset(frame: pd.DataFrame, tokenizer, max_length: int) -> list[dict[str, list[int] | int]]:
    """Tokenized rows with their label, as the Trainer's collator takes them."""
    encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)
    columns = list(encoded.keys())
    return [
        {**{name: encoded[name][row] for name in columns}, "label": int(label)}
        for row, label in enumerate(frame["label"])
    ]


def training_arguments(config: TrainConfig, output_dir: str, train_rows: int) -> TrainingArguments:
    steps_per_epoch = max(math.ceil(train_rows / config.batch_size), 1)
    eval_steps = max(steps_per_epoch // config.evals_per_epoch, 1)
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        # Batches of similar lengths: reviews are mostly short, so padding every batch to its
        # longest review would more than double the CPU time per epoch.
        train_sampling_strategy="group_by_length",
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=1,  # the best checkpoint is kept besides the last
        remove_unused_columns=False,
        load_best_model_at_end=True,
        metric_for_best_model=config.best_metric,
        greater_is_better=True,
        logging_steps=max(eval_steps // 4, 1),
        seed=config.seed,
        report_to="none",
        disable_tqdm=False,
        dataloader_pin_memory=torch.accelerator.is_available(),  # pinning is for copies to an accelerator
    )


def build_trainer(
    settings: TrainConfig,
    model,
    tokenizer,
    train_rows: list[dict],
    dev_rows: list[dict],
    checkpoint_dir: Path,
    collator=None,
) -> Trainer:
    """A Trainer that evaluates on dev `evals_per_epoch` times and keeps the best checkpoint."""
    labels = np.array([row["label"] for row in train_rows])
    return Trainer(
        model=model,
        args=training_arguments(settings, str(checkpoint_dir), len(train_rows)),
        train_dataset=train_rows,
        eval_dataset=dev_rows,
        processing_class=tokenizer,
        data_collator=collator or DataCollatorWithPadding(tokenizer),
        compute_loss_func=weighted_loss(
            class_weights(labels, settings.class_weights), settings.label_smoothing
        ),
        compute_metrics=compute_metrics,
    )


@dataclass
class FitResult:
    model: torch.nn.Module  # the whole model, best dev checkpoint, on the CPU in eval mode
    log_history: list[dict]
    global_step: int
    device: str
    checkpoints: Path  # kept until the caller has saved what it needs: a kill before then resumes
    seconds: float = 0.0  # spent on this run by every process, a killed one's up to its last log


class SpentSeconds(TrainerCallback):
    """Keeps `path` (in the run's checkpoint folder) at the seconds this run has taken so far, by
    every process: a resumed run starts from what its killed predecessors wrote there."""

    def __init__(self, path: Path):
        self.path = path
        self.before = float(path.read_text()) if path.is_file() else 0.0
        self.started = time.perf_counter()

    def total(self) -> float:
        return self.before + time.perf_counter() - self.started

    def on_log(self, args, state, control, **kwargs) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{self.total():.1f}\n")

    on_save = on_log


def checkpoint_dir(
    settings: TrainConfig, pretrained_dir: Path, frames: list[pd.DataFrame], work_dir: Path
) -> Path:
    """Where this exact run (recipe, encoder, rows) keeps its checkpoints, so only it resumes from them."""
    texts = [text for frame in frames for text in frame["text"]]
    digest = hashlib.sha256(settings.model_dump_json().encode())
    digest.update(cache_key(pretrained_dir, 0, settings.max_length, texts).encode())
    for frame in frames:
        digest.update(frame["label"].to_numpy().astype(np.int64).tobytes())
    return work_dir / "checkpoints" / digest.hexdigest()[:16]


def last_whole_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint a killed run finished writing, or None. The Trainer writes
    trainer_state.json last, so a checkpoint without a readable one was cut short: it is removed."""
    if not checkpoints.is_dir():
        return None
    found = sorted(
        checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda path: int(path.name.split("-")[-1])
    )
    for path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            logger.info("removing %s: the run was killed while writing it", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def fit(
    settings: TrainConfig,
    model,
    tokenizer,
    pretrained_dir: Path,
    train_frame: pd.DataFrame,
    dev_frame: pd.DataFrame,
    work_dir: Path,
    states: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
) -> FitResult:
    """Train, resuming from this run's last checkpoint under `work_dir` if a killed run left one.

    With `train.frozen_layers` set, the lower layers' outputs are cached under `work_dir` once (or come
    in as `states`, train and dev) and only the top layers and head train. The checkpoints stay until
    the caller removes `FitResult.checkpoints`; the cache stays.
    """
    checkpoints = checkpoint_dir(settings, pretrained_dir, [train_frame, dev_frame], work_dir)
    last = last_whole_checkpoint(checkpoints)
    if last:
        logger.info("resuming from %s", last)
    spent = SpentSeconds(checkpoints / "seconds_spent")
    train_rows = to_dataset(train_frame, tokenizer, settings.max_length)
    dev_rows = to_dataset(dev_frame, tokenizer, settings.max_length)
    if settings.frozen_layers:
        if states is None:
            states = tuple(
                cache_lower_layers(
                    model,
                    tokenizer,
                    pretrained_dir,
                    frame["text"].tolist(),
                    settings.frozen_layers,
                    settings.max_length,
                    work_dir / "layers",
                    f"{name} states",
                )
                for name, frame in (("train", train_frame), ("dev", dev_frame))
            )
        result = _fit_top_layers(
            settings, model, tokenizer, (train_rows, dev_rows), states, checkpoints, last, spent
        )
    else:
        trainer = build_trainer(settings, model, tokenizer, train_rows, dev_rows, checkpoints)
        trainer.add_callback(spent)
        trainer.train(resume_from_checkpoint=last)
        result = FitResult(
            trainer.model.to("cpu").eval(),
            trainer.state.log_history,
            trainer.state.global_step,
            str(trainer.args.device),
            checkpoints,
        )
    result.seconds = spent.total()
    return result


def _fit_top_layers(settings, model, tokenizer, rows, states, checkpoints, last, spent) -> FitResult:
    """Train the top layers (and the head) on cached lower-layer states."""
    for split_rows, split_states in zip(rows, states, strict=True):
        for row, state in zip(split_rows, split_states, strict=True):
            row["states"] = state  # the token ids stay: the Trainer groups batches by their length
    with top_layers_only(model, settings.frozen_layers):
        trainer = build_trainer(settings, model, tokenizer, rows[0], rows[1], checkpoints, collate_states)
        trainer.add_callback(spent)
        trainer.train(resume_from_checkpoint=last)
    return FitResult(
        trainer.model.to("cpu").eval(),
        trainer.state.log_history,
        trainer.state.global_step,
        str(trainer.args.device),
        checkpoints,
    )
