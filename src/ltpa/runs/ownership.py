"""Who wrote a folder: the manifest, the one output-folder policy, and the writer's lock.

Nothing a user has is ever lost. Every folder ltpa writes holds a manifest,
``.ltpa-manifest.json``: the kind of folder (``"run"``, ``"attend"``, ``"localise"``...), the
files ltpa wrote there, the command and the ltpa version. Replacing an earlier result removes
only the files that manifest lists, and a folder without one is never emptied.

Analysis commands (attend, localise, sanity, robustness, probe...) use :class:`OutputFolder`::

    folder = OutputFolder(out, "localise", overwrite=overwrite).check()   # refuses; writes nothing
    result = ...                                                           # the slow part
    with folder:                                                           # prepare() ... close()
        folder.write_json("localisation.json", result)
        save_figure(figure, folder.record("parts.png"))

:meth:`OutputFolder.check` refuses, before any work, a path that is a file, a training run, a
non-empty folder without a manifest, the output of another command, or an earlier result when
``overwrite`` is false. :meth:`~OutputFolder.prepare` takes the folder's lock, checks again, and
writes the manifest; :meth:`~OutputFolder.close` removes the earlier result's files that were not
written again, only after everything new was written, then releases the lock.

Training runs (:meth:`ltpa.runs.Run.create`) hold the same lock for as long as they write, so a second
writer of the same folder fails at once with a message naming the holder (pid, host, command,
since when).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

from .._files import atomic_write_bytes, atomic_write_json
from ..errors import Option, UserError

__all__ = ["MANIFEST_FILE", "LOCK_FILE", "INTERNAL_FILES", "Manifest", "OutputFolder", "FolderBusy", "FolderLock",
           "lock_folder", "read_manifest", "write_manifest", "is_training_run",
           "check_output_file", "record_files", "json_report_recogniser", "marker_recogniser"]

MANIFEST_FILE = ".ltpa-manifest.json"
LOCK_FILE = ".ltpa.lock"
HOLDER_FILE = ".ltpa-lock.json"  # who holds the lock (pid, host, command, since); removed on release
FORMAT = "ltpa-manifest/1"
_INTERNAL = frozenset({MANIFEST_FILE, LOCK_FILE, HOLDER_FILE})
INTERNAL_FILES = _INTERNAL  # ltpa's own bookkeeping in a folder: leave these names out of listings shown to users


@dataclass(frozen=True)
class Manifest:
    """The content of ``.ltpa-manifest.json``.

    Attributes:
        kind: ``"run"`` for a training run, else the command that wrote the folder.
        files: paths relative to the folder (POSIX ``/``) of the files ltpa wrote there.
        command: the command line (or library call) that wrote them.
        version: ltpa's version.
        complete: False while a writer is at work or after it failed part way.
    """

    kind: str
    files: tuple[str, ...]
    command: str = ""
    version: str = ""
    complete: bool = True


def read_manifest(folder: str | os.PathLike) -> Manifest | None:
    """The folder's manifest, or None when it has none (or one ltpa cannot read: then the
    folder is treated as not written by ltpa, so nothing in it is ever removed)."""
    try:
        data = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("kind"), str):
        return None
    files = data.get("files")
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return None
    safe = []  # a hand-edited name that leaves the folder is ignored: nothing outside is ever removed
    for name in files:
        with contextlib.suppress(ValueError):
            safe.append(_relative_name(Path(folder), name))
    return Manifest(kind=data["kind"], files=tuple(safe), command=str(data.get("command", "")),
                    version=str(data.get("version", "")), complete=bool(data.get("complete", True)))


def write_manifest(folder: str | os.PathLike, kind: str, files: Iterable[str], *, command: str | None = None,
                   complete: bool = True) -> Path:
    """Write (atomically) the manifest of ``folder``: ``kind`` and the ``files`` ltpa wrote there."""
    from .. import __version__

    names = sorted({_relative_name(Path(folder), name) for name in files})
    return atomic_write_json(Path(folder) / MANIFEST_FILE, {
        "format": FORMAT, "kind": kind, "files": names, "command": command or _command_line(),
        "version": __version__, "complete": complete})


def record_files(folder: str | os.PathLike, names: Iterable[str], *, kind: str = "run",
                 command: str | None = None) -> Path:
    """Add ``names`` to the manifest of ``folder`` (creating one of ``kind`` if there is none).

    The caller holds the folder's lock (``Run.create`` / :meth:`OutputFolder.prepare`)."""
    manifest = read_manifest(folder)
    known = manifest.files if manifest is not None else ()
    return write_manifest(folder, manifest.kind if manifest is not None else kind, [*known, *names],
                          command=command or (manifest.command if manifest is not None else None),
                          complete=manifest.complete if manifest is not None else True)


