"""Reading image files for inference: any PIL format and mode, resized without squashing."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "find_images", "load_image", "load_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of image files.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no image files.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise FileNotFoundError(
                    f"no image files ({', '.join(IMAGE_SUFFIXES)}) found in folder {str(item)!r}")
            found.extend(files)
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"image path {str(item)!r} does not exist")
    return found


def load_image(path: str | Path, size: int | Sequence[int] | None = None, *, crop: bool = True) -> np.ndarray:
    """Read one image as RGB uint8 ``(H, W, 3)``.

    Grayscale, palette, CMYK and RGBA files are converted to RGB (alpha is dropped).

    Args:
        path: the image file.
        size: ``None`` keeps the original size. An int resizes the short side to ``size`` and,
            with ``crop``, centre-crops to ``size x size``; never a squash that changes the aspect
            ratio. A ``(H, W)`` pair resizes to exactly that size (an explicit squash).
        crop: centre-crop to a square after an int resize.

    Raises:
        ValueError: the file cannot be read as an image.
    """
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"cannot read {str(path)!r} as an image ({err}); is the file complete and an image?") from err
    if size is not None:
        rgb = _resize(rgb, size, crop)
    return np.asarray(rgb, dtype=np.uint8).copy()


def _resize(img: Image.Image, size: int | Sequence[int], crop: bool) -> Image.Image:
    if not isinstance(size, int):
        height, width = size
        return img.resize((width, height), Image.Resampling.BILINEAR)
    scale = size / min(img.size)
    new_w, new_h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if crop:
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def load_images(paths: Sequence[str | Path], size: int | Sequence[int]) -> torch.Tensor:
    """Read images into one uint8 batch ``(B, 3, H, W)``; ``size`` as for :func:`load_image`
    (an int implies a centre crop so that the batch has one shape)."""
    arrays = [load_image(p, size, crop=True) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
