"""Moved to :mod:`ltpa.runs.preprocess` (the one input preprocessing of a run, ZCA included);
this name stays for old imports and warns."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ..runs.preprocess import fit_whitening, load_whitening_state, save_whitening

__all__ = ["fit_whitening", "save_whitening", "load_whitening"]

warnings.warn("ltpa.train.whitening moved to ltpa.runs.preprocess; import it from there",
              DeprecationWarning, stacklevel=2)


def load_whitening(path: str | os.PathLike, *, device: torch.device) -> Callable[[Tensor], Tensor]:
    """The batch function of a saved whitening (see :class:`ltpa.runs.preprocess.Preprocessing`)."""
    return load_whitening_state(path).to(device).apply
