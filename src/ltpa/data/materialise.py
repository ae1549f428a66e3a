"""Decode a split once into one uint8 tensor, with its boxes and keypoints moved along.

File-based splits (CUB, image folders) are decoded by a ``torch.utils.data.DataLoader`` with
worker processes; in-memory splits of another size go through the same code, so every split
comes out the same way. The result can be cached as a ``.safetensors`` file keyed by the files'
paths, sizes and modification times and by the output geometry.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .sources import Split
from .transforms import (CropParams, box_crop_params, crop_and_resize, resize_short_side_crop_params,
                         squash_params, transform_boxes, transform_points)

__all__ = ["materialise", "MODES", "read_image_size"]

logger = logging.getLogger(__name__)

MODES = ("resize_crop", "bbox_crop", "squash")
_CACHE_VERSION = "1"


def read_image_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` of an image file from its header, or None if PIL cannot identify it."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError):
        return None


def _params(height: int, width: int, size: int, mode: str, box: Tensor | None, margin: float) -> CropParams:
    if mode == "resize_crop":
        return resize_short_side_crop_params(height, width, size)
    if mode == "squash":
        return squash_params(height, width, size)
    return box_crop_params(height, width, box, size, margin=margin)


class _Decode(Dataset):
    def __init__(self, split: Split, size: int, mode: str, margin: float) -> None:
        self.split, self.size, self.mode, self.margin = split, size, mode, margin

    def __len__(self) -> int:
        return len(self.split)

    def _image(self, index: int) -> Image.Image:
        if self.split.images is not None:
            return Image.fromarray(self.split.images[index].permute(1, 2, 0).numpy())
        path = self.split.files[index]
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")  # grayscale, palette and CMYK files become RGB
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"cannot decode {path} ({err}); is the file complete? Delete or replace it") from err

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        img = self._image(index)
        box = self.split.boxes[index] if self.split.boxes is not None else None
        params = _params(img.height, img.width, self.size, self.mode, box, self.margin)
        out = torch.from_numpy(np.asarray(crop_and_resize(img, params), dtype=np.uint8).copy()).permute(2, 0, 1)
        new_box = transform_boxes(box, params) if box is not None else torch.zeros(0)
        parts = self.split.parts[index] if self.split.parts is not None else None
        new_parts = transform_points(parts, params) if parts is not None else torch.zeros(0)
        return out.contiguous(), new_box, new_parts


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


def materialise(split: Split, size: int = 80, mode: str = "resize_crop", *, bbox_margin: float = 0.1,
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
        ValueError: unknown mode, ``bbox_crop`` without boxes, or a file that cannot be decoded
            (the message names it).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (e.g. 80, 224, 448), got {size!r}")
    if mode == "bbox_crop" and split.boxes is None:
        raise ValueError(f"mode='bbox_crop' needs bounding boxes, but split {split.name!r} has none; use "
                         f"mode='resize_crop'")
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

    loader = DataLoader(_Decode(split, size, mode, bbox_margin), batch_size=batch_size, shuffle=False,
                        num_workers=workers, persistent_workers=False)
    chunks = list(loader)
    if not chunks:
        images = torch.zeros(0, 3, size, size, dtype=torch.uint8)
        boxes = torch.zeros(0, 4) if split.boxes is not None else None
        parts = torch.zeros(0, *split.parts.shape[1:]) if split.parts is not None else None
    else:
        images = torch.cat([c[0] for c in chunks])
        boxes = torch.cat([c[1] for c in chunks]) if split.boxes is not None else None
        parts = torch.cat([c[2] for c in chunks]) if split.parts is not None else None

    if cache_path is not None:
        from safetensors.torch import save_file

        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"images": images.contiguous()}
        tensors.update({k: v.contiguous() for k, v in (("boxes", boxes), ("parts", parts)) if v is not None})
        fd, tmp = tempfile.mkstemp(prefix=".materialise-", suffix=".part", dir=cache_path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, cache_path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return images, boxes, parts