def is_training_run(folder: str | os.PathLike) -> bool:
    """True for a training run folder: a manifest of kind ``"run"``, or (runs written before
    manifests existed) a ``config.json`` beside ``checkpoints/``, ``metrics.jsonl`` or ``train.log``."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    manifest = read_manifest(folder)
    if manifest is not None:
        return manifest.kind == "run"
    return (folder / "config.json").is_file() and any(
        (folder / name).exists() for name in ("checkpoints", "metrics.jsonl", "train.log"))


# --------------------------------------------------------------------------------------------
# The lock


class FolderBusy(UserError):
    """Another process holds the folder's lock (it is writing there now)."""


class FolderLock:
    """An exclusive, non-blocking lock on a folder (``fcntl.flock``, ``msvcrt`` on Windows).

    The operating system releases it when the holding process exits, however it exits, so a
    killed writer never leaves a folder locked (only a stale ``.ltpa.lock`` file, harmless).
    The lock file is removed on release. Who holds it (pid, host, command, since when) is
    written beside it for the message a second writer gets.

    Use :func:`lock_folder`; as a context manager it releases on exit.
    """

    def __init__(self, folder: str | os.PathLike, command: str | None = None):
        self.folder = Path(folder)
        self.command = command or _command_line()
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        """Take the lock (creating the folder if needed).

        Raises:
            FolderBusy: another process (or another writer in this one) holds it.
        """
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                _lock_fd(fd)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK):
                    raise _busy(self.folder) from None
                raise
            # The holder removes the lock file when it releases; if that happened between our open
            # and our lock, we hold a lock on a removed file: take the lock again on the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            _unlock_fd(fd)
            os.close(fd)
        self._fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        try:
            atomic_write_json(self.folder / HOLDER_FILE, holder)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Release the lock (a no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.folder / HOLDER_FILE).unlink()
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):  # removed while still held, so no one can lock it after release
            (self.folder / LOCK_FILE).unlink()
        try:
            _unlock_fd(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike, command: str | None = None) -> FolderLock:
    """Take the exclusive writer's lock of ``folder`` now and return it (release it, or use it
    as a context manager).

    Args:
        folder: the folder (created if missing).
        command: what the holder is doing, for the message a second writer gets; default this
            process's command line.

    Raises:
        FolderBusy: another writer holds it; the message names it (pid, host, command, since).
    """
    return FolderLock(folder, command).acquire()


# --------------------------------------------------------------------------------------------
# The output folder of an analysis command


