"""A training run folder as one object: where its config, classes, preprocessing, metrics and
checkpoints are, and how its model is rebuilt.

:meth:`Run.create` makes a folder a run for a writer (the trainer): it checks the folder for the
mode (``"new"``, ``"resume"``, ``"overwrite"``), takes the folder's lock, marks it as a run in its
manifest and, only then, removes a replaced run's files; :meth:`Run.close` records the files
written and releases the lock. :meth:`Run.open` takes a run folder or any checkpoint (``RUN/checkpoints/best.json``,
``epoch_0003.safetensors``, a stem, or a checkpoint pair copied elsewhere on its own) and
returns the run; :meth:`Run.load_model` rebuilds the model with chosen weights and
:meth:`Run.prepare` turns uint8 images into its input exactly as training did.
``ltpa.inference.load_trained`` (the public API) is built on it.
"""
from __future__ import annotations

import contextlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .checkpoints import Checkpoint, CheckpointError, CheckpointStore, load_checkpoint, load_model_state
from .config import TrainConfig
from .layout import (CHECKPOINT_DIR, CLASSES_FILE, FINAL_METRICS_FILE, METRICS_FILE, MODES, check_run_folder, is_run,
                     remove_run_files, remove_stale_temporaries, run_files_on_disk)
from .ownership import FolderLock, lock_folder, record_files, write_manifest
from .preprocess import Preprocessing

__all__ = ["Run", "CHECKPOINT_DIR", "CLASSES_FILE", "METRICS_FILE", "FINAL_METRICS_FILE"]

WEIGHTS = ("best", "final", "latest")


