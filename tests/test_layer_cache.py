"""Top layers trained on cached lower-layer states compute what the whole model computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, MPNetConfig

from restar.model.transformer import TransformerScorer
from restar.training import layer_cache
from restar.training.fetch_model import packaged_encoder_dir
from restar.training.finetune import load_encoder
from restar.training.layer_cache import cache_lower_layers, top_layers_only, top_logits

TEXTS = [
    "Great product, love it! Works every day.",
    "Terrible. Broke after a day and support never answered.",
    "It's ok I guess, nothing special but does the job for the price.",
    "Meh",
    "The box came late, half the snacks were stale, but the tea was lovely and I'd order again maybe.",
]


def _save(model, out: Path) -> Path:
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(packaged_encoder_dir()).save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["bert", "mpnet"])
def encoder_dir(request, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer encoder: MiniLM's first layers (BERT), or a small random MPNet (relative position bias)."""
    out = tmp_path_factory.mktemp(request.param) / "encoder"
    torch.manual_seed(0)
    if request.param == "bert":
        config = AutoConfig.from_pretrained(packaged_encoder_dir(), num_hidden_layers=3, num_labels=3)
        model = AutoModelForSequenceClassification.from_pretrained(packaged_encoder_dir(), config=config)
    else:
        config = MPNetConfig(
            vocab_size=30527,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            pad_token_id=0,
            num_labels=3,
        )
        model = AutoModelForSequenceClassification.from_config(config)
    return _save(model, out)


def test_top_layers_on_cached_states_match_the_whole_model(encoder_dir: Path, tmp_path: Path) -> None:
    tokenizer, model = load_encoder(encoder_dir)
    model.eval()
    whole = torch.tensor(TransformerScorer(model, tokenizer, max_length=64, batch_size=2).score(TEXTS).logits)
    states = cache_lower_layers(model, tokenizer, encoder_dir, TEXTS, 2, 64, tmp_path)
    with top_layers_only(model, 2):
        top = top_logits(model, states, batch_size=2)
    # the cache holds float16 states: agreement to float16 precision, not bit for bit
    assert torch.allclose(top, whole, atol=2e-3), (top - whole).abs().max()
    assert [state.shape[0] for state in states] == [
        len(ids) for ids in tokenizer(TEXTS, truncation=True, max_length=64)["input_ids"]
    ]


def test_only_the_top_layers_and_head_train_and_the_model_is_whole_again(encoder_dir: Path) -> None:
    _, model = load_encoder(encoder_dir)
    layers = model.base_model.encoder.layer
    top_params = {id(p) for p in layers[2].parameters()}
    with top_layers_only(model, 2) as top:
        assert len(top.base_model.encoder.layer) == 1
        trainable = {id(p) for p in top.parameters() if p.requires_grad}
        assert top_params <= trainable
        assert not any(id(p) in trainable for p in layers[0].parameters())
        assert not any(id(p) in trainable for p in top.base_model.embeddings.parameters())
        classifier = top.classifier.parameters()
        assert all(id(p) in trainable for p in classifier)
    assert model.base_model.encoder.layer is layers
    assert type(model.base_model.embeddings).__name__.endswith("Embeddings")


@pytest.mark.parametrize("frozen", [0, 3])
def test_frozen_layers_must_leave_layers_to_train(encoder_dir: Path, frozen: int) -> None:
    _, model = load_encoder(encoder_dir)
    with (
        pytest.raises(ValueError, match=r"frozen_layers must be between 1 and 2"),
        top_layers_only(model, frozen),
    ):
        pass


def test_cache_is_computed_once_and_a_partial_shard_is_redone(
    encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer, model = load_encoder(encoder_dir)
    monkeypatch.setattr(layer_cache, "SHARD_ROWS", 2)
    first = cache_lower_layers(model, tokenizer, encoder_dir, TEXTS, 1, 64, tmp_path)
    folder = next(tmp_path.iterdir())
    shards = sorted(folder.glob("shard-*.safetensors"))
    assert len(shards) == 3
    shards[-1].rename(shards[-1].with_suffix(".partial"))  # as a kill mid-write leaves it

    encoded = []
    real_encode = layer_cache._encode_shard
    monkeypatch.setattr(
        layer_cache, "_encode_shard", lambda *args: encoded.append(len(args[2])) or real_encode(*args)
    )
    again = cache_lower_layers(model, tokenizer, encoder_dir, TEXTS, 1, 64, tmp_path)
    assert encoded == [1]  # only the last shard (one text) was recomputed
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # other texts or another cut are another cache
    cache_lower_layers(model, tokenizer, encoder_dir, TEXTS[:2], 1, 64, tmp_path)
    cache_lower_layers(model, tokenizer, encoder_dir, TEXTS, 2, 64, tmp_path)
    assert len(list(tmp_path.iterdir())) == 3
