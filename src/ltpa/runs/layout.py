"""The training run folder's layout and rules: its file names, what makes a folder a run, and
what a new, resumed or replacing run may do with the folder. :meth:`ltpa.runs.Run.create` and
``fit``'s checks before writing (``ltpa.train.run_plan``) ask :func:`check_run_folder`.

A run folder holds::

    .ltpa-manifest.json    who wrote the folder (kind "run") and the files it wrote
    config.json            the resolved TrainConfig in sections (normalisation mean/std filled in)
    environment.json       versions, device, precision, git commit, world size; resumes appended
    train.log              this run's log messages (logger "ltpa"), appended on resume
    metrics.jsonl          one JSON object per epoch
    curves.png             loss / accuracy / lr per epoch, redrawn every epoch
    tb/                    TensorBoard event files (config.tensorboard)
    zca.safetensors        the ZCA whitening fitted on the train split (config.zca)
    classes.json           the class names, in label order
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
import os
from pathlib import Path

from ..errors import Option, UserError
from .ownership import INTERNAL_FILES, is_training_run, read_manifest
from .preprocess import ZCA_FILE

__all__ = ["RUN_FORMAT", "CHECKPOINT_DIR", "TENSORBOARD_DIR", "RUN_FILES", "ZCA_FILE", "CLASSES_FILE",
           "METRICS_FILE", "FINAL_METRICS_FILE", "MODES", "is_run", "trainer_wrote", "run_files_on_disk", "remove_run_files", "remove_stale_temporaries",
           "check_run_folder"]

MODES = ("new", "resume", "overwrite")
CHECKPOINT_DIR = "checkpoints"
CLASSES_FILE = "classes.json"
METRICS_FILE = "metrics.jsonl"
FINAL_METRICS_FILE = "final_metrics.json"
RUN_FORMAT = "ltpa-run"
TENSORBOARD_DIR = "tb"
# The demo's own outputs count as run files too, so --overwrite replaces them.
DEMO_FILES = ("attention_overlays.png", "localisation.json", "summary.txt", "report.html")
RUN_FILES = ("config.json", "environment.json", "train.log", "metrics.jsonl", "curves.png",
             "final_metrics.json", ZCA_FILE, CLASSES_FILE, "transfer_report.json", "transfer_report.txt",
             "test_report.json", "confusion_matrix.csv", "confusion_matrix.png", *DEMO_FILES)


def is_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an ltpa training run, for protecting it: the one answer every
    reader and analysis command uses (see :func:`ltpa.runs.ownership.is_training_run`: the
    manifest, else the run's own files). Replacing or resuming a run asks more:
    :func:`trainer_wrote`."""
    return is_training_run(folder)


def trainer_wrote(folder: str | os.PathLike) -> bool:
    """Whether ltpa's trainer wrote ``folder``: its ``environment.json`` carries the run format
    marker (written right after config.json, before any training). Only then may a run there be
    resumed, or replaced with overwrite; a folder that merely looks like a run (another tool's
    config.json and train.log, or a manifest left after the user emptied the folder) may not."""
    return _environment_marks_run(Path(folder) / "environment.json")


# What the trainer writes inside its two folders; anything else there is the user's.
_TRAINER_PATTERNS = {CHECKPOINT_DIR: ("epoch_*.json", "epoch_*.safetensors", "step_*.json", "step_*.safetensors",
                                      "best.json", "best.safetensors", "state.json"),
                     TENSORBOARD_DIR: ("events.out.tfevents.*",)}


def run_files_on_disk(out_dir: Path) -> list[str]:
    """The run's own files now on disk (the trainer's names only), relative to the folder, for
    its manifest."""
    names = [name for name in RUN_FILES if (out_dir / name).is_file()]
    for folder, patterns in _TRAINER_PATTERNS.items():
        if (out_dir / folder).is_dir():
            names += sorted({f"{folder}/{p.name}" for pattern in patterns for p in (out_dir / folder).glob(pattern)
                             if p.is_file()})
    return names


def remove_run_files(out_dir: Path) -> None:
    """Delete a previous run's own files only: the names the trainer writes (never a name a
    manifest merely lists: a user's copy in checkpoints/ stays); anything else stays."""
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
        for pattern in (*_TRAINER_PATTERNS[CHECKPOINT_DIR], ".*.tmp"):
            for path in ckpt_dir.glob(pattern):
                path.unlink()
        with contextlib.suppress(OSError):
            ckpt_dir.rmdir()  # only if nothing foreign is left in it


def check_run_folder(out_dir: Path, *, resume: bool, overwrite: bool) -> str:
    """Decide what to do with ``out_dir`` without changing anything: ``"new"``, ``"resume"``,
    ``"overwrite"`` (a previous run's files are removed) or ``"beside"`` (write next to foreign
    files). Raises ValueError when the folder may not be used."""
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; choose one")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a folder; choose another path")
    _check_writable(out_dir)
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is not None and manifest.kind != "run":
        raise UserError(f"output folder {out_dir} holds the output of `ltpa {manifest.kind}`, not a training "
                        f"run; ltpa never trains into it, even with overwrite: choose a new folder for the run")
    contents = sorted(p.name for p in out_dir.iterdir() if p.name not in INTERNAL_FILES) if out_dir.exists() else []
    if resume:
        environment = out_dir / "environment.json"
        if environment.is_file() and not trainer_wrote(out_dir):
            raise UserError(
                f"cannot resume: {environment} is not the environment.json of an ltpa run (invalid "
                f"JSON, or no \"format\": \"{RUN_FORMAT}\"); restore it from a copy of the run, or "
                "start a new run (", Option("overwrite"), ")"
            )
        if not trainer_wrote(out_dir):
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
    if trainer_wrote(out_dir):
        return "overwrite"
    listed = set(manifest.files) if manifest is not None else set()  # written by an earlier ltpa run here
    clashes = [name for name in (*RUN_FILES, CHECKPOINT_DIR, TENSORBOARD_DIR)
               if (out_dir / name).exists() and name not in listed]
    if clashes:
        raise ValueError(
            f"overwrite=True, but {out_dir} is not an ltpa run and holds files a run would replace "
            f"({', '.join(clashes)}); refusing to delete them. Choose another folder."
        )
    return "beside"


def _environment_marks_run(path: Path) -> bool:
    """environment.json is readable JSON with the run format marker."""
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(env, dict) and env.get("format") == RUN_FORMAT


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