class OutputFolder:
    """The output folder of one analysis command: check, then prepare, write, close.

    Args:
        path: the folder (may not exist yet).
        kind: the command (``"attend"``, ``"localise"``...); an earlier result is replaced only
            when its manifest has the same kind.
        overwrite: allow replacing an earlier result of the same kind (only the files its
            manifest lists; anything else in the folder is kept).
        what: the outputs in words, for the messages (default ``"<kind> output"``).
        command: recorded in the manifest and the lock (default this process's command line).
    """

    def __init__(self, path: str | os.PathLike, kind: str, *, overwrite: bool = False, what: str | None = None,
                 command: str | None = None):
        self.path = Path(path)
        self.kind = kind
        self.overwrite = bool(overwrite)
        self.what = what or f"{kind} output"
        self.command = command or _command_line()
        self.previous: tuple[str, ...] = ()
        self.written: list[str] = []
        self._lock: FolderLock | None = None
        self._checked = False

    def check(self) -> OutputFolder:
        """Refuse, writing nothing, a folder this command may not write (see the class docstring).

        Returns:
            self, so ``OutputFolder(...).check()`` reads as one step.

        Raises:
            UserError: ``path`` is a file, a training run, a non-empty folder without a manifest,
                the output of another command, or an earlier result while ``overwrite`` is false.
        """
        out = self.path
        if out.exists() and not out.is_dir():
            raise UserError(f"output path {str(out)!r} is a file; give a folder for the {self.what}")
        if is_training_run(out):
            raise UserError(f"output folder {str(out)!r} is a training run; ltpa never writes the {self.what} "
                            f"into a run folder, even with overwrite: give a new folder such as "
                            f"{str(out / self.kind)!r}")
        entries = [entry.name for entry in out.iterdir()] if out.is_dir() else []
        if not [name for name in entries if name not in _INTERNAL]:
            self.previous, self._checked = (), True
            return self
        manifest = read_manifest(out)
        if manifest is None:
            raise UserError(f"output folder {str(out)!r} is not empty and was not written by ltpa (it has no "
                            f"{MANIFEST_FILE}), so ltpa never empties it, with or without overwrite; give a new "
                            f"or empty folder for the {self.what}")
        if manifest.kind != self.kind:
            raise UserError(f"output folder {str(out)!r} holds the output of `ltpa {manifest.kind}`, not of "
                            f"`ltpa {self.kind}`; give a new or empty folder for the {self.what}")
        if not self.overwrite:
            raise UserError(f"output folder {str(out)!r} is not empty: it holds an earlier {self.what}; give a "
                            "new folder, or ", Option("overwrite"), " to replace it (only the files its "
                            f"{MANIFEST_FILE} lists are replaced; other files are kept)")
        self.previous, self._checked = manifest.files, True
        return self

    def prepare(self) -> Path:
        """Take the lock, check again (the folder may have changed since :meth:`check`), and
        write the manifest; nothing earlier is removed yet.

        Returns:
            The folder, created if needed.

        Raises:
            FolderBusy: another process writes this folder now.
            UserError: as :meth:`check`.
        """
        if self._lock is not None:
            return self.path
        if not self._checked:
            self.check()
        # mkdir and the lock file are harmless: check() passed, so the folder is new, empty or ltpa's.
        self._lock = lock_folder(self.path, self.command)
        try:
            self.check()
            write_manifest(self.path, self.kind, self.previous, command=self.command, complete=False)
        except BaseException:
            self._release()
            raise
        return self.path

    def record(self, name: str | os.PathLike) -> Path:
        """Register the file ``name`` (relative to the folder, or a path inside it) as written by
        this command, before writing it; returns its full path (its parent folders created)."""
        if self._lock is None:
            raise RuntimeError("call OutputFolder.prepare() (or use it in a with block) before writing")
        relative = _relative_name(self.path, name)
        if relative not in self.written:
            self.written.append(relative)
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_bytes(self, name: str | os.PathLike, data: bytes) -> Path:
        """Record ``name`` and write ``data`` to it atomically."""
        return atomic_write_bytes(self.record(name), data)

    def write_json(self, name: str | os.PathLike, obj: Any) -> Path:
        """Record ``name`` and write ``obj`` to it as JSON, atomically."""
        return atomic_write_json(self.record(name), obj)

    def close(self, *, ok: bool = True) -> None:
        """Finish: when ``ok``, remove the earlier result's files not written again and record
        exactly the new files; otherwise record both (nothing earlier is removed). Then release
        the lock."""
        if self._lock is None:
            return
        try:
            if ok:
                for name in sorted(set(self.previous) - set(self.written)):
                    _remove_owned(self.path, name)
                write_manifest(self.path, self.kind, self.written, command=self.command)
            else:
                kept = [name for name in self.previous if (self.path / name).is_file()]
                write_manifest(self.path, self.kind, [*kept, *self.written], command=self.command, complete=False)
        finally:
            self._release()

    def __enter__(self) -> OutputFolder:
        self.prepare()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


