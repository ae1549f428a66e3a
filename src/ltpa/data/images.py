"""Reading image files as 8-bit RGB: any PIL format and mode, with a pixel limit.

Every image ltpa reads (training folders, CUB, ``ltpa attend``, mask folders) goes through
:func:`open_image`, so training and inference see the same pixels. What each PIL mode becomes:

* ``RGB``: as is. ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's
  ``convert("RGB")`` (grey is copied to the three channels; CMYK is converted without colour
  management, ``R = (255 - C)(255 - K) / 255``).
* 16-bit grey (``I;16``, ``I;16B``, ...): ``round(v * 255 / 65535)``, so 0..65535 spans
  0..255. (PIL's own conversion clips at 255, which turned 16-bit files almost white.) 16-bit
  RGB PNGs are reduced to 8 bit by PIL itself (the high byte).
* 32-bit integer ``I``: read as 16-bit, 0..65535 (PIL reads 16-bit data from some formats into
  ``I``); a file with values outside that range is refused, since no scale is then certain.
* 32-bit float ``F``: read as 0..1 -> 0..255; values outside [0, 1] or not finite are refused.
* Transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, a palette or RGB file
  with a transparent colour): composited on white, ``v * a + 255 * (1 - a)``. A transparent
  pixel has no colour of its own: dropping alpha would show whatever the file stores there
  (often black, or a palette entry), while white is what image viewers show, so the model and
  the overlays see the picture the user sees.

Images over :data:`MAX_IMAGE_PIXELS` pixels are refused from their header, before any pixel
is decoded (a tiny PNG can declare 14000 x 14000 pixels: a "decompression bomb"). Set the
environment variable ``LTPA_MAX_IMAGE_PIXELS`` (a number of pixels; 0 = no limit) to change it.
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .transforms import CropParams, crop_and_resize, resize_short_side_crop_params

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "ImageReadError", "ImageTooLargeError", "describe_failures",
           "max_image_pixels", "open_image", "read_image_size", "read_image_sizes", "to_rgb", "find_images",
           "load_image", "load_images"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

#: Largest image ltpa decodes, in pixels (100 megapixels, e.g. 10000 x 10000): far above the
#: photographs of CUB (at most 500 px a side) and ImageNet (camera-sized at most). It replaces
#: PIL's own guard, which warns at 89 MP and refuses at 179 MP without naming the file.
#: Override with the environment variable ``LTPA_MAX_IMAGE_PIXELS`` (0 = no limit).
MAX_IMAGE_PIXELS = 100_000_000
_LIMIT_ENV = "LTPA_MAX_IMAGE_PIXELS"
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_SHOWN = 3  # files named in a message about several


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file and what to do.

    Attributes:
        path: the file, as given.
        reason: what was wrong, in a few words (for messages that list several files).
    """

    def __init__(self, message: str, path: str | Path | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path, self.reason = path, reason or message


class ImageTooLargeError(ImageReadError):
    """An image over the pixel limit (:data:`MAX_IMAGE_PIXELS`), refused before decoding."""


def max_image_pixels() -> int | None:
    """The pixel limit in force: ``LTPA_MAX_IMAGE_PIXELS`` if set (0 = None, no limit), else
    :data:`MAX_IMAGE_PIXELS`.

    Raises:
        ValueError: the environment variable is not a whole number >= 0.
    """
    text = os.environ.get(_LIMIT_ENV)
    if text is None or not text.strip():
        return MAX_IMAGE_PIXELS
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{_LIMIT_ENV}={text!r} is not a number of pixels; set it to a whole number such as "
                         f"200000000, or 0 for no limit")
    return value or None


