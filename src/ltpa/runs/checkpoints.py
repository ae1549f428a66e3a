"""Checkpoints as a pair of files: ``name.safetensors`` (every tensor) and ``name.json`` (the rest).

Loading never unpickles anything. Nested states (optimizer, scheduler, scaler, RNG) are split
into their tensors, stored in the safetensors file under ``optimizer.``/``scheduler.``/... keys,
and a JSON "skeleton" that records the structure and the plain values. The sidecar holds the
sha256 of the safetensors file and is written last, so a sidecar only ever describes a complete
tensor file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .._files import atomic_write_bytes, atomic_write_json, fsync_dir, write_temp
from ._state import library_versions, rng_state, set_rng_state

__all__ = [
    "CheckpointError",
    "unwrap_model",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "atomic_write_bytes",
    "atomic_write_json",
    "CheckpointStore",
    "COMMIT_FILE",
]

logger = logging.getLogger(__name__)

FORMAT = "ltpa-checkpoint"
VERSION = 1
_EPOCH_NAME = re.compile(r"^epoch_(\d+)$")
_STEP_NAME = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, foreign, corrupt or does not fit the model."""


# ----------------------------------------------------------------------------- flattening


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor in ``obj`` into ``tensors`` and return a JSON-safe skeleton of it."""
    if isinstance(obj, torch.Tensor):
        key = prefix if prefix not in tensors else f"{prefix}#{len(tensors)}"
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"cannot store dict key {k!r} of type {type(k).__name__}")
            items.append([k, _flatten(v, f"{prefix}.{k}", tensors)])
        return {"__dict__": items}
    if isinstance(obj, (list, tuple)):
        kind = "__list__" if isinstance(obj, list) else "__tuple__"
        return {kind: [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": _flatten(torch.from_numpy(obj.copy()), prefix, tensors),
                "dtype": str(obj.dtype)}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, np.generic):
        return _flatten(obj.item(), prefix, tensors)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def _json_safe(obj: Any) -> Any:
    """Metrics as strict JSON: non-finite floats (a NaN validation loss, say) become None."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: _unflatten(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [_unflatten(v, tensors) for v in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(_unflatten(v, tensors) for v in skeleton["__tuple__"])
        if "__ndarray__" in skeleton:
            return _unflatten(skeleton["__ndarray__"], tensors).numpy().astype(skeleton["dtype"])
        if "__float__" in skeleton:
            return float(skeleton["__float__"])
        raise CheckpointError(f"unrecognised entry in checkpoint sidecar: {sorted(skeleton)}")
    return skeleton


