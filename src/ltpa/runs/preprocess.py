"""The one input preprocessing of a run: uint8 images -> the model's input, exactly as in training.

A run normalises its inputs either by the per-channel ``mean``/``std`` of its config (in [0, 1]
pixel units) or, with ``config.zca``, by the ZCA whitening fitted on its train split and saved
as ``RUN/zca.safetensors``. :class:`Preprocessing` is that step, used by the training loader,
:mod:`ltpa.inference`, the attention tools and the attacks alike:

- ``prep(images_uint8)``: the training path (what the loader feeds the model);
- ``prep(images_float01)`` / :meth:`Preprocessing.float`: the same for float images in
  [0, 1], differentiable (attacks optimise pixels through it), never rounded to uint8.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from .._files import atomic_write_bytes
from ..data.transforms import ZCAWhitening

__all__ = ["Preprocessing", "ZCA_FILE", "fit_whitening", "save_whitening", "load_whitening_state"]

ZCA_FILE = "zca.safetensors"


def fit_whitening(train_images: Tensor, *, epsilon: float) -> ZCAWhitening:
    """Fit ZCA on uint8 ``(N, 3, H, W)`` train images (never validation or test images)."""
    return ZCAWhitening.fit(train_images, epsilon=epsilon)


def save_whitening(zca: ZCAWhitening, path: str | os.PathLike) -> Path:
    """Write the fitted whitening's tensors to ``path`` (safetensors, atomically)."""
    state = {k: v.detach().cpu().contiguous() for k, v in zca.state_dict().items()}
    return atomic_write_bytes(path, save(state, metadata={"format": "ltpa-zca"}))


def load_whitening_state(path: str | os.PathLike) -> ZCAWhitening:
    """The whitening saved at ``path``.

    Raises:
        ValueError: ``path`` is missing (the run was trained with ZCA) or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"the run was trained with zca=true but its whitening {path} is missing; "
                         f"copy {ZCA_FILE} from the run folder next to config.json")
    try:
        return ZCAWhitening.from_state_dict(load_file(path))
    except (SafetensorError, KeyError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable ZCA whitening ({err}); copy {ZCA_FILE} again "
                         f"from the run folder") from err


class Preprocessing:
    """uint8 or float [0, 1] images ``(B, C, H, W)`` -> the model's input.

    Args:
        mean, std: per-channel normalisation in [0, 1] pixel units (used without ZCA).
        zca: a fitted :class:`~ltpa.data.transforms.ZCAWhitening`, or any function of the float
            [0, 1] batch (it replaces mean/std).
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, *,
                 zca: ZCAWhitening | Callable[[Tensor], Tensor] | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        if zca is None and (self.mean is None or self.std is None):
            raise ValueError("a run's preprocessing needs mean and std (or a ZCA whitening); this "
                             "config records neither, so it was not written by ltpa train")
        if zca is not None and hasattr(zca, "to"):
            zca = zca.to(self.device)
        self.zca = zca
        self._whiten = getattr(zca, "apply", zca)
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean and std need one value per channel each, got {self.mean} / {self.std}")
            mean_t = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
            std_t = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
            self._mean, self._std = mean_t, std_t
            self._mean255, self._inv_std255 = mean_t * 255.0, 1.0 / (std_t * 255.0)

    @classmethod
    def from_config(cls, config, run_dir: str | os.PathLike | None = None, *,
                    device: torch.device | str = "cpu") -> Preprocessing:
        """A run's preprocessing: its config's mean/std, or with ``config.zca`` the whitening in
        ``run_dir/zca.safetensors``."""
        zca = None
        if config.zca:
            if run_dir is None:
                raise ValueError("the run was trained with zca=true: give its folder, which holds "
                                 f"{ZCA_FILE}")
            zca = load_whitening_state(Path(run_dir) / ZCA_FILE)
        return cls(config.mean, config.std, zca=zca, device=device)

    @property
    def channels(self) -> int | None:
        return None if self.mean is None else len(self.mean)

    def to(self, device: torch.device | str) -> Preprocessing:
        """The same preprocessing producing tensors on ``device``."""
        device = torch.device(device)
        if device == self.device:
            return self
        return Preprocessing(self.mean, self.std, zca=self.zca, device=device)

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 images: the training path; float images: taken as [0, 1] pixels (:meth:`float`)."""
        if images.dtype == torch.uint8:
            if self._whiten is not None:
                return self._whiten(images.float() / 255.0)  # (B, C, H, W)
            self._check_channels(images)
            return (images.float() - self._mean255.to(images.device)) * self._inv_std255.to(images.device)
        if images.is_floating_point():
            return self.float(images)
        raise TypeError(f"images must be uint8 in [0, 255] or float in [0, 1], got {images.dtype}")

    def float(self, images: Tensor) -> Tensor:
        """Float pixels in [0, 1] -> model input; differentiable in ``images``."""
        if self._whiten is not None:
            return self._whiten(images)  # ZCAWhitening.apply: (x - mean) @ W
        self._check_channels(images)
        return (images - self._mean.to(images.device)) / self._std.to(images.device)

    def _check_channels(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != len(self.mean):
            raise ValueError(f"images must be (B, {len(self.mean)}, H, W) to match the run's "
                             f"{len(self.mean)}-channel mean/std, got shape {tuple(images.shape)}")