def check_output_file(path: str | os.PathLike, *, overwrite: bool, recognise: Callable[[Path], bool],
                      what: str) -> Path:
    """The policy for a command that writes one file (``eval --out``, ``report --out``).

    A new path is fine. An existing file is replaced only if ltpa wrote it (its folder's manifest
    lists it, or ``recognise(path)`` finds ltpa's own mark in it) and ``overwrite`` allows it;
    a file ltpa did not write is never replaced. Writes nothing.

    Raises:
        UserError: ``path`` is a folder, or an existing file that may not be replaced.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{str(path)!r} is a folder; give the path of a file for the {what}")
    if not path.exists():
        return path
    manifest = read_manifest(path.parent)
    listed = manifest is not None and path.name in manifest.files
    if not (listed or _safe_recognise(recognise, path)):
        raise UserError(f"{str(path)!r} exists and was not written by ltpa (it is not a {what}); ltpa never "
                        "replaces it, with or without overwrite: give another path")
    if not overwrite:
        raise UserError(f"{str(path)!r} already holds a {what}; give another path, or ", Option("overwrite"),
                        " to replace it")
    return path


def json_report_recogniser(*keys: str) -> Callable[[Path], bool]:
    """A ``recognise`` for :func:`check_output_file`: the file is a JSON object with all ``keys``
    (how ltpa recognises its own reports written before manifests existed)."""
    def recognise(path: Path) -> bool:
        if path.stat().st_size > 64 * 2**20:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(data, dict) and all(key in data for key in keys)

    return recognise


def marker_recogniser(marker: bytes, *, head: int = 4096) -> Callable[[Path], bool]:
    """A ``recognise`` for :func:`check_output_file`: ``marker`` is in the file's first ``head`` bytes
    (e.g. the generator tag of an HTML report)."""
    def recognise(path: Path) -> bool:
        with open(path, "rb") as handle:
            return marker in handle.read(head)

    return recognise


# --------------------------------------------------------------------------------------------
# Helpers


def _safe_recognise(recognise: Callable[[Path], bool], path: Path) -> bool:
    try:
        return bool(recognise(path))
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _relative_name(folder: Path, name: str | os.PathLike) -> str:
    """``name`` as a POSIX path relative to ``folder``; refuses paths that leave it."""
    path = Path(name)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(folder.resolve())
        except ValueError:
            raise ValueError(f"{str(name)!r} is not inside the output folder {str(folder)!r}") from None
    posix = PurePosixPath(path.as_posix())
    if not posix.parts or ".." in posix.parts or posix.name in _INTERNAL:
        raise ValueError(f"{str(name)!r} is not a file name inside the output folder {str(folder)!r}")
    return str(posix)


def _remove_owned(folder: Path, name: str) -> None:
    """Remove the file ``folder/name`` that the manifest lists; never a folder, never outside."""
    try:
        relative = _relative_name(folder, name)
    except ValueError:
        return  # a hand-edited manifest: never follow it outside the folder
    target = folder / relative
    if target.is_symlink() or target.is_file():
        target.unlink(missing_ok=True)


def _busy(folder: Path) -> FolderBusy:
    try:
        holder = json.loads((folder / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        holder = None
    if isinstance(holder, dict):
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, running {holder.get('command')!s}, "
               f"since {holder.get('since')}")
    else:
        who = "a process that is still starting"
    return FolderBusy(f"{str(folder)!r} is being written by another ltpa process ({who}); wait for it to finish, "
                      "or stop it, or write to another folder")


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    name = Path(argv[0]).name
    if name in ("ltpa", "__main__.py"):
        argv[0] = "ltpa"
    return " ".join(argv)


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock_fd(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock_fd(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