# ----------------------------------------------------------------------------- save


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose state dict we store: without torch.compile / DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def save_checkpoint(
    directory: str | os.PathLike,
    name: str,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    config: dict[str, Any],
    epoch: int,
    step: int,
    metrics: dict[str, Any] | None = None,
    rng: bool = True,
    position: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/name.safetensors`` and then ``directory/name.json``, both atomically.

    Args:
        directory: created if missing.
        name: file stem, e.g. ``"epoch_0003"`` or ``"best"``; an existing pair is replaced.
        model: saved unwrapped (no ``_orig_mod.``/``module.`` prefixes), keys under ``model.``.
        optimizer, scheduler, scaler: their ``state_dict()``s, if given.
        config: the resolved config as a JSON-safe dict (``TrainConfig.to_dict()``).
        epoch: completed epochs; step: optimizer steps so far.
        metrics: JSON-safe numbers to keep with the weights (val accuracy, ...).
        rng: also store torch (CPU and CUDA), numpy and Python RNG states.
        position: where inside an epoch a mid-epoch checkpoint was taken (the trainer's loader
            position and partial sums); tensors in it are stored like the other states.

    Returns:
        Path of the JSON sidecar.

    Raises:
        TypeError: a state holds something that is neither a tensor nor a JSON value.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.endswith((".json", ".safetensors")):
        raise ValueError(f"checkpoint name {name!r} must be a plain stem like 'epoch_0003'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    model_state = unwrap_model(model).state_dict()
    for key, value in model_state.items():
        tensors[f"model.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    skeletons = {}
    states = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    for part, obj in states.items():
        if obj is not None:
            skeletons[part] = _flatten(obj.state_dict(), part, tensors)
    if rng:
        skeletons["rng"] = _flatten(rng_state(), "rng", tensors)
    if position is not None:
        skeletons["position"] = _flatten(position, "position", tensors)
    payload = st_save(tensors, metadata={"format": FORMAT, "version": str(VERSION)})
    sidecar = {
        "format": FORMAT,
        "version": VERSION,
        "weights": f"{name}.safetensors",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "epoch": int(epoch),
        "step": int(step),
        "metrics": _json_safe(metrics or {}),
        "model_keys": list(model_state),  # safetensors sorts keys; this keeps the module order
        "config": config,
        "states": skeletons,
        "versions": library_versions(),
    }
    sidecar_bytes = (json.dumps(sidecar, indent=1, allow_nan=False) + "\n").encode("utf-8")
    weights_path = directory / f"{name}.safetensors"
    json_path = directory / f"{name}.json"
    # Both files are written to fsynced temporaries before anything visible changes, so a
    # failure up to here leaves every existing checkpoint as it was. Then: drop a sidecar that
    # would describe the old tensors (when replacing, e.g. ``best``), move the tensors in, and
    # move the new sidecar in last.
    staged = []
    try:
        staged.append(write_temp(weights_path, payload))
        staged.append(write_temp(json_path, sidecar_bytes))
        if json_path.exists():
            os.unlink(json_path)
        os.replace(staged[0], weights_path)
        os.replace(staged[1], json_path)
    finally:
        for tmp in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    fsync_dir(directory)
    return json_path


# ----------------------------------------------------------------------------- load


@dataclass
class Checkpoint:
    """A loaded checkpoint. Tensors are on the CPU.

    Attributes:
        path: the JSON sidecar.
        model_state: state dict for ``model.load_state_dict`` (see :func:`load_model_state`).
        config: the resolved config dict it was trained with.
        epoch: completed epochs; step: optimizer steps.
        metrics: what the trainer stored with it (``val_acc1``, ``best_val_acc1``, ...).
        versions: library versions at save time.
        position: for a mid-epoch checkpoint, where in the epoch it was taken; else None.
    """

    path: Path
    model_state: dict[str, torch.Tensor]
    config: dict[str, Any]
    epoch: int
    step: int
    metrics: dict[str, Any]
    versions: dict[str, Any] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def position(self) -> dict[str, Any] | None:
        return self.states.get("position")

    def restore_training_state(self, optimizer=None, scheduler=None, scaler=None) -> None:
        """Load the optimizer/scheduler/scaler states into the given objects.

        Raises:
            CheckpointError: an object was given but the checkpoint has no state for it, or the
                state does not fit (e.g. a different number of parameters).
        """
        for part, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            if obj is None:
                continue
            if part not in self.states:
                raise CheckpointError(f"checkpoint {self.path} holds no {part} state to restore")
            try:
                obj.load_state_dict(self.states[part])
            except (ValueError, KeyError, RuntimeError) as err:
                raise CheckpointError(
                    f"the {part} state in {self.path} does not fit this {type(obj).__name__}: "
                    f"{err}. Was the checkpoint made with a different model or config?"
                ) from err

    def restore_rng(self) -> None:
        """Set torch (CPU, and CUDA when present), numpy and Python RNGs to the saved states."""
        if "rng" not in self.states:
            raise CheckpointError(f"checkpoint {self.path} was saved without RNG states")
        set_rng_state(self.states["rng"])


def _resolve_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path) or latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise CheckpointError(
                f"{path} is a directory without ltpa checkpoints (epoch_NNNN.json or "
                f"checkpoints/epoch_NNNN.json); pass a checkpoint file instead"
            )
        path = latest
    if path.suffix in (".json", ".safetensors"):
        stem = path.with_suffix("")
    else:
        stem = path
    return stem.parent / f"{stem.name}.json", stem.parent / f"{stem.name}.safetensors"


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and verify a checkpoint given its ``.json``, its ``.safetensors``, their common stem,
    or a run directory (its latest epoch checkpoint).

    Raises:
        CheckpointError: missing files, not an ltpa checkpoint, sha256 mismatch (corrupt or
            modified file), or an unreadable tensor file.
    """
    given = Path(path)
    if given.is_file() and given.suffix not in (".json", ".safetensors"):
        raise CheckpointError(
            f"{given} is not an ltpa checkpoint: those are a NAME.json + NAME.safetensors pair "
            f"written by ltpa train (or its run folder). To use other weights, such as a PyTorch "
            f".pt/.pth state dict, train from them: ltpa train --init {given} ... (fit with "
            f"init={str(given)!r}) writes a run whose checkpoints this accepts."
        )
    json_path, weights_path = _resolve_paths(path)
    if not json_path.exists():
        if weights_path.exists():
            raise CheckpointError(
                f"{weights_path} has no sidecar {json_path.name}, so it is not a complete ltpa "
                f"checkpoint (the sidecar is written last: a missing one can also mean the save "
                f"was interrupted). If it is a plain safetensors state dict, train from it with "
                f"ltpa train --init {weights_path} ..., or load it with "
                f"safetensors.torch.load_file() and model.load_state_dict()."
            )
        raise CheckpointError(f"no checkpoint at {path}: neither {json_path} nor {weights_path} exists")
    try:
        sidecar = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{json_path} is not an ltpa checkpoint sidecar (invalid JSON: {err})") from err
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise CheckpointError(
            f"{json_path} is not an ltpa checkpoint sidecar: it lacks \"format\": \"{FORMAT}\". "
            f"ltpa checkpoints are a name.safetensors + name.json pair written by save_checkpoint()."
        )
    if sidecar.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{json_path} has checkpoint format version {sidecar.get('version')}, newer than this "
            f"ltpa understands ({VERSION}); upgrade ltpa to load it"
        )
    if not weights_path.exists():
        raise CheckpointError(
            f"{json_path} describes {weights_path.name}, which is missing; copy both files together"
        )
    payload = weights_path.read_bytes()
    actual = hashlib.sha256(payload).hexdigest()
    if actual != sidecar.get("sha256"):
        raise CheckpointError(
            f"{weights_path} is corrupt or was modified after saving: its sha256 is {actual} but "
            f"{json_path.name} records {sidecar.get('sha256')}. Use another checkpoint (e.g. an "
            f"earlier epoch) or re-run training."
        )
    try:
        tensors = st_load(payload)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {err}") from err
    stored = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    order = [k for k in sidecar.get("model_keys", []) if k in stored]
    model_state = {k: stored[k] for k in order + sorted(set(stored) - set(order))}
    try:
        states = {k: _unflatten(v, tensors) for k, v in sidecar.get("states", {}).items()}
    except KeyError as err:
        raise CheckpointError(f"{weights_path} lacks tensor {err} that {json_path.name} refers to") from err
    return Checkpoint(
        path=json_path,
        model_state=model_state,
        config=sidecar.get("config", {}),
        epoch=int(sidecar.get("epoch", 0)),
        step=int(sidecar.get("step", 0)),
        metrics=sidecar.get("metrics", {}),
        versions=sidecar.get("versions", {}),
        states=states,
    )


def load_model_state(
    model: nn.Module, state: Checkpoint | dict[str, torch.Tensor], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load weights into ``model`` (unwrapped), reporting every key that does not match.

    Returns:
        ``(missing, unexpected)`` key lists (both empty when ``strict`` succeeds).

    Raises:
        CheckpointError: with ``strict``, any missing or unexpected key (all are listed); in any
            mode, a tensor whose shape differs from the model's.
    """
    if isinstance(state, Checkpoint):
        state = state.model_state
    target = unwrap_model(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if mismatched:
        raise CheckpointError(
            "checkpoint tensors do not fit the model's shapes (different architecture, width or "
            "num_classes?): " + "; ".join(mismatched)
        )
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint does not match {type(target).__name__}: {len(missing)} missing key(s) "
            f"{missing}, {len(unexpected)} unexpected key(s) {unexpected}. Build the model with "
            f"the checkpoint's config, or pass strict=False to load the matching part."
        )
    target.load_state_dict(state, strict=False)
    return missing, unexpected


# ----------------------------------------------------------------------------- retention


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(epoch, sidecar path)`` of every complete ``epoch_NNNN`` checkpoint, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for json_path in directory.glob("epoch_*.json"):
        match = _EPOCH_NAME.match(json_path.stem)
        if match and json_path.with_suffix(".safetensors").exists():
            found.append((int(match.group(1)), json_path))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The sidecar of the latest committed checkpoint in ``directory`` (the one its commit
    record ``state.json`` names, possibly a mid-epoch ``step_NNNNNNNN``), or without a record
    the highest-epoch ``epoch_NNNN`` pair; None when there is none."""
    record = CheckpointStore(directory).record()
    if record is not None and record.get("latest"):
        path = Path(directory) / f"{record['latest']}.json"
        if path.exists():
            return path
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` epoch checkpoints (``best`` is never touched).

    Each pair loses its sidecar first, so an interrupted prune leaves no sidecar without weights.
    ``keep_last=0`` keeps all of them.

    Returns:
        The sidecar paths removed.
    """
    if keep_last <= 0:
        return []
    removed = []
    for _, json_path in list_checkpoints(directory)[:-keep_last]:
        os.unlink(json_path)
        with contextlib.suppress(OSError):
            os.unlink(json_path.with_suffix(".safetensors"))
        removed.append(json_path)
    return removed


# ----------------------------------------------------------------------------- the store

COMMIT_FILE = "state.json"
STORE_FORMAT = "ltpa-checkpoints"
_BEST = "best"


def _name_order(name: str) -> tuple[int, int]:
    """Sort key: (completed epochs, steps) as encoded in the name, for deciding what is newer."""
    match = _EPOCH_NAME.match(name)
    if match:
        return int(match.group(1)), 1 << 62
    match = _STEP_NAME.match(name)
    return (-1, int(match.group(1))) if match else (-1, -1)


class CheckpointStore:
    """A run's ``checkpoints/`` folder, with one atomic commit per save.

    Each save writes a checkpoint pair (``epoch_NNNN`` at an epoch end, ``step_NNNNNNNN`` in the
    middle of one), then atomically replaces the small commit record ``state.json`` (the pairs
    kept, the latest, and the best by validation top-1 with its epoch and value): that rename is
    the commit point. Only then are ``best.json``/``best.safetensors`` made hard links (copies
    where links fail) of the best pair, and pairs the record no longer keeps removed. A kill or a
    full disk at any point leaves either the previous commit or the new one; :meth:`repair` (run
    on resume) finishes or undoes what a save left half done, and checks "best" against
    ``metrics.jsonl``. Runs written before the record existed are repaired into one.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    # -- reading
    @property
    def record_path(self) -> Path:
        return self.directory / COMMIT_FILE

    def record(self) -> dict[str, Any] | None:
        """The commit record, or None when there is none (no save committed yet, or a run
        written before the record existed).

        Raises:
            CheckpointError: the record exists but is not one (invalid JSON or foreign).
        """
        try:
            text = self.record_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{self.record_path} is not valid JSON ({err}); it is written "
                                  f"atomically by ltpa, so something else changed it. Delete it: "
                                  f"resuming rebuilds it from the checkpoints and metrics.jsonl") from err
        if not isinstance(record, dict) or record.get("format") != STORE_FORMAT:
            raise CheckpointError(f"{self.record_path} is not an ltpa checkpoint record (no \"format\": "
                                  f"\"{STORE_FORMAT}\"); delete it to rebuild it from the checkpoints")
        return record

    def latest(self) -> Path | None:
        """Sidecar of the latest committed checkpoint, or None."""
        return latest_checkpoint(self.directory)

    def best(self) -> Path | None:
        """Sidecar of the committed best checkpoint (``best.json``), or None without one."""
        record = self.record()
        if record is not None and record.get("best") is None:
            return None
        path = self.directory / f"{_BEST}.json"
        return path if path.exists() else None

    # -- writing
    def save(self, name: str, *, best_metric: float | None = None, keep_last: int = 0,
             **checkpoint: Any) -> Path:
        """Write checkpoint ``name`` and commit it as the latest (and as the best when
        ``best_metric`` beats the committed best's value; ties keep the earlier one).

        Args:
            name: ``epoch_NNNN`` or ``step_NNNNNNNN``.
            best_metric: the validation top-1 of an epoch checkpoint (None: not a candidate).
            keep_last: epoch checkpoints kept besides the best; 0 keeps all. A mid-epoch
                checkpoint is kept only until the next commit.
            checkpoint: the arguments of :func:`save_checkpoint` after ``name``.

        Returns:
            The sidecar written.
        """
        if not (_EPOCH_NAME.match(name) or _STEP_NAME.match(name)):
            raise ValueError(f"checkpoint name {name!r} must be epoch_NNNN or step_NNNNNNNN")
        record = self.record() or self._empty_record()
        path = save_checkpoint(self.directory, name, **checkpoint)
        best = record.get("best")
        if best_metric is not None and math.isfinite(best_metric) and (
                best is None or best_metric > best["val_acc1"]):
            best = {"name": name, "epoch": int(checkpoint["epoch"]), "val_acc1": float(best_metric)}
        epochs = [n for n in record.get("kept", []) if _EPOCH_NAME.match(n) and n != name]
        if _EPOCH_NAME.match(name):
            epochs.append(name)
        epochs.sort(key=_name_order)
        kept = epochs[-keep_last:] if keep_last > 0 else epochs
        if best is not None and best["name"] not in kept:
            kept = sorted([*kept, best["name"]], key=_name_order)
        if _STEP_NAME.match(name):
            kept.append(name)
        self._commit({**record, "latest": name, "epoch": int(checkpoint["epoch"]),
                      "step": int(checkpoint["step"]), "best": best, "kept": kept})
        self._materialise_best(best)
        self._remove_unkept(kept)
        return path

    def _empty_record(self) -> dict[str, Any]:
        return {"format": STORE_FORMAT, "version": 1, "latest": None, "epoch": 0, "step": 0,
                "best": None, "kept": []}

    def _commit(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.record_path, record)  # the commit point

    def _materialise_best(self, best: dict[str, Any] | None) -> bool:
        """Make ``best.*`` the pair the record names; True when they had to change."""
        if best is None:
            return False
        source = self.directory / best["name"]
        target = self.directory / _BEST
        pairs = [(source.with_name(f"{source.name}.safetensors"), target.with_name(f"{_BEST}.safetensors")),
                 (source.with_name(f"{source.name}.json"), target.with_name(f"{_BEST}.json"))]
        if all(dst.exists() and _same_file(src, dst) for src, dst in pairs):
            return False
        # As in save_checkpoint: no sidecar may describe the other tensors, so it goes first and
        # comes back last.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pairs[1][1])
        for src, dst in pairs:
            _link_or_copy(src, dst)
        fsync_dir(self.directory)
        return True

    def _remove_unkept(self, kept: list[str]) -> list[str]:
        """Delete checkpoint pairs the record does not keep (sidecar first)."""
        removed = []
        for json_path in sorted(self.directory.glob("*.json")):
            stem = json_path.stem
            if (_EPOCH_NAME.match(stem) or _STEP_NAME.match(stem)) and stem not in kept:
                os.unlink(json_path)
                removed.append(stem)
        for weights in sorted(self.directory.glob("*.safetensors")):
            stem = weights.stem
            if (_EPOCH_NAME.match(stem) or _STEP_NAME.match(stem)) and stem not in kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(weights)
        return removed

    # -- repair
    def repair(self, metrics: list[dict[str, Any]] | None = None) -> list[str]:
        """Bring the folder back to its last commit and check "best"; returns what was done,
        one sentence each (empty when all was in order).

        - pairs the record does not keep (a save killed before its commit, or a prune killed
          half-way) are removed;
        - without a record (a run from before it existed, or killed before its first commit),
          one is built from the epoch checkpoints on disk;
        - the best is the epoch with the highest ``val_acc1`` in ``metrics`` (records of
          ``metrics.jsonl`` up to the latest checkpoint; ties keep the earlier epoch); when the
          record or ``best.*`` disagree with it and that epoch's checkpoint is still there, they
          are corrected;
        - ``best.*`` are made to match the record.

        Raises:
            CheckpointError: a record that names a checkpoint which is missing.
        """
        if not self.directory.is_dir():
            return []
        done: list[str] = []
        record = self.record()
        if record is None:
            record = self._rebuild_record()
            if record["latest"] is not None:
                done.append(f"built the commit record {COMMIT_FILE} from the checkpoints on disk "
                            f"(latest {record['latest']})")
        for name in record["kept"]:
            if not (self.directory / f"{name}.json").exists() or not (
                    self.directory / f"{name}.safetensors").exists():
                raise CheckpointError(
                    f"{self.record_path} keeps checkpoint {name}, but its files are missing from "
                    f"{self.directory}; restore them from a copy of the run, or start a new run")
        best = self._best_from_metrics(record, metrics)
        if best != record.get("best"):
            before = record.get("best")
            done.append(f"best checkpoint corrected from "
                        f"{'none' if before is None else before['name']} to {best['name']} "
                        f"(val top-1 {best['val_acc1']:g}% in metrics.jsonl)")
            record = {**record, "best": best}
        if done:
            self._commit(record)
        removed = self._remove_unkept(record["kept"])
        if removed:
            done.append(f"removed checkpoint(s) {', '.join(removed)} that no save had committed")
        if self._materialise_best(record.get("best")):
            done.append(f"best.json/best.safetensors now hold {record['best']['name']}")
        return done

    def _rebuild_record(self) -> dict[str, Any]:
        record = self._empty_record()
        found = list_checkpoints(self.directory)
        if not found:
            return record
        epoch, path = found[-1]
        with contextlib.suppress(OSError, ValueError):
            record["step"] = int(json.loads(path.read_text(encoding="utf-8")).get("step", 0))
        record.update(latest=path.stem, epoch=epoch, kept=[p.stem for _, p in found])
        best_path = self.directory / f"{_BEST}.json"
        if best_path.exists():
            with contextlib.suppress(OSError, ValueError):
                sidecar = json.loads(best_path.read_text(encoding="utf-8"))
                name = f"epoch_{int(sidecar['epoch']):04d}"
                value = sidecar.get("metrics", {}).get("val_acc1")
                if name in record["kept"] and isinstance(value, (int, float)):
                    record["best"] = {"name": name, "epoch": int(sidecar["epoch"]), "val_acc1": float(value)}
        return record

    def _best_from_metrics(self, record: dict[str, Any],
                           metrics: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        """The best the metrics say, when its checkpoint is kept; else the record's own."""
        best = record.get("best")
        if not metrics:
            return best
        candidates = [(r["val_acc1"], -int(r["epoch"])) for r in metrics
                      if isinstance(r.get("val_acc1"), (int, float)) and math.isfinite(r["val_acc1"])
                      and int(r.get("epoch", 0)) <= int(record.get("epoch", 0))]
        if not candidates:
            return best
        value, neg_epoch = max(candidates)
        name = f"epoch_{-neg_epoch:04d}"
        if name not in record["kept"]:
            if best is None or best["name"] != name:
                logger.warning("metrics.jsonl says epoch %d has the best val top-1 (%g%%), but its "
                               "checkpoint is no longer kept; best stays %s", -neg_epoch, value,
                               None if best is None else best["name"])
            return best
        return {"name": name, "epoch": -neg_epoch, "val_acc1": float(value)}


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _link_or_copy(src: Path, dst: Path) -> None:
    """Replace ``dst`` atomically by a hard link to ``src`` (a copy where links fail)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        tmp = write_temp(dst, src.read_bytes())
    try:
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
