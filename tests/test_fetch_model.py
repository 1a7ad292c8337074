import json
from importlib.metadata import version
from pathlib import Path

from restar.config import PACKAGED_ENCODER, ModelConfig
from restar.fetch_model import describe_source, fetch_model


def test_provenance_names_no_path_of_this_machine(tmp_path: Path) -> None:
    out = fetch_model(ModelConfig(source=PACKAGED_ENCODER, keep_layers=1), tmp_path / "model")
    provenance = json.loads((out / "restar_pretrained.json").read_text())
    assert provenance["resolved_from"] == f"{PACKAGED_ENCODER}=={version(PACKAGED_ENCODER)}"
    assert provenance["layers"] == 1
    assert "site-packages" not in (out / "restar_pretrained.json").read_text()


def test_hub_sources_are_described_by_snapshot_commit(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "snapshots" / "0123abcd"
    assert describe_source("distilbert-base-uncased", snapshot) == "distilbert-base-uncased@0123abcd"
    assert describe_source(str(tmp_path), tmp_path) == str(tmp_path)
