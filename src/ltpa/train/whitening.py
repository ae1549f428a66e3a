"""ZCA whitening for runs (``config.zca``): fitted on the train split only, saved with the run
as ``zca.safetensors``, and the same function applied to train, validation and test batches
and after a resume. The maths lives in :class:`ltpa.data.transforms.ZCAWhitening`; this module
only fits, stores and reloads it for the trainer.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from ..data.transforms import ZCAWhitening
from .._files import atomic_write_bytes

__all__ = ["fit_whitening", "save_whitening", "load_whitening"]


def fit_whitening(train_images: Tensor, *, epsilon: float):
    """Fit ZCA on uint8 ``(N, 3, H, W)`` train images (never validation or test images)."""
    return ZCAWhitening.fit(train_images, epsilon=epsilon)


def save_whitening(zca, path: str | os.PathLike) -> Path:
    """Write the fitted whitening's tensors to ``path`` (safetensors, atomically)."""
    state = {k: v.detach().cpu().contiguous() for k, v in zca.state_dict().items()}
    return atomic_write_bytes(path, save(state, metadata={"format": "ltpa-zca"}))


def load_whitening(path: str | os.PathLike, *, device: torch.device) -> Callable[[Tensor], Tensor]:
    """The batch function of a saved whitening: float ``(B, 3, H, W)`` in [0, 1] on ``device``
    in, whitened ``(B, 3, H, W)`` out.

    Raises:
        ValueError: the run was trained with ZCA but ``path`` is missing.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"the run was trained with zca=true but its whitening {path} is missing; "
                         f"copy zca.safetensors from the run folder next to config.json")
    zca = ZCAWhitening.from_state_dict(load_file(path))
    return as_batch_function(zca, device)


def as_batch_function(zca, device: torch.device) -> Callable[[Tensor], Tensor]:
    """Wrap a fitted ``ZCAWhitening`` as the ``whiten`` argument of ``BatchLoader``."""
    if hasattr(zca, "to"):
        zca = zca.to(device)
    return zca.apply
