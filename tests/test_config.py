from pathlib import Path

import pytest

from restar.config import ConfigError, FreezeConfig, RunConfig, load_freeze_config, load_run_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["smoke", "full", "ci"])
def test_shipped_run_configs_load(name: str) -> None:
    config = load_run_config(REPO_ROOT / "configs" / f"{name}.yaml")
    assert isinstance(config, RunConfig)
    assert config.name == name
    assert config.train.abstain_threshold == 0.65


def test_shipped_freeze_config_loads() -> None:
    config = load_freeze_config(REPO_ROOT / "configs" / "data_frozen.yaml")
    assert isinstance(config, FreezeConfig)
    assert config.source.categories == ["Subscription_Boxes", "Sports_and_Outdoors"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ntrain:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as error:
        load_run_config(path)
    assert str(path) in str(error.value)
    assert "train.epochz" in str(error.value)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("name: x\ntrain:\n  learning_rate: -1\n", r"train\.learning_rate"),  # a bad value
        ("name: x\ntrain:\n  class_weights: cubic\n", r"train\.class_weights"),  # a bad choice
        ("name: x\ntrain:\n  abstain_threshold: 0.3\n", "abstain_threshold"),  # can never abstain
        ("train:\n  epochs: 1\n", r"name: Field required"),  # a required key missing
    ],
    ids=["bad_value", "bad_choice", "threshold_never_abstains", "missing_required_key"],
)
def test_a_bad_run_config_names_the_key(text: str, named: str, tmp_path: Path) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=named):
        load_run_config(path)


def test_freeze_config_errors_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "source:\n  categories: []\nsplit:\n  eval_fraction: 0.9\n")
    with pytest.raises(ConfigError) as error:
        load_freeze_config(path)
    assert "source.categories" in str(error.value)
    assert "split.eval_fraction" in str(error.value)


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_run_config(write(tmp_path, "- a list\n"))
