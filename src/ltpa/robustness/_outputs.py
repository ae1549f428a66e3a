"""Output folders of the analysis commands: refuse what ltpa did not write, remove only what it did.

A command's result JSON is its marker: it records ``"format"`` and the names of every file the
command wrote. ``--overwrite`` then replaces or removes only files that are both recorded there and
among the names the command writes (nothing else in the folder), and a folder without such a
marker is never touched.
"""
from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

__all__ = ["check_output_folder", "remove_stale_outputs"]


def check_output_folder(out: str | Path, *, overwrite: bool, marker: str, kind: str, what: str,
                        outputs: Collection[str]) -> list[Path]:
    """Check that ``out`` may receive the outputs; change nothing.

    Args:
        out: the output folder (may not exist yet).
        overwrite: the user allows replacing an earlier result of the same command.
        marker: name of the command's result JSON inside ``out``.
        kind: the ``"format"`` value that JSON holds when ltpa wrote it.
        what: the outputs, in words, for the messages.
        outputs: the names of every file the command can write; a recorded name outside this set
            (a hand-edited record) is never removed.

    Returns:
        The files of the earlier result to remove before writing (empty for a new/empty folder).

    Raises:
        ValueError: ``out`` is a file, or a non-empty folder without ``overwrite``, or holding no
            marker of ``kind``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {str(out)!r} is a file; give a folder for the {what}")
    if not out.is_dir() or not any(out.iterdir()):
        return []
    if not overwrite:
        raise ValueError(f"output folder {str(out)!r} is not empty; choose a new folder or pass --overwrite to "
                         f"replace the {what} an earlier run wrote there")
    record = None
    try:
        record = json.loads((out / marker).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    if not isinstance(record, dict) or record.get("format") != kind or not isinstance(record.get("files"), list):
        raise ValueError(f"--overwrite refused: {str(out)!r} is not empty and holds no {marker} written by ltpa "
                         f"({kind}); choose a new or empty folder")
    names = [name for name in record["files"] if isinstance(name, str) and name in set(outputs)]
    return [out / name for name in names if (out / name).is_file()]


def remove_stale_outputs(previous: list[Path], written: list[Path]) -> None:
    """After the new outputs are written (each replaced atomically), delete the files of the
    earlier run (from :func:`check_output_folder`) that the new run did not write again."""
    keep = {path.resolve() for path in written}
    for path in previous:
        if path.resolve() not in keep:
            path.unlink(missing_ok=True)
