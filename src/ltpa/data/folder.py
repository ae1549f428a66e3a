"""Any folder of images with one subfolder per class.

Two layouts are understood:

* ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``: the given split is used. Class names are
  the union of both sides' subfolders, sorted; a class with no test (or train) images is
  reported in the warnings.
* ``ROOT/<class>/*``: there is no test split, so one is made up: each class gives
  ``round(n * test_fraction)`` images (at least one when it has two or more) to test, picked with
  a generator seeded by ``seed``. This is reported in the warnings, since results on such a split
  are not comparable with a published one.

Images are found recursively inside each class folder (suffixes of ``IMAGE_SUFFIXES``); hidden
files are skipped. Labels are class indices in sorted class-name order.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .images import IMAGE_SUFFIXES
from .materialise import read_image_size
from .sources import DataSource, Split, check_options, option_number

__all__ = ["load_folder"]

logger = logging.getLogger(__name__)


def _classes(folder: Path) -> dict[str, list[Path]]:
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[sub.name] = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                               and not p.name.startswith("."))
    return out


def load_folder(root: str | Path, *, options: dict[str, Any] | None = None) -> DataSource:
    """Load the file lists of a class-per-subfolder image folder (decode with ``materialise``).

    Args:
        root: the folder.
        options: ``test_fraction`` (0.2) and ``seed`` (0), used only without ``train/``+``test/``.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds no class folders with images.
        ValueError: bad options.
    """
    options = dict(options or {})
    check_options("folder", options, ("test_fraction", "seed"))
    fraction = option_number("folder", options, "test_fraction", 0.2, float, 0.0, 0.9)
    seed = option_number("folder", options, "seed", 0, int, 0, 2**63 - 1)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder: {root} is not a folder; expected {root}/<class>/*.jpg or "
                                f"{root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg")
    warnings: list[str] = []
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    if has_split:
        sides = {"train": _classes(root / "train"), "test": _classes(root / "test")}
        names = sorted({c for side in sides.values() for c, files in side.items() if files})
        for side, other in (("train", "test"), ("test", "train")):
            lacking = [c for c in names if not sides[side].get(c)]
            if lacking:
                warnings.append(f"folder: {len(lacking)} class(es) have no {side} images but have {other} "
                                f"images: {', '.join(lacking[:5])}")
    else:
        found = _classes(root)
        names = sorted(c for c, files in found.items() if files)
        sides = {"all": found}
    if not names:
        raise FileNotFoundError(f"folder: no images ({', '.join(IMAGE_SUFFIXES)}) in class subfolders of {root}; "
                                f"expected {root}/<class>/*.jpg or {root}/train/<class>/ and {root}/test/<class>/")
    index = {c: k for k, c in enumerate(names)}

    def make(found: dict[str, list[Path]], name: str) -> Split:
        files = [f for c in names for f in found.get(c, [])]
        targets = [index[c] for c in names for _ in found.get(c, [])]
        sizes = [read_image_size(f) for f in files]
        bad = [f for f, s in zip(files, sizes) if s is None]
        if bad:
            warnings.append(f"folder: {len(bad)} of {len(files)} {name} files are unreadable as images and were "
                            f"dropped, e.g. {', '.join(map(str, bad[:3]))}")
        keep = [k for k, s in enumerate(sizes) if s is not None]
        return Split(torch.tensor([targets[k] for k in keep], dtype=torch.int64), files=[files[k] for k in keep],
                     sizes=torch.tensor([sizes[k] for k in keep], dtype=torch.int64).reshape(-1, 2), name=name)

    if has_split:
        train, test = make(sides["train"], "train"), make(sides["test"], "test")
    else:
        full = make(sides["all"], "train")
        is_test = _stratified_test_mask(full.targets, fraction, seed)
        train, test = full.select(~is_test), full.select(is_test)
        train.name, test.name = "train", "test"
        warnings.append(f"folder: no train/ and test/ subfolders in {root}; made a seeded split of "
                        f"{len(test)} test / {len(train)} train images (test_fraction={fraction}, seed={seed})")
    for message in warnings:
        logger.warning(message)
    return DataSource("folder", root, tuple(names), train, test, warnings,
                      {} if has_split else {"test_fraction": fraction, "seed": seed})


def _stratified_test_mask(targets: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(targets), dtype=torch.bool)
    for cls in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == cls).flatten()
        n_test = round(len(idx) * fraction)
        if fraction > 0 and n_test == 0 and len(idx) >= 2:
            n_test = 1
        mask[idx[torch.randperm(len(idx), generator=gen)[:n_test]]] = True
    return mask
