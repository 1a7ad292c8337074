"""The fine-tuning recipe: encoder with a 3-class head, tokenized data, loss and Hugging Face Trainer.

`restar.train` wraps it in an MLflow run for the pipeline; `scripts/sweep_finetune.py` runs variants of it
side by side. It imports no MLflow, so it runs wherever torch and transformers do, on CPU or GPU.
"""

from __future__ import annotations

import math
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
    TrainingArguments,
)

from restar.config import TrainConfig
from restar.labels import LABELS


def load_encoder(pretrained_dir: Path):
    """Tokenizer and the pretrained encoder with a fresh 3-class head, in float32."""
    tokenizer = AutoTokenizer.from_pretrained(pretrained_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        pretrained_dir,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        dtype=torch.float32,
    )
    return tokenizer, model


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
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model=config.best_metric,
        greater_is_better=True,
        logging_steps=max(eval_steps // 4, 1),
        seed=config.seed,
        report_to="none",
        disable_tqdm=False,
    )


def build_trainer(
    settings: TrainConfig,
    model,
    tokenizer,
    train_frame: pd.DataFrame,
    dev_frame: pd.DataFrame,
    checkpoint_dir: str,
) -> Trainer:
    """A Trainer that evaluates on dev `evals_per_epoch` times and keeps the best checkpoint."""
    weights = class_weights(train_frame["label"].to_numpy(), settings.class_weights)
    return Trainer(
        model=model,
        args=training_arguments(settings, checkpoint_dir, len(train_frame)),
        train_dataset=to_dataset(train_frame, tokenizer, settings.max_length),
        eval_dataset=to_dataset(dev_frame, tokenizer, settings.max_length),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_loss_func=weighted_loss(weights, settings.label_smoothing),
        compute_metrics=compute_metrics,
    )
