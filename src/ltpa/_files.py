"""Atomic file writes: readers see the old file or the new one, never half of one.

Used for every file ltpa writes that a crash must not corrupt: checkpoints, run records,
reports and figures.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Iterator

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_writer", "atomic_path", "write_temp", "fsync_dir"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, and the
    temporary file is renamed over ``path``. On any error the temporary file is removed and the
    previous ``path`` is untouched.
    """
    path = _target(path)
    tmp = write_temp(path, data)
    with _discarding(tmp, path):
        os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` about ``path`` rather than the hidden temporary file, which the user never sees
    (a full disk otherwise reads ``[Errno 28] No space left on device`` and nothing else)."""
    if err.errno is None:
        return err
    return OSError(err.errno, err.strerror, str(path))


@contextlib.contextmanager
def _discarding(tmp: Path, path: Path) -> Iterator[None]:
    """On any error inside the block remove the temporary file ``tmp`` (``path`` keeps its old
    content, or stays absent) and re-raise, an OSError naming ``path``."""
    try:
        yield
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise


def write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new hidden temporary file beside ``path``, flushed and fsynced.

    On error the temporary file is removed and the error re-raised.
    """
    tmp, fd = _create_temp(path)
    with _discarding(tmp, path):
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return tmp


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Stream a file atomically: ``with atomic_writer(path) as handle: handle.write(...)``.

    The handle writes a hidden temporary file beside ``path`` (permissions from the umask, as
    for any new file); when the block ends without an exception it is flushed, fsynced and
    renamed over ``path``. If the block raises (a failed download, a bad checksum, a full disk),
    the temporary file is removed and ``path`` keeps its old content, or stays absent.
    """
    path = _target(path)
    tmp, fd = _create_temp(path)
    with _discarding(tmp, path):
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """:func:`atomic_writer` for a library that writes by file name (``safetensors.save_file``):
    yields the path of an empty temporary file beside ``path`` to write; it replaces ``path``
    once the block ends without an exception."""
    path = _target(path)
    tmp, fd = _create_temp(path)
    mode = os.fstat(fd).st_mode & 0o777  # what the umask gives a new file
    os.close(fd)
    with _discarding(tmp, path):
        yield tmp
        # Some writers recreate the file by name with their own permissions (safetensors'
        # save_file leaves 0600): give it back the umask's.
        if os.stat(tmp).st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    fsync_dir(path.parent)


def _target(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give the path of a file to write", str(path))
    return path


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new hidden temporary file beside ``path``, opened for writing: ``(its path, fd)``."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # os.open with mode 0o666 lets the umask decide permissions, as for any other new file
    # (tempfile.mkstemp would force 0o600).
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise _naming(err, path) from err
    return tmp, fd


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`atomic_write_bytes` for a JSON document (strict JSON: no NaN/Infinity)."""
    text = json.dumps(obj, indent=2, allow_nan=False, sort_keys=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), hence optional.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
