"""Decode a split once into one uint8 tensor, with its boxes and keypoints moved along.

File-based splits (CUB, image folders) are decoded by a ``torch.utils.data.DataLoader`` with
worker processes; in-memory splits of another size go through the same code, so every split
comes out the same way. Files are read by :func:`ltpa.data.images.open_image` (every mode to
8-bit RGB, the pixel limit). Every file is tried: the files that cannot be decoded are reported
together in one error, never skipped. The result can be cached as a ``.safetensors`` file keyed
by the files' paths, sizes and modification times and by the output geometry.

:func:`prepare_split` is what a training run does to a split, so evaluation can do the same.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._files import atomic_path
from .images import ImageReadError, describe_failures, open_image, read_image_size
from .sources import Split
from .transforms import crop_and_resize, crop_params, transform_boxes, transform_points

__all__ = ["materialise", "materialise_split", "prepare_split", "MODES", "BBOX_MARGIN", "read_image_size"]

logger = logging.getLogger(__name__)

MODES = ("resize_crop", "bbox_crop", "squash")
BBOX_MARGIN = 0.1  # bbox_crop's default margin: a tenth of the box's side added on each side
_CACHE_VERSION = "2"  # 2: 16-bit, float and transparent images are read differently


class _Decode(Dataset):
    """One item per image: ``(image, box, parts, mask, error)``; a file that cannot be decoded
    gives a black image and its error (message, path, reason), so that every bad file is found
    in one pass."""

    def __init__(self, split: Split, size: int, mode: str, margin: float, masks: bool = False) -> None:
        self.split, self.size, self.mode, self.margin = split, size, mode, margin
        self.masks = masks and split.masks is not None

    def __len__(self) -> int:
        return len(self.split)

    def _image(self, index: int) -> Image.Image:
        if self.split.images is not None:
            return Image.fromarray(self.split.images[index].permute(1, 2, 0).numpy())
        return open_image(self.split.files[index])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, str, str]]:
        box = self.split.boxes[index] if self.split.boxes is not None else None
        parts = self.split.parts[index] if self.split.parts is not None else None
        new_box = torch.zeros(4) if box is not None else torch.zeros(0)
        new_parts = torch.zeros_like(parts) if parts is not None else torch.zeros(0)
        new_mask = torch.zeros(self.size, self.size, dtype=torch.bool) if self.masks else torch.zeros(0)
        try:
            img = self._image(index)
        except ImageReadError as err:  # strings, so that worker processes can send it back
            error = (str(err), str(err.path), str(err.reason))
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), new_box, new_parts, new_mask, error
        params = crop_params(img.height, img.width, self.size, self.mode, box, margin=self.margin)
        out = torch.from_numpy(np.asarray(crop_and_resize(img, params), dtype=np.uint8).copy()).permute(2, 0, 1)
        if box is not None:
            new_box = transform_boxes(box, params)
        if parts is not None:
            new_parts = transform_points(parts, params)
        if self.masks:
            mask = Image.fromarray(self.split.masks[index].numpy().astype(np.uint8) * 255)
            new_mask = torch.from_numpy(np.asarray(crop_and_resize(mask, params, resample=Image.Resampling.NEAREST))
                                        >= 128)
        return out.contiguous(), new_box, new_parts, new_mask, ("", "", "")


def _cache_key(split: Split, size: int, mode: str, margin: float) -> str:
    digest = hashlib.sha256(f"ltpa.materialise:{_CACHE_VERSION}:{size}:{mode}:{margin!r}\n".encode())
    for path in split.files:
        stat = os.stat(path)
        digest.update(f"{Path(path).resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    for extra in (split.boxes, split.parts):
        if extra is not None:  # annotations change the result too (bbox_crop, transformed points)
            digest.update(extra.numpy().tobytes())
    return digest.hexdigest()[:32]


def _read_cache(path: Path, shape: tuple[int, ...]) -> dict | None:
    """The cached tensors, or None (with a warning; the split is decoded again) if the file is
    unreadable or does not hold ``shape`` images."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        stored = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        logger.warning("materialise: ignoring unreadable cache %s (%s); decoding again", path, err)
        return None
    if "images" not in stored or tuple(stored["images"].shape) != shape:
        found = tuple(stored["images"].shape) if "images" in stored else None
        logger.warning("materialise: cache %s holds images %s, expected %s; decoding again", path, found, shape)
        return None
    return stored