@contextmanager
def _header_only_pil() -> Iterator[None]:
    """Let PIL read any header; ltpa's own limit is checked on the size right after.

    PIL refuses huge images already in ``Image.open`` without telling their size; its limit is
    lifted for the header read only (no pixel is decoded there) and restored at once.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _unreadable(path: str | Path, err: BaseException) -> ImageReadError:
    reason = str(err).replace("\n", " ") or type(err).__name__
    return ImageReadError(f"cannot read {str(path)!r} as an image ({reason}); is the file complete and an image? "
                          f"Replace it with a good copy or remove it", path, reason)


def _check_pixels(path: str | Path, width: int, height: int, limit: int | None) -> None:
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(
            f"{str(path)!r} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), over ltpa's limit of "
            f"{limit:,} pixels that guards against decompression bombs; downscale the file, or raise the limit "
            f"with the environment variable {_LIMIT_ENV}=<pixels> (0 = no limit) if you trust it", path,
            f"{width}x{height} pixels, over the limit of {limit:,} ({_LIMIT_ENV})")


def read_image_size(path: str | Path) -> tuple[int, int] | None:
    """``(H, W)`` of an image file from its header (no pixel is decoded), or None if PIL cannot
    identify the file.

    Raises:
        ImageTooLargeError: the image is over the pixel limit (:func:`max_image_pixels`).
    """
    limit = max_image_pixels()
    try:
        with _header_only_pil(), Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    _check_pixels(path, width, height, limit)
    return height, width


def read_image_sizes(paths: Sequence[str | Path]) -> list[tuple[int, int] | None]:
    """:func:`read_image_size` of every file, with every file over the limit in one error."""
    sizes: list[tuple[int, int] | None] = []
    too_large: list[ImageReadError] = []
    for path in paths:
        try:
            sizes.append(read_image_size(path))
        except ImageTooLargeError as err:
            too_large.append(err)
            sizes.append(None)
    if too_large:
        raise describe_failures(too_large, len(paths), "images (over the pixel limit)")
    return sizes


def describe_failures(errors: Sequence[ImageReadError], total: int, what: str = "images", *,
                      verb: str = "read") -> ImageReadError:
    """One error for every file that failed: a single failure keeps its own message; several are
    counted, the first few named with their reasons, and one fix given."""
    if len(errors) == 1:
        return errors[0]
    listed = ", ".join(f"{e.path} ({e.reason})" for e in errors[:_SHOWN]) + (", ..." if len(errors) > _SHOWN else "")
    return ImageReadError(f"cannot {verb} {len(errors)} of {total} {what}: {listed}; replace these files with good "
                          f"copies (e.g. extract the data set again) or remove them")


def open_image(path: str | Path) -> Image.Image:
    """Read one image file as an 8-bit ``RGB`` PIL image (see the module docstring per mode).

    The size is checked against the pixel limit before any pixel is decoded.

    Raises:
        ImageTooLargeError: over the pixel limit.
        ImageReadError: not an image, truncated, or values outside the range of its mode.
    """
    limit = max_image_pixels()
    try:
        with _header_only_pil():
            img = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise _unreadable(path, err) from err
    with img:
        _check_pixels(path, img.width, img.height, limit)
        try:
            with warnings.catch_warnings():
                # ltpa's limit was checked above; PIL's own warning would only repeat it.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.load()
        except Image.DecompressionBombError as err:  # a frame larger than the header said
            raise ImageTooLargeError(f"{str(path)!r}: {err}; downscale the file", path, str(err)) from err
        except (OSError, ValueError, SyntaxError, EOFError) as err:  # header fine, pixel data broken
            reason = str(err).replace("\n", " ") or type(err).__name__
            raise ImageReadError(f"cannot decode {str(path)!r} ({reason}); is the file complete? Replace it with a "
                                 f"good copy or remove it", path, reason) from err
        return to_rgb(img, path)


def to_rgb(img: Image.Image, path: str | Path = "image") -> Image.Image:
    """An 8-bit ``RGB`` copy of a loaded PIL image; ``path`` names it in errors.

    Raises:
        ImageReadError: an ``I`` image outside 0..65535 or an ``F`` image outside [0, 1].
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode, path)).convert("RGB")
    if mode in ("RGBa", "La"):  # premultiplied: un-premultiply first
        img, mode = img.convert("RGBA" if mode == "RGBa" else "LA"), "RGBA" if mode == "RGBa" else "LA"
    if mode == "PA" or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA"):
        pixels = np.asarray(img).astype(np.uint32)
        colour, alpha = pixels[..., :-1], pixels[..., -1:]
        blended = (colour * alpha + 255 * (255 - alpha) + 127) // 255  # on white, rounded
        return Image.fromarray(blended.astype(np.uint8).squeeze(-1) if mode == "LA" else blended.astype(np.uint8)
                               ).convert("RGB")
    return img.convert("RGB")  # a copy even for RGB: the caller may close the file


