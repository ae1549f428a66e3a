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
files are skipped, and other files are counted in a warning. Files with an image suffix that
PIL cannot identify are dropped with a warning that counts them. Labels are class indices in
sorted class-name order.

A folder with only one class, with ``train/`` but no ``test/`` (or the reverse), or with images
but no class subfolders is an error that says how to lay it out: classification needs at least
two classes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .images import IMAGE_SUFFIXES, read_image_sizes
from .sources import DataSource, Split, check_options, option_number

__all__ = ["load_folder"]

logger = logging.getLogger(__name__)


def _classes(folder: Path, skipped: list[Path]) -> dict[str, list[Path]]:
    """``{class folder name: image files}``; other (non-hidden) files are added to ``skipped``."""
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith("."))
        out[sub.name] = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped.extend(p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES)
    return out


def _layout(root: Path) -> str:
    return (f"put each class's images in its own subfolder, {root}/<class>/*.jpg (ltpa then holds out a seeded "
            f"test split), or use {root}/train/<class>/ and {root}/test/<class>/")


def load_folder(root: str | Path, *, options: dict[str, Any] | None = None) -> DataSource:
    """Load the file lists of a class-per-subfolder image folder (decode with ``materialise``).

    Args:
        root: the folder.
        options: ``test_fraction`` (0.2) and ``seed`` (0), used only without ``train/``+``test/``.

    Raises:
        FileNotFoundError: ``root`` is not a folder, holds no class folders with images, or has
            only one of ``train/`` and ``test/``.
        ValueError: bad options, or a single class.
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
    skipped: list[Path] = []
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        there, absent = ("train", "test") if has_train else ("test", "train")
        raise FileNotFoundError(f"folder: {root} has {there}/ but no {absent}/; add {root}/{absent}/<class>/ with "
                                f"the {absent} images, or move the class folders of {there}/ up to {root}/<class>/ "
                                f"to let ltpa hold out a seeded test split")
    has_split = has_train and has_test
    if has_split:
        sides = {"train": _classes(root / "train", skipped), "test": _classes(root / "test", skipped)}
        names = sorted({c for side in sides.values() for c, files in side.items() if files})
        for side, other in (("train", "test"), ("test", "train")):
            lacking = [c for c in names if not sides[side].get(c)]
            if lacking:
                warnings.append(f"folder: {len(lacking)} class(es) have no {side} images but have {other} "
                                f"images: {', '.join(lacking[:5])}")
    else:
        found = _classes(root, skipped)
        names = sorted(c for c, files in found.items() if files)
        sides = {"all": found}
    if not names:
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        what = (f"holds {len(loose)} image(s) but no class subfolders" if loose else
                f"holds no images ({', '.join(IMAGE_SUFFIXES)}) in class subfolders")
        raise FileNotFoundError(f"folder: {root} {what}; {_layout(root)}")
    if len(names) == 1:
        raise ValueError(f"folder: {root} has only one class ({names[0]!r}); classification needs at least two "
                         f"classes: {_layout(root)}")
    if skipped:
        suffixes = sorted({p.suffix.lower() or "(none)" for p in skipped})
        warnings.append(f"folder: skipped {len(skipped)} file(s) that are not images (suffix {', '.join(suffixes[:5])}"
                        f"), e.g. {skipped[0]}")
    index = {c: k for k, c in enumerate(names)}

    def make(found: dict[str, list[Path]], name: str) -> Split:
        files = [f for c in names for f in found.get(c, [])]
        targets = [index[c] for c in names for _ in found.get(c, [])]
        sizes = read_image_sizes(files)
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
