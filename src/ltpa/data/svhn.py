"""SVHN cropped digits (format 2) from the official MATLAB files.

``X`` is ``(32, 32, 3, N)`` uint8 and ``y`` ``(N, 1)`` with labels 1..10, where 10 is the digit 0;
it becomes label 0 so that label ``d`` is digit ``d``. Reading needs scipy (``scipy.io.loadmat``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .download import RESOURCES, ensure_files
from .sources import DataSource, Split, check_options, option_bool

__all__ = ["load_svhn", "read_svhn_mat", "SVHN_CLASSES"]

SVHN_CLASSES = tuple(str(d) for d in range(10))


def read_svhn_mat(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one ``*_32x32.mat`` file.

    Returns:
        ``images`` ``(N, 3, 32, 32)`` uint8 RGB and ``targets`` ``(N,)`` int64 digits 0-9.

    Raises:
        ImportError: scipy is not installed.
        ValueError: the file is truncated or malformed, or labels are outside 0-10.
    """
    try:
        from scipy.io import loadmat
    except ImportError as err:  # pragma: no cover - scipy is in the test environment
        raise ImportError("reading SVHN .mat files needs scipy: pip install scipy") from err
    path = Path(path)
    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... for a bad file
        raise ValueError(f"cannot read {path} as a MATLAB file ({type(err).__name__}: {err}); it may be "
                         f"truncated: delete it and download it again") from err
    if "X" not in mat or "y" not in mat:
        from scipy.io import whosmat

        found = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape, _ in whosmat(path)) or "none"
        raise ValueError(f"{path} has no 'X' and 'y' variables (it holds: {found}); SVHN files are the cropped "
                         f"digits of format 2 (X 32x32x3xN uint8, y Nx1): download {path.name} again from "
                         f"http://ufldl.stanford.edu/housenumbers/")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise ValueError(f"{path}: X must be uint8 (32, 32, 3, N), got {x.dtype} {x.shape}")
    if len(y) != x.shape[3]:
        raise ValueError(f"{path}: {x.shape[3]} images but {len(y)} labels")
    labels = y.astype(np.int64)
    bad = (labels < 1) | (labels > 10) | (labels != y)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} label(s) outside 1-10 (10 is the digit 0), e.g. {y[bad][0]!r} "
                         f"at index {int(np.nonzero(bad)[0][0])}")
    labels[labels == 10] = 0
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_svhn(root: str | Path, *, options: dict[str, Any] | None = None, download: bool = False) -> DataSource:
    """Load SVHN into memory: ``train_32x32.mat`` (plus ``extra_32x32.mat`` with ``extra=true``)
    as train and ``test_32x32.mat`` as test.

    Raises:
        FileNotFoundError: a file is missing (says where to get it).
        ValueError: a malformed file (names it).
    """
    options = dict(options or {})
    check_options("svhn", options, ("extra",))
    extra = option_bool("svhn", options, "extra", False)
    root = Path(root)
    parts = ["train", "test"] + (["extra"] if extra else [])
    resources = tuple(r for p in parts for r in RESOURCES[f"svhn_{p}"])
    ensure_files("svhn", root, [root / f"{p}_32x32.mat" for p in parts], resources, download=download)
    train_x, train_y = read_svhn_mat(root / "train_32x32.mat")
    if extra:
        extra_x, extra_y = read_svhn_mat(root / "extra_32x32.mat")
        train_x, train_y = torch.cat([train_x, extra_x]), torch.cat([train_y, extra_y])
    test_x, test_y = read_svhn_mat(root / "test_32x32.mat")
    return DataSource("svhn", root, SVHN_CLASSES, Split(train_y, images=train_x, name="train"),
                      Split(test_y, images=test_x, name="test"), [], {"extra": extra})