def _to_uint8(values: np.ndarray, mode: str, path: str | Path) -> np.ndarray:
    if mode in _SIXTEEN_BIT:
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "I":
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ImageReadError(
                f"{str(path)!r} is a 32-bit integer image with values {low}..{high}; ltpa reads such images as "
                f"16-bit (0..65535) and cannot guess another scale: save it as an 8- or 16-bit PNG", path,
                f"32-bit integer values {low}..{high}, outside 0..65535")
        return ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    finite = np.isfinite(values).all()
    low, high = (float(values.min()), float(values.max())) if finite else (float("nan"), float("nan"))
    if not finite or low < 0.0 or high > 1.0:
        raise ImageReadError(
            f"{str(path)!r} is a floating-point image with values {low:g}..{high:g}; ltpa reads float images as "
            f"0..1 and cannot guess another scale: rescale it to [0, 1] or save it as an 8-bit PNG", path,
            f"float values {low:g}..{high:g}, outside 0..1")
    return np.floor(values.astype(np.float64) * 255 + 0.5).astype(np.uint8)


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of image files.

    Files in a folder whose suffix is not one of ``IMAGE_SUFFIXES`` are skipped, with one
    warning that counts them; a file named explicitly is always kept (and fails later if it is
    not an image).

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no image files.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            every = sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith("."))
            files = [p for p in every if p.suffix.lower() in IMAGE_SUFFIXES]
            others = [p for p in every if p.suffix.lower() not in IMAGE_SUFFIXES]
            if not files:
                what = f"only {len(others)} other file(s), e.g. {others[0].name}" if others else "nothing"
                raise FileNotFoundError(
                    f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {str(item)!r} (it holds {what}); "
                    f"give image files or a folder that holds some")
            if others:
                logger.warning("%s: skipped %d file(s) that are not images (suffix not in %s), e.g. %s",
                               item, len(others), " ".join(IMAGE_SUFFIXES), others[0].name)
            found.extend(files)
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"image path {str(item)!r} does not exist")
    return found


def load_image(path: str | Path, size: int | Sequence[int] | None = None, *, crop: bool = True) -> np.ndarray:
    """Read one image as RGB uint8 ``(H, W, 3)`` (modes converted as in the module docstring).

    Args:
        path: the image file.
        size: ``None`` keeps the original size. An int resizes the short side to ``size`` and,
            with ``crop``, centre-crops to ``size x size``, exactly as training's ``resize_crop``
            does; never a squash that changes the aspect ratio. A ``(H, W)`` pair resizes to
            exactly that size (an explicit squash).
        crop: centre-crop to a square after an int resize.

    Raises:
        ImageReadError: the file cannot be read as an image (a ValueError).
    """
    rgb = open_image(path)
    if size is not None:
        rgb = crop_and_resize(rgb, _params(rgb.height, rgb.width, size, crop))
    return np.asarray(rgb, dtype=np.uint8).copy()


def _params(height: int, width: int, size: int | Sequence[int], crop: bool) -> CropParams:
    if not isinstance(size, int):
        out_height, out_width = size
        return CropParams(0, 0, width, height, int(out_width), int(out_height))
    if crop:
        return resize_short_side_crop_params(height, width, size)
    scale = size / min(height, width)
    return CropParams(0, 0, width, height, max(size, round(width * scale)), max(size, round(height * scale)))


def load_images(paths: Sequence[str | Path], size: int | Sequence[int]) -> torch.Tensor:
    """Read images into one uint8 batch ``(B, 3, H, W)``; ``size`` as for :func:`load_image`
    (an int implies a centre crop so that the batch has one shape)."""
    arrays = [load_image(p, size, crop=True) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