class Run:
    """A run folder (or a lone checkpoint, then ``folder`` is None).

    Attributes:
        folder: the run folder, or None for a checkpoint outside any run.
        checkpoint: the checkpoint :meth:`open` was given, or the run's latest; None when the
            run has none yet.
        config: the config of that checkpoint (its own record), else the run's ``config.json``.
    """

    def __init__(self, folder: Path | None, config: TrainConfig, checkpoint: Path | None,
                 loaded: Checkpoint | None = None) -> None:
        self.folder, self.config, self.checkpoint = folder, config, checkpoint
        self.loaded = loaded  # the checkpoint read by open(), kept so load_model() reads it once
        self.action: str | None = None  # create(): "new", "resume", "overwrite" or "beside"
        self.stale_temporaries: list[Path] = []  # create(): left by an interrupted write, removed
        self._lock: FolderLock | None = None

    # -- writing (the trainer)
    @classmethod
    def create(cls, config: TrainConfig, out: str | os.PathLike, mode: str = "new", *,
               command: str | None = None) -> Run:
        """Make ``out`` the folder of a training run of ``config`` and hold it for writing.

        ``mode``: ``"new"`` (``out`` is new or empty), ``"resume"`` (the trainer wrote ``out``)
        or ``"overwrite"`` (a run the trainer wrote there is replaced: only its own files are
        removed, after the lock is held; a folder of other files is used when none of them has
        a name the run writes, action ``"beside"``). A folder written by an analysis command is
        never used.

        Raises:
            UserError / ValueError: the folder may not be used in this mode (nothing changed).
            FolderBusy: another process writes this run now.
        """
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {MODES}")
        out = Path(out)
        check = dict(resume=mode == "resume", overwrite=mode == "overwrite")
        check_run_folder(out, **check)  # refuse before the lock creates the folder
        lock = lock_folder(out, command)
        try:
            action = check_run_folder(out, **check)  # again, holding the lock: the folder may have changed
            record_files(out, (), kind="run", command=lock.command)  # mark it a run only now
            if action == "overwrite":
                remove_run_files(out)
            run = cls(out, config, None)
            run.action, run._lock = action, lock
            if action == "resume":
                run.stale_temporaries = remove_stale_temporaries(out)
        except BaseException:
            lock.release()
            raise
        return run

    def close(self) -> None:
        """Record the run's files in its manifest and release the lock (a no-op for a run
        that :meth:`open` returned)."""
        if self._lock is None:
            return
        try:
            with contextlib.suppress(OSError, ValueError):  # the manifest is informative here
                write_manifest(self.folder, "run", run_files_on_disk(self.folder), command=self._lock.command)
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        """The run at ``path``: a run folder, its ``checkpoints/`` folder, or a checkpoint file.

        Raises:
            CheckpointError: no run and no checkpoint there, or a checkpoint that is corrupt or
                foreign (see :func:`~ltpa.runs.checkpoints.load_checkpoint`).
            ValueError: the run's config.json or the checkpoint's config is unreadable.
        """
        path = Path(path)
        folder = _run_folder_of(path)
        if path.is_dir():
            store = CheckpointStore(folder / CHECKPOINT_DIR if folder else path)
            checkpoint = store.latest()
            if checkpoint is None and folder is None:
                raise CheckpointError(f"{path} is a directory without ltpa checkpoints: neither a run folder (no "
                                      f"config.json) nor a folder of epoch_NNNN.json checkpoints; pass a run "
                                      f"folder or a checkpoint's .json file")
            if checkpoint is None:
                return cls(folder, _read_config(folder / "config.json"), None)
        else:
            checkpoint = path
        sidecar = load_checkpoint(checkpoint)  # verifies the pair (sha256) and reads its config
        try:
            config = TrainConfig.from_dict(sidecar.config)
        except ValueError as err:
            raise ValueError(f"the config stored in {sidecar.path} does not fit this version of ltpa ({err}); "
                             f"if a newer ltpa wrote it, upgrade ltpa") from None
        return cls(folder, config, sidecar.path, sidecar)

    # -- what the folder holds
    @property
    def store(self) -> CheckpointStore:
        base = self.folder / CHECKPOINT_DIR if self.folder else (self.checkpoint.parent if self.checkpoint else None)
        if base is None:
            raise CheckpointError("this run has no checkpoints folder")
        return CheckpointStore(base)

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        """The run's ``classes.json``, else derived from the data (numbers at worst)."""
        path = self._file(CLASSES_FILE)
        if path is not None and path.is_file():
            try:
                names = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{path} is not valid JSON ({err}); restore it from a copy of the run, "
                                 f"or delete it to name classes by number") from None
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise ValueError(f"{path} must be a JSON list of class names; restore it from a copy of "
                                 f"the run, or delete it to name classes by number")
            return tuple(names)
        if self.config.data == "synthetic":
            from ..data.synthetic import SyntheticLocalisation

            return SyntheticLocalisation(1, image_size=32, num_classes=self.config.num_classes).class_names
        return tuple(str(k) for k in range(self.config.num_classes))

    @cached_property
    def preprocessing(self) -> Preprocessing:
        """The run's input preprocessing (mean/std, or its saved ZCA), on the CPU."""
        where = self.folder or (self.checkpoint.parent if self.checkpoint else None)
        return Preprocessing.from_config(self.config, where)

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 ``(B, 3, H, W)`` (or float [0, 1]) images -> the model's input, as in training.
        Resize first to the run's ``image_size`` with its ``resize_mode`` (``ltpa.inference``
        does that for image files)."""
        return self.preprocessing.to(images.device)(images)

    def metrics(self) -> list[dict[str, Any]]:
        """The ``metrics.jsonl`` records (one per epoch); a last line cut short is skipped."""
        path = self._file(METRICS_FILE)
        if path is None or not path.exists():
            return []
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if number == len(lines):
                    break
                raise ValueError(f"{path} line {number} is not valid JSON ({err}); delete that line") from None
        return records

    def final_metrics(self) -> dict[str, Any] | None:
        """``final_metrics.json``, or None before the run finished."""
        path = self._file(FINAL_METRICS_FILE)
        if path is None or not path.exists():
            return None
        return _read_json(path)

    # -- the model
    def checkpoint_path(self, weights: str | os.PathLike = "best") -> Path:
        """The sidecar of ``weights``: ``"best"`` (by validation top-1; the latest without one),
        ``"final"`` (the last epoch checkpoint), ``"latest"`` (the last one saved, possibly
        mid-epoch) or a checkpoint path.

        Raises:
            ValueError: an unknown name; CheckpointError: the run has no such checkpoint.
        """
        if not isinstance(weights, str) or weights not in WEIGHTS:
            if isinstance(weights, str) and not any(c in weights for c in "/\\.") and not Path(weights).exists():
                raise ValueError(f"weights={weights!r} is not one of {WEIGHTS} nor a checkpoint path")
            return Path(weights)
        if self.folder is None:
            if self.checkpoint is None:
                raise CheckpointError("no checkpoint to load")
            return self.checkpoint
        store = self.store
        chosen = {"best": lambda: store.best() or store.latest(), "latest": store.latest,
                  "final": lambda: _last_epoch(store)}[weights]()
        if chosen is None:
            raise CheckpointError(f"run {self.folder} has no {weights} checkpoint yet (it stopped before "
                                  f"its first checkpoint); continue the run to make one")
        return chosen

    def load_model(self, weights: str | os.PathLike | None = None) -> nn.Module:
        """The run's model with ``weights`` (see :meth:`checkpoint_path`; default the
        checkpoint the run was opened with), in eval mode on the CPU."""
        from ..models import create_model

        path = self.checkpoint if weights is None else self.checkpoint_path(weights)
        if path is None:
            path = self.checkpoint_path("latest")
        if self.loaded is not None and path == self.checkpoint:
            checkpoint, self.loaded = self.loaded, None  # its tensors now live in the model
        else:
            checkpoint = load_checkpoint(path)
        config = self.config
        if checkpoint.path != self.checkpoint:
            config = TrainConfig.from_dict(checkpoint.config)
        options = {"input_size": config.image_size, **config.model_options}
        model = create_model(config.model, num_classes=config.num_classes, **options)
        load_model_state(model, checkpoint)
        return model.eval()

    def _file(self, name: str) -> Path | None:
        return None if self.folder is None else self.folder / name


def _run_folder_of(path: Path) -> Path | None:
    """The run folder ``path`` belongs to: RUN for RUN, RUN/checkpoints or RUN/checkpoints/x.json
    (the trainer's layout, recognised by RUN/config.json), else None."""
    candidates = [path] if path.is_dir() else []
    parent = path.resolve().parent if not path.is_dir() else path.resolve()
    if parent.name == CHECKPOINT_DIR:
        candidates.append(parent.parent)
    for folder in candidates:
        if is_run(folder) or (folder / "config.json").is_file() or (folder / CHECKPOINT_DIR).is_dir():
            return Path(folder)
    return None


def _last_epoch(store: CheckpointStore) -> Path | None:
    from .checkpoints import list_checkpoints

    found = list_checkpoints(store.directory)
    return found[-1][1] if found else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it from a copy of the run") from None


def _read_config(path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(_read_json(path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}" if not str(err).startswith(str(path)) else str(err)) from None