def materialise(split: Split, size: int = 80, mode: str = "resize_crop", *, bbox_margin: float = BBOX_MARGIN,
                workers: int = 2, cache_dir: str | Path | None = None,
                batch_size: int = 32) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Decode every image of ``split`` once into ``(N, 3, size, size)`` uint8.

    Args:
        split: a file-based or in-memory split.
        size: output side in pixels (80 for CUB as in the paper; 224, 448...).
        mode: ``"resize_crop"`` resizes the short side to ``size`` and centre-crops (aspect ratio
            kept); ``"bbox_crop"`` crops a square around the annotated box grown by
            ``bbox_margin`` of its side (needs boxes); ``"squash"`` resizes the whole image to
            ``size x size``, changing the aspect ratio.
        bbox_margin: for ``bbox_crop``, the fraction of the box's width/height added per side.
        workers: DataLoader worker processes (0 decodes in this process).
        cache_dir: if set, reuse / store the result there (file-based splits only).
        batch_size: images per worker batch.

    Returns:
        ``(images, boxes, parts)``: uint8 ``(N, 3, size, size)``; float32 ``(N, 4)`` boxes clipped
        to the output, or None; float32 ``(N, P, 2)`` keypoints (NaN where not visible; they may
        fall outside the output after a crop), or None. An in-memory split that already has
        ``size x size`` images is returned as is (same tensors) for ``resize_crop``/``squash``.

    Raises:
        ValueError: unknown mode or ``bbox_crop`` without boxes.
        ImageReadError: files that cannot be decoded (a ValueError that counts them all and names
            the first few).
    """
    _check(split, size, mode)
    if split.images is not None and mode != "bbox_crop" and tuple(split.images.shape[2:]) == (size, size):
        return split.images, split.boxes, split.parts

    cache_path = None
    if cache_dir is not None and split.files is not None:
        cache_path = Path(cache_dir) / f"materialise-{_cache_key(split, size, mode, bbox_margin)}.safetensors"
        if cache_path.exists():
            stored = _read_cache(cache_path, (len(split), 3, size, size))
            if stored is not None:
                logger.info("materialise: loaded %d images from cache %s", len(split), cache_path)
                return stored["images"], stored.get("boxes"), stored.get("parts")

    images, boxes, parts, _ = _decode(split, size, mode, bbox_margin, workers, batch_size, masks=False)
    if cache_path is not None:
        from safetensors.torch import save_file

        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"images": images.contiguous()}
        tensors.update({k: v.contiguous() for k, v in (("boxes", boxes), ("parts", parts)) if v is not None})
        with atomic_path(cache_path) as tmp:  # the one atomic writer (umask permissions, fsynced)
            save_file(tensors, str(tmp))
    return images, boxes, parts


def materialise_split(split: Split, size: int, mode: str = "resize_crop", *, bbox_margin: float = BBOX_MARGIN,
                      workers: int = 2, batch_size: int = 32) -> Split:
    """:func:`materialise` that returns a new in-memory :class:`Split` with all of its ground
    truth moved with the images: boxes (clipped), keypoints, and masks (nearest neighbour,
    ``(N, size, size)``); targets, part visibility and names are kept.

    Unlike :func:`materialise`, every image goes through the resize, even in-memory images
    that already have ``size x size`` pixels (``resize_crop``/``squash`` leave those unchanged).

    Raises:
        As :func:`materialise`.
    """
    _check(split, size, mode)
    images, boxes, parts, masks = _decode(split, size, mode, bbox_margin, workers, batch_size, masks=True)
    return replace(split, images=images, files=None, sizes=None, boxes=boxes, parts=parts, masks=masks)


def prepare_split(split: Split, size: int, mode: str = "resize_crop", *, bbox_margin: float = BBOX_MARGIN,
                  workers: int = 2) -> Split:
    """The split as a training run at ``size`` with ``resize_mode=mode`` sees it, in memory.

    A run uses in-memory images that already have ``size x size`` pixels as they are (CIFAR or
    synthetic at their own size: the resize mode is for files and for in-memory images of
    another size); everything else goes through :func:`materialise_split`. Evaluation calls this
    so that it scores exactly the pixels the model was trained on, with the annotations moved
    along.
    """
    if split.images is not None and tuple(split.images.shape[2:]) == (size, size):
        return split
    return materialise_split(split, size, mode, bbox_margin=bbox_margin, workers=workers)


def _check(split: Split, size: int, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (e.g. 80, 224, 448), got {size!r}")
    if mode == "bbox_crop" and split.boxes is None:
        raise ValueError(f"mode='bbox_crop' needs bounding boxes, but split {split.name!r} has none; use "
                         f"mode='resize_crop'")


def _decode(split: Split, size: int, mode: str, margin: float, workers: int, batch_size: int, *,
            masks: bool) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Every image through :class:`_Decode`; all files that fail are reported in one error."""
    dataset = _Decode(split, size, mode, margin, masks=masks)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        persistent_workers=False)
    chunks = list(loader)
    errors = [ImageReadError(message, path, reason) for chunk in chunks
              for message, path, reason in zip(*chunk[4]) if message]
    if errors:
        raise describe_failures(errors, len(split), f"images of the {split.name} split" if split.name else "images",
                                verb="decode")
    if not chunks:
        images = torch.zeros(0, 3, size, size, dtype=torch.uint8)
        boxes = torch.zeros(0, 4) if split.boxes is not None else None
        parts = torch.zeros(0, *split.parts.shape[1:]) if split.parts is not None else None
        out_masks = torch.zeros(0, size, size, dtype=torch.bool) if dataset.masks else None
        return images, boxes, parts, out_masks
    images = torch.cat([c[0] for c in chunks])
    boxes = torch.cat([c[1] for c in chunks]) if split.boxes is not None else None
    parts = torch.cat([c[2] for c in chunks]) if split.parts is not None else None
    out_masks = torch.cat([c[3] for c in chunks]) if dataset.masks else None
    return images, boxes, parts, out_masks
