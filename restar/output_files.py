"""Outputs that appear whole or not at all: a killed process or a full disk never leaves a half-written file.

`atomic_file` writes into an unnamed file in the target's directory (Linux `O_TMPFILE`: a killed
process leaves nothing behind, not even a temporary file) and gives it the target's name only once it
is complete and synced; where the kernel or file system has no unnamed files, a hidden
`.<name>.<random>.tmp` file beside the target takes its place. `staging_dir` does the same for folders.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# Out of space, over quota, or over the process's file size limit (RLIMIT_FSIZE): the disk is "full".
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")
NO_UNNAMED_FILES = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}


class OutputWriteError(OSError):
    """An output file or folder could not be written (disk full, read-only, permission): nothing was left."""


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc`, or an exception it was raised from, says the disk (or quota, or size limit) is
    full. Libraries that wrap OSError (pyarrow, MLflow, a subprocess's output) may keep only the text."""
    seen: BaseException | None = exc
    for _ in range(20):  # a chain is short; the bound only guards against a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(seen) for text in DISK_FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_error(path: Path, exc: BaseException) -> OutputWriteError:
    """The one-line error for a failed write of `path`: 'disk full' first where that is the cause."""
    if is_disk_full(exc):
        error = OutputWriteError(f"cannot write {path}: disk full (no space left on device)")
        error.errno = errno.ENOSPC
        return error
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    error = OutputWriteError(f"cannot write {path}: {detail}")
    error.errno = getattr(exc, "errno", None) or errno.EIO
    return error


def _open_temp(target: Path) -> tuple[BinaryIO, Path | None]:
    """A writable temporary file in `target`'s directory: unnamed where possible, else a hidden name."""
    flag = getattr(os, "O_TMPFILE", 0)
    if flag and os.path.isdir("/proc/self/fd"):  # naming the file at the end goes through /proc
        try:
            fd = os.open(target.parent, flag | os.O_WRONLY, 0o666)
            return os.fdopen(fd, "wb"), None
        except OSError as exc:
            if exc.errno not in NO_UNNAMED_FILES:
                raise
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # as open() would create it; mkstemp's 0600 locks others out
    return os.fdopen(fd, "wb"), Path(name)


def current_umask() -> int:
    """The process's umask, read where Linux shows it rather than set and reset (which races threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(handle: BinaryIO, temp: Path | None, target: Path) -> None:
    """Sync the finished file and give it `target`'s name in one rename."""
    handle.flush()
    os.fsync(handle.fileno())
    if temp is not None:
        os.replace(temp, target)
        return
    named = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # An unnamed file gets a name only now. CPython follows the /proc link (linkat with
        # AT_SYMLINK_FOLLOW) only when given a directory descriptor.
        os.link(f"/proc/self/fd/{handle.fileno()}", named.name, dst_dir_fd=directory, follow_symlinks=True)
    finally:
        os.close(directory)
    try:
        os.replace(named, target)
    except OSError:
        named.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[BinaryIO]:
    """A binary handle whose content becomes `target` only if the block finishes; after any error
    nothing is left and an old `target` stays as it was. The caller turns its own write errors into
    `write_error(target, exc)`; creating and publishing the file raise OutputWriteError here."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = _open_temp(target)
    except OSError as exc:
        raise write_error(target, exc) from exc
    try:
        yield handle
        try:
            _publish(handle, temp, target)
        except OSError as exc:
            raise write_error(target, exc) from exc
        temp = None
    finally:
        with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails again
            handle.close()
        if temp is not None:
            temp.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """An empty hidden folder beside `target` (same file system, so renames into place are atomic),
    removed with whatever is left in it when the block ends."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise write_error(target, exc) from exc
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(source: Path, target: Path) -> None:
    """Put the finished folder `source` at `target`, replacing an old one; the old one is removed only
    after the new one is in place."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    try:
        os.replace(source, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
