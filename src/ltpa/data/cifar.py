"""CIFAR-10 and CIFAR-100 from the official "python version" files.

The files are Python 2 pickles. Pickles can run arbitrary code when loaded, so they are read
with a restricted unpickler that builds only dicts, lists, strings, bytes, numbers and plain
numpy arrays (the official files hold ``data`` as a numpy uint8 array); any other global in the
stream is refused with an error naming the file.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import Option, UserError
from .download import RESOURCES, ensure_files
from .sources import DataSource, Split, check_options

__all__ = ["load_cifar", "read_cifar_pickle", "CIFAR_FOLDERS"]

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_FILES = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
    "cifar100": (["train"], ["test"], "meta"),
}


def _reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"only numpy.ndarray may be rebuilt, got {cls!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:  # object arrays would hold arbitrary Python objects
        raise pickle.UnpicklingError(f"arrays of Python objects are not allowed (dtype {spec!r})")
    return dtype


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1").
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "latin", "iso88591", "utf8"):
        raise pickle.UnpicklingError(f"unexpected text encoding {encoding!r}")
    return codecs.encode(text, encoding)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed: a CIFAR file holds only dicts, lists, strings, "
                f"numbers and numpy arrays") from None


def read_cifar_pickle(path: str | Path) -> dict[str, Any]:
    """Load one CIFAR pickle safely; bytes keys are decoded to str.

    Raises:
        ValueError: the file is truncated, not a pickle, or holds anything but plain data.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = _RestrictedUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        truncated = isinstance(err, EOFError) or "truncated" in str(err).lower()
        kind = "truncated" if truncated else "not a valid CIFAR pickle"
        raise UserError(f"cannot read {path}: {kind} ({type(err).__name__}: {err}); delete it and extract the "
                        "official archive again (or delete it and ", Option("download"), ")") from err
    if not isinstance(data, dict):
        raise ValueError(f"cannot read {path}: expected a dict, got {type(data).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _text(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _folder(root: Path, variant: str) -> Path:
    name = CIFAR_FOLDERS[variant]
    return root if root.name == name else root / name


def load_cifar(root: str | Path, *, variant: str = "cifar100", options: dict[str, Any] | None = None,
               download: bool = False) -> DataSource:
    """Load CIFAR-10 or CIFAR-100 into memory.

    Args:
        root: the folder holding ``cifar-10-batches-py`` / ``cifar-100-python``, or that folder.
        variant: ``"cifar10"`` or ``"cifar100"``.
        options: ``labels`` = ``"fine"`` (default) or ``"coarse"`` (CIFAR-100 only).
        download: fetch and extract the official archive if files are missing.

    Returns:
        A :class:`DataSource` with ``(N, 3, 32, 32)`` uint8 images.

    Raises:
        FileNotFoundError: a file is missing (says where to get it).
        ValueError: a corrupt file, wrong shapes or labels out of range (names the file).
    """
    if variant not in CIFAR_FOLDERS:
        raise ValueError(f"variant must be one of {', '.join(CIFAR_FOLDERS)}, got {variant!r}")
    options = dict(options or {})
    check_options(variant, options, ("labels",) if variant == "cifar100" else ())
    labels = str(options.get("labels", "fine")).lower()
    if labels not in ("fine", "coarse"):
        raise ValueError(f"cifar100: option labels must be fine or coarse, got {labels!r}")
    root = Path(root)
    folder = _folder(root, variant)
    train_files, test_files, meta_file = _FILES[variant]
    required = [folder / f for f in (*train_files, *test_files, meta_file)]
    other = "cifar10" if variant == "cifar100" else "cifar100"
    other_meta = _folder(root, other) / _FILES[other][2]
    if not all(p.exists() for p in required) and other_meta.is_file():
        raise ValueError(f"{variant}: {root} holds {_NAMES[other]} ({other_meta.parent.name}/{other_meta.name}), not "
                         f"{_NAMES[variant]}; load it as {other}:{root}")
    ensure_files(variant, folder.parent, required, RESOURCES[variant], download=download)

    meta = read_cifar_pickle(folder / meta_file)
    name_key = "label_names" if variant == "cifar10" else f"{labels}_label_names"
    if name_key not in meta:
        raise ValueError(f"{folder / meta_file} has no {name_key!r} entry (keys: {', '.join(map(str, meta))})")
    class_names = tuple(_text(meta[name_key]))
    label_key = "labels" if variant == "cifar10" else f"{labels}_labels"

    def split(files: list[str], name: str) -> Split:
        images, targets = [], []
        for f in files:
            path = folder / f
            batch = read_cifar_pickle(path)
            for key in ("data", label_key):
                if key not in batch:
                    raise ValueError(f"{path} has no {key!r} entry (keys: {', '.join(map(str, batch))})")
            data = np.asarray(batch["data"])
            y = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
            if len(y) != len(data):
                raise ValueError(f"{path}: {len(data)} images but {len(y)} labels")
            bad = (y < 0) | (y >= len(class_names))
            if bad.any():
                raise ValueError(f"{path}: {int(bad.sum())} label(s) out of range [0, {len(class_names)}), e.g. "
                                 f"{int(y[bad][0])} at index {int(np.nonzero(bad)[0][0])}")
            images.append(data.reshape(-1, 3, 32, 32))  # rows are R, G, B planes of 32x32
            targets.append(y)
        return Split(targets=torch.from_numpy(np.concatenate(targets)),
                     images=torch.from_numpy(np.ascontiguousarray(np.concatenate(images))), name=name)

    return DataSource(variant, root, class_names, split(train_files, "train"), split(test_files, "test"), [],
                      {"labels": labels} if variant == "cifar100" else {})
