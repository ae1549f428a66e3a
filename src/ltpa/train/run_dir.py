"""The run's log file: ``train.log`` gets the "ltpa" logger's messages, including those of the
checks made before the folder existed. The folder's layout and rules live in
:mod:`ltpa.runs.layout` (re-exported here for code written against earlier versions).
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..runs.layout import (CHECKPOINT_DIR, CLASSES_FILE, RUN_FILES, RUN_FORMAT, TENSORBOARD_DIR, ZCA_FILE,
                           check_run_folder, is_run, remove_run_files, remove_stale_temporaries)

check_out_dir = check_run_folder  # the earlier name

__all__ = ["RUN_FORMAT", "CHECKPOINT_DIR", "TENSORBOARD_DIR", "RUN_FILES", "ZCA_FILE", "CLASSES_FILE", "is_run",
           "remove_run_files", "remove_stale_temporaries", "check_out_dir", "check_run_folder", "run_logging",
           "collect_log_records"]


class _RunLogHandler(logging.FileHandler):
    """train.log. A failed write (disk full) is raised, so the run stops with one clear
    message instead of printing a traceback for every log line that follows."""

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            raise err
        super().handleError(record)


@contextlib.contextmanager
def collect_log_records() -> Iterator[list[logging.LogRecord]]:
    """Keep the "ltpa" logger's INFO (and higher) records of a block, e.g. the checks made
    before a run folder exists, so that :func:`run_logging` can put them in ``train.log``."""
    root = logging.getLogger("ltpa")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    old_level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@contextlib.contextmanager
def run_logging(out_dir: Path, earlier: Sequence[logging.LogRecord] = ()) -> Iterator[None]:
    """Copy the "ltpa" logger's INFO messages into ``out_dir/train.log`` for the run, after
    the ``earlier`` records (from :func:`collect_log_records`)."""
    root = logging.getLogger("ltpa")
    handler = _RunLogHandler(out_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for record in earlier:
        handler.handle(record)
    old_level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
