"""The run folder's rules: what makes a folder a run, what may be written where, and the
run's log file. ``fit`` asks :func:`check_out_dir` before it touches anything.

A run folder holds::

    config.json            the resolved TrainConfig (normalisation mean/std filled in)
    environment.json       versions, device, precision, git commit, world size; resumes appended
    train.log              this run's log messages (logger "ltpa"), appended on resume
    metrics.jsonl          one JSON object per epoch
    curves.png             loss / accuracy / lr per epoch, redrawn every epoch
    tb/                    TensorBoard event files (config.tensorboard)
    zca.safetensors        the ZCA whitening fitted on the train split (config.zca)
    transfer_report.json   what config.init loaded (and .txt, the same as a table)
    checkpoints/           epoch_NNNN.{safetensors,json} (the last keep_last, and the best),
                           step_NNNNNNNN.* (a mid-epoch checkpoint), best.* (links to the best
                           pair) and state.json (the commit record: latest, best, kept)
    final_metrics.json     test metrics, evaluated once after the last epoch
    test_report.json       top-1/top-5 error and per-class accuracy of those weights
    confusion_matrix.csv   rows: true class, columns: predicted class (and .png)
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..runs.preprocess import ZCA_FILE
from ..runs.run import CHECKPOINT_DIR, CLASSES_FILE
from ..errors import Option, UserError


__all__ = ["RUN_FORMAT", "CHECKPOINT_DIR", "TENSORBOARD_DIR", "RUN_FILES", "ZCA_FILE", "is_run",
           "remove_run_files", "remove_stale_temporaries", "check_out_dir", "run_logging",
           "collect_log_records"]

RUN_FORMAT = "ltpa-run"
TENSORBOARD_DIR = "tb"
# The demo's own outputs count as run files too, so --overwrite replaces them.
DEMO_FILES = ("attention_overlays.png", "localisation.json", "summary.txt", "report.html")
RUN_FILES = ("config.json", "environment.json", "train.log", "metrics.jsonl", "curves.png",
             "final_metrics.json", ZCA_FILE, CLASSES_FILE, "transfer_report.json", "transfer_report.txt",
             "test_report.json", "confusion_matrix.csv", "confusion_matrix.png", *DEMO_FILES)


def is_run(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds an ltpa run (its environment.json says so)."""
    try:
        env = json.loads((out_dir / "environment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(env, dict) and env.get("format") == RUN_FORMAT


def remove_run_files(out_dir: Path) -> None:
    """Delete a previous run's own files only; anything else in the folder stays."""
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    tb_dir = out_dir / TENSORBOARD_DIR
    if tb_dir.is_dir():
        for path in tb_dir.glob("events.out.tfevents.*"):
            path.unlink()
        with contextlib.suppress(OSError):
            tb_dir.rmdir()
    ckpt_dir = out_dir / CHECKPOINT_DIR
    if ckpt_dir.is_dir():
        for pattern in ("epoch_*.json", "epoch_*.safetensors", "step_*.json", "step_*.safetensors",
                        "best.json", "best.safetensors", "state.json", ".*.tmp"):
            for path in ckpt_dir.glob(pattern):
                path.unlink()
        with contextlib.suppress(OSError):
            ckpt_dir.rmdir()  # only if nothing foreign is left in it


def check_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> str:
    """Decide what to do with ``out_dir`` without changing anything: ``"new"``, ``"resume"``,
    ``"overwrite"`` (a previous run's files are removed) or ``"beside"`` (write next to foreign
    files). Raises ValueError when the folder may not be used."""
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; choose one")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a folder; choose another path")
    _check_writable(out_dir)
    contents = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    if resume:
        environment = out_dir / "environment.json"
        if environment.is_file() and not is_run(out_dir):
            raise UserError(
                f"cannot resume: {environment} is not the environment.json of an ltpa run (invalid "
                f"JSON, or no \"format\": \"{RUN_FORMAT}\"); restore it from a copy of the run, or "
                "start a new run (", Option("overwrite"), ")"
            )
        if not is_run(out_dir):
            raise ValueError(
                f"cannot resume: {out_dir} does not hold an ltpa run (no environment.json of one). "
                f"Start a new run without resume=True."
            )
        # a run stopped before its first checkpoint resumes too: it starts again from epoch 1
        return "resume"
    if not contents:
        return "new"
    if not overwrite:
        what = "already holds an ltpa run" if is_run(out_dir) else "is not empty"
        raise UserError(
            f"output folder {out_dir} {what} ({', '.join(contents[:6])}"
            f"{', ...' if len(contents) > 6 else ''}). Either ", Option("resume"), " to continue that run, ",
            Option("overwrite"), " to replace it, or choose a new folder. Nothing was changed."
        )
    if is_run(out_dir):
        return "overwrite"
    clashes = [name for name in (*RUN_FILES, CHECKPOINT_DIR, TENSORBOARD_DIR) if (out_dir / name).exists()]
    if clashes:
        raise ValueError(
            f"overwrite=True, but {out_dir} is not an ltpa run and holds files a run would replace "
            f"({', '.join(clashes)}); refusing to delete them. Choose another folder."
        )
    return "beside"


def _check_writable(out_dir: Path) -> None:
    """The run folder, or the nearest folder above it that exists, must be writable."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot create the run folder {out_dir}: {existing} is a file, not a folder; "
                         f"choose another path")
    # access() also says no on a read-only file system, where root could otherwise write
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the run folder {out_dir}: {existing} is not writable (read-only "
                         f"folder or file system); choose a folder you can write to")


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


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the hidden ``.NAME.XXXX.tmp`` files that an atomic write killed half-way (kill -9,
    power loss) leaves behind in the run folder and its checkpoints. Call it only when no other
    process writes to the run. Returns the paths removed."""
    removed = []
    for folder in (out_dir, out_dir / CHECKPOINT_DIR):
        for path in folder.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
