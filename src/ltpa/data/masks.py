"""Images with binary object masks from a folder: ground truth for weakly supervised segmentation.

Supported layouts (image and mask match by file stem, any suffix in ``IMAGE_SUFFIXES``)::

    root/images/a.jpg  + root/masks/a.png            one class (named after root)
    root/<class>/a.jpg + root/<class>/GroundTruth/a.png    Object Discovery (Rubinstein et al. 2013)
    root/Data/<class>/...                            the Object Discovery zip as unpacked
    root/<class>/images/a.jpg + root/<class>/masks/a.png   one class per folder
    root/rgb/horse001.jpg + root/figure_ground/horse001.jpg   Weizmann horses (weizmann_horse_db)
    root/horse/horse001.png + root/mask/horse001.png          Weizmann horses, repackaged

Image folders may be named ``images``, ``image``, ``img``, ``rgb``, ``horse`` (or be the class
folder itself); mask folders ``masks``, ``mask``, ``GroundTruth``, ``ground_truth``, ``gt`` or
``figure_ground`` (names compared case-insensitively). Weizmann's ``gray/`` copies are ignored.

Object Discovery ships each class twice: ``Data/Airplane`` (the full Internet set) and
``Data/Airplane100`` (the 100-image subset most papers report). When both ``X`` and ``X100``
are present, ``subset`` picks: ``"100"`` (default ``"auto"``: the subsets), ``"full"``, or
``"all"`` (both, as separate classes; their images overlap). Object Discovery's "noise" images
(no object) have all-black masks; they are kept and counted (``empty masks``).

A mask is read as grey levels, resized to its image with nearest neighbour if it is stored at
another scale (a mask of another aspect ratio is an error: it belongs to another image), and
thresholded at 50%: ``>= 128`` of 255, or ``>= 1`` for masks stored as 0/1 (maximum value 1).
An image without a mask or a mask without an image is left out with one warning giving the count
and a few names; :attr:`MaskedImages.missing_masks` lists every image left out. Images are read by :func:`ltpa.data.images.open_image`, as in training. Then
image (bilinear) and mask (nearest) go through the same crop and resize, that of a training
run's ``resize_mode``: ``resize_crop`` (short side to ``size``, centre square), ``squash``, or
``bbox_crop`` around the mask's tight box (grown by ``bbox_margin``; an empty mask has no box,
so its image is resized as ``resize_crop``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ltpa.data.images import IMAGE_SUFFIXES, ImageReadError, open_image, read_image_size
from ltpa.data.transforms import crop_and_resize, crop_params

__all__ = ["MaskedImages", "MaskFolder", "IMAGE_DIRS", "MASK_DIRS", "SUBSETS", "scan_mask_folder", "find_mask_pairs",
           "load_mask_folder", "load_mask_source", "mask_boxes"]

IMAGE_DIRS = ("images", "image", "img", "rgb", "horse")
MASK_DIRS = ("masks", "mask", "groundtruth", "ground_truth", "gt", "figure_ground")
SUBSETS = ("auto", "100", "full", "all")


@dataclass(frozen=True)
class MaskedImages:
    """Images, masks and their tight boxes.

    Attributes:
        images: uint8 ``(N, 3, S, S)`` RGB.
        masks: bool ``(N, S, S)``, True on the object.
        boxes: float32 ``(N, 4)`` ``(x0, y0, x1, y1)`` tight box of each mask (zeros if empty).
        labels: int64 ``(N,)`` index into ``class_names``.
        class_names: one name per class folder (the root's name for a single-class folder).
        paths: ``(image path, mask path)`` per sample.
        missing_masks: ``"class/stem"`` of every image left out for want of a mask.
    """

    images: Tensor
    masks: Tensor
    boxes: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    paths: tuple[tuple[Path, Path], ...]
    missing_masks: tuple[str, ...] = ()


@dataclass(frozen=True)
class MaskFolder:
    """What :func:`scan_mask_folder` found: ``{class: [(image, mask), ...]}``, the images
    without a mask and the masks without an image (``"class/stem"``), and the class folders
    ``subset`` left out."""

    classes: dict[str, list[tuple[Path, Path]]]
    missing_masks: tuple[str, ...]
    missing_images: tuple[str, ...]
    skipped: tuple[str, ...]


def _subdir(folder: Path, names: tuple[str, ...]) -> Path | None:
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name.lower() in names:
            return child
    return None


def _files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _pairs_in(folder: Path) -> tuple[list[tuple[Path, Path]], list[str], list[str]] | None:
    masks_dir = _subdir(folder, MASK_DIRS)
    if masks_dir is None:
        return None
    images_dir = _subdir(folder, IMAGE_DIRS) or folder
    images, masks = _files(images_dir), _files(masks_dir)
    pairs = [(images[stem], masks[stem]) for stem in sorted(images) if stem in masks]
    return pairs, sorted(set(images) - set(masks)), sorted(set(masks) - set(images))


def _scan(root: Path) -> dict[str, tuple[list[tuple[Path, Path]], list[str], list[str]]]:
    found = _pairs_in(root)
    if found is not None:
        return {root.name: found}
    classes = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        pairs = _pairs_in(child)
        if pairs is not None:
            classes[child.name] = pairs
    if not classes:  # the Object Discovery zip unpacks to root/Data/<class>
        inner = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() == "data"]
        if inner:
            return _scan(inner[0])
    return classes


def scan_mask_folder(root: str | Path, *, subset: str = "auto") -> MaskFolder:
    """Find the image/mask pairs of a folder in one of the supported layouts, per class.

    Args:
        root: the folder (module docstring).
        subset: for Object Discovery's ``X``/``X100`` pairs of folders: ``"auto"``/``"100"``,
            ``"full"`` or ``"all"`` (module docstring).

    Raises:
        FileNotFoundError: ``root`` is missing or holds no matched image/mask pair.
        ValueError: an unknown ``subset``.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)} (Object Discovery's 100-image subsets, "
                         f"the full sets, or both), got {subset!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"mask data root {str(root)!r} is not a folder.")
    classes = _scan(root)
    skipped = []
    if subset != "all":
        for name in list(classes):
            if name.endswith("100") and name[:-3] in classes:
                dropped = name[:-3] if subset in ("auto", "100") else name
                skipped.append(dropped)
                classes.pop(dropped)
    no_mask = tuple(f"{c}/{s}" for c, (_, missing, _) in classes.items() for s in missing)
    no_image = tuple(f"{c}/{s}" for c, (_, _, missing) in classes.items() for s in missing)
    result = {name: pairs for name, (pairs, _, _) in classes.items() if pairs}
    if not result:
        raise FileNotFoundError(
            f"no image/mask pairs found under {str(root)!r}; expected root/images + root/masks, "
            "root/<class>/*.jpg + root/<class>/GroundTruth/*.png, or root/rgb + root/figure_ground "
            f"(mask folders: {MASK_DIRS}; image folders: {IMAGE_DIRS}).")
    return MaskFolder(result, no_mask, no_image, tuple(sorted(skipped)))


def _warn(folder: MaskFolder, root: str | Path) -> None:
    for what, names in (("image(s) without a mask", folder.missing_masks),
                        ("mask(s) without an image", folder.missing_images)):
        if names:
            warnings.warn(f"{len(names)} {what} in {str(root)!r} left out, e.g. {list(names[:3])}.", stacklevel=3)
    if folder.skipped:
        warnings.warn(f"{str(root)!r} holds Object Discovery's full sets and 100-image subsets; scoring "
                      f"{', '.join(folder.classes)}, leaving out {', '.join(folder.skipped)} (option subset=full, "
                      f"100 or all chooses).", stacklevel=3)


def find_mask_pairs(root: str | Path, *, subset: str = "auto") -> dict[str, list[tuple[Path, Path]]]:
    """``{class name: [(image, mask), ...]}`` for a folder in one of the supported layouts;
    warns about unmatched files (see :func:`scan_mask_folder`).

    Raises:
        FileNotFoundError: ``root`` is missing or holds no matched image/mask pair.
    """
    folder = scan_mask_folder(root, subset=subset)
    _warn(folder, root)
    return folder.classes


def _open_mask(path: Path) -> Image.Image:
    """A mask file as 8-bit grey (``L``); the pixel limit is checked first."""
    if read_image_size(path) is None:
        raise ImageReadError(f"cannot read mask {str(path)!r} as an image; replace it with a good copy or remove it")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageReadError(f"cannot read mask {str(path)!r} as an image ({err}); replace it or remove it") from err


def _load_pair(image_path: Path, mask_path: Path, size: int, mode: str,
               margin: float) -> tuple[np.ndarray, np.ndarray]:
    image = open_image(image_path)
    grey = _open_mask(mask_path)
    (iw, ih), (mw, mh) = image.size, grey.size
    if grey.size != image.size:
        # Only a uniform rescale is a mask of this image (within one pixel of rounding).
        if abs(mh * iw / mw - ih) > 1 or abs(mw * ih / mh - iw) > 1:
            raise ValueError(f"mask {str(mask_path)!r} is {mw}x{mh} px but its image {str(image_path)!r} is "
                             f"{iw}x{ih} px, another aspect ratio: it is not this image's mask; save the mask at "
                             f"the image's size")
        grey = grey.resize(image.size, Image.Resampling.NEAREST)
    values = np.asarray(grey)
    threshold = 1 if values.max() == 1 else 128  # 0/1 masks, else 50% of 255
    binary = values >= threshold
    box = None
    if mode == "bbox_crop":
        tight = mask_boxes(torch.from_numpy(binary)[None])[0]
        box = tight if bool(binary.any()) else None
    params = crop_params(ih, iw, size, "resize_crop" if mode == "bbox_crop" and box is None else mode, box,
                         margin=margin)
    image = crop_and_resize(image, params)
    mask = crop_and_resize(Image.fromarray(binary.astype(np.uint8) * 255), params, resample=Image.Resampling.NEAREST)
    return np.asarray(image, dtype=np.uint8), np.asarray(mask) >= 128


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes ``(N, 4)`` float32 ``(x0, y0, x1, y1)`` of bool ``(N, H, W)`` masks (zeros if empty)."""
    cols, rows = masks.any(1), masks.any(2)
    width, height = masks.shape[2], masks.shape[1]
    x0 = cols.to(torch.uint8).argmax(1)
    x1 = width - cols.flip(1).to(torch.uint8).argmax(1)
    y0 = rows.to(torch.uint8).argmax(1)
    y1 = height - rows.flip(1).to(torch.uint8).argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(masks.flatten(1).any(1)[:, None], boxes, torch.zeros_like(boxes))


def load_mask_folder(root: str | Path, size: int, *, limit: int | None = None, mode: str = "resize_crop",
                     bbox_margin: float = 0.1, subset: str = "auto") -> MaskedImages:
    """Load every matched image/mask pair under ``root`` at ``size x size``.

    Args:
        root: a folder in one of the layouts of the module docstring.
        size: output side in pixels.
        limit: keep at most this many pairs per class (in file order).
        mode: the training run's ``resize_mode`` (module docstring).
        bbox_margin: for ``bbox_crop``, the fraction of the box's side added per side.
        subset: Object Discovery's 100-image subsets or full sets (:func:`scan_mask_folder`).

    Raises:
        FileNotFoundError: see :func:`find_mask_pairs`.
        ValueError: an unreadable file, a mask of another aspect ratio than its image, a bad
            ``size`` or ``mode``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (pixels), got {size!r}.")
    if mode not in ("resize_crop", "bbox_crop", "squash"):
        raise ValueError(f"mode must be one of resize_crop, bbox_crop, squash, got {mode!r}")
    folder = scan_mask_folder(root, subset=subset)
    _warn(folder, root)
    classes = folder.classes
    images, masks, labels, paths = [], [], [], []
    for label, (name, pairs) in enumerate(classes.items()):
        for image_path, mask_path in pairs[:limit]:
            image, mask = _load_pair(image_path, mask_path, size, mode, bbox_margin)
            images.append(image)
            masks.append(mask)
            labels.append(label)
            paths.append((image_path, mask_path))
    mask_tensor = torch.from_numpy(np.stack(masks))
    empty = int((~mask_tensor.flatten(1).any(1)).sum())
    if empty:
        warnings.warn(f"{empty} mask(s) under {str(root)!r} are empty after resizing.", stacklevel=2)
    return MaskedImages(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        masks=mask_tensor,
        boxes=mask_boxes(mask_tensor),
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=tuple(classes),
        paths=tuple(paths),
        missing_masks=folder.missing_masks,
    )


def load_mask_source(root: str | Path, *, options: dict | None = None):
    """A mask folder as a :class:`~ltpa.data.sources.DataSource` (``ltpa data masks:PATH``): every
    matched image in the ``test`` split (targets: the class folder's index; ``masks`` holds the
    mask files, read by :func:`load_mask_folder`), an empty ``train`` split (a mask folder is
    for evaluation: ``ltpa localise --data masks:PATH``), unmatched files as warnings.

    Options: ``subset`` = ``auto`` (default), ``100``, ``full`` or ``all`` (:func:`scan_mask_folder`).
    """
    from ltpa.data.images import read_image_sizes
    from ltpa.data.sources import DataSource, Split, check_options

    options = dict(options or {})
    check_options("masks", options, ("subset",))
    folder = scan_mask_folder(root, subset=str(options.get("subset", "auto")))
    pairs = [(label, image, mask) for label, items in enumerate(folder.classes.values()) for image, mask in items]
    files = [image for _, image, _ in pairs]
    sizes = read_image_sizes(files)
    notes = [f"{len(names)} {what} left out: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
             for what, names in (("image(s) without a mask", folder.missing_masks),
                                 ("mask(s) without an image", folder.missing_images)) if names]
    if folder.skipped:
        notes.append(f"full Object Discovery sets beside their 100-image subsets: left out {', '.join(folder.skipped)} "
                     "(option subset=full, 100 or all chooses)")
    unreadable = [str(path) for path, size in zip(files, sizes) if size is None]
    if unreadable:
        notes.append(f"{len(unreadable)} image(s) PIL cannot identify: {', '.join(unreadable[:3])}")
    test = Split(torch.tensor([label for label, _, _ in pairs], dtype=torch.int64), files=files,
                 sizes=torch.tensor([size or (0, 0) for size in sizes], dtype=torch.int64).reshape(-1, 2),
                 masks=[mask for _, _, mask in pairs], name="test")
    train = Split(torch.zeros(0, dtype=torch.int64), files=[], name="train")
    return DataSource("masks", Path(root), tuple(folder.classes), train, test, notes, options)
