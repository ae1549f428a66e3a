"""One entry point for every data set: a spec string in, train and test splits out.

Spec syntax (``ltpa data SPEC``, ``--set data=SPEC``)::

    NAME[:ROOT][,KEY=VALUE]...

    synthetic                                   built-in data, no files
    synthetic:num_classes=5,image_size=64       options without a root
    cifar10:/data                               /data/cifar-10-batches-py (or /data itself)
    cifar100:/data,labels=coarse                20 super-classes instead of 100
    svhn:/data/svhn,extra=true                  train_32x32.mat + extra_32x32.mat as train
    cub:/data/CUB_200_2011,classes=1-10         classes 001-010 only, relabelled 0..9
    folder:/photos,test_fraction=0.25,seed=1    class-per-subfolder images
    masks:/data/ObjectDiscovery,subset=100      images with object masks (evaluation only)

The name is split off at the first colon; the rest is split at commas, and the first piece is
the root unless it reads ``key=value`` with a plain identifier as key. Roots containing commas
cannot be written in a spec: build a :class:`DataSpec` instead. Each source's options:

* ``synthetic``: num_train (5000), num_test (1000), image_size (32), num_classes (10), seed (0),
  clutter (true), num_distractors (``2-4`` or ``3``). Options given in the spec override
  ``synthetic_options`` passed to :func:`load_data`.
* ``cifar10``: none. ``cifar100``: labels = ``fine`` (default, 100 classes) or ``coarse`` (20).
* ``svhn``: extra = false (default) or true (append the 531k extra images to train).
* ``cub``: classes = ``present`` (default: the classes that have images, relabelled 0..K-1),
  ``all`` (the 200-way labels of classes.txt, even if few are present), or ids such as ``1-10``
  or ``1-5+17+20-22`` (classes.txt ids, relabelled 0..K-1 in id order).
* ``folder``: test_fraction = 0.2 and seed = 0, used only when there are no ``train/`` and
  ``test/`` subfolders.
* ``masks``: subset = ``auto``/``100``/``full``/``all`` (Object Discovery); layouts in
  :mod:`ltpa.data.masks`. All images are in ``test``; ``train`` is empty.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import Option, UserError

__all__ = ["DataSpec", "Split", "DataSource", "SOURCES", "parse_data_spec", "load_data", "describe"]

SOURCES: tuple[str, ...] = ("synthetic", "cifar10", "cifar100", "svhn", "cub", "folder", "masks")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: source ``name``, data ``root`` (None for synthetic) and raw ``options``."""

    name: str
    root: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Split:
    """One split of a data set; images live either in memory or in files.

    Attributes:
        targets: ``(N,)`` int64 in ``[0, num_classes)``.
        images: ``(N, 3, H, W)`` uint8 RGB, or None for file-based sets.
        files: ``N`` image paths, or None for in-memory sets (decode with ``materialise``).
        sizes: ``(N, 2)`` int64 ``(H, W)`` of each file as stored, or None.
        boxes: ``(N, 4)`` float32 ``(x0, y0, x1, y1)`` in continuous pixel coordinates (pixel
            ``i`` spans ``[i, i+1)``) of ``images`` or of the original file, or None.
        parts: ``(N, P, 2)`` float32 ``(x, y)`` keypoints in the same coordinates; NaN where the
            part is not visible. None when the set has no parts.
        part_visible: ``(N, P)`` bool, or None.
        part_names: ``P`` names, ``()`` without parts.
        masks: ``(N, H, W)`` bool object masks (synthetic only), or None.
        name: ``"train"`` or ``"test"``.
    """

    targets: Tensor
    images: Tensor | None = None
    files: list[Path] | None = None
    sizes: Tensor | None = None
    boxes: Tensor | None = None
    parts: Tensor | None = None
    part_visible: Tensor | None = None
    part_names: tuple[str, ...] = ()
    masks: Tensor | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if (self.images is None) == (self.files is None):
            raise ValueError(f"split {self.name!r}: give exactly one of images (in memory) or files")
        n = len(self.targets)
        if self.images is not None and (self.images.dtype != torch.uint8 or self.images.ndim != 4
                                        or self.images.shape[1] != 3):
            raise ValueError(f"split {self.name!r}: images must be uint8 (N, 3, H, W), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("part_names", "name") or value is None:
                continue
            if len(value) != n:
                raise ValueError(f"split {self.name!r}: {f.name} has {len(value)} entries for {n} targets")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def select(self, index: Tensor) -> Split:
        """A new split of the samples at ``index`` (int64 indices or a bool mask), in that order."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = torch.nonzero(index).flatten()
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("part_names", "name") or value is None:
                continue
            picked[f.name] = [value[i] for i in index.tolist()] if isinstance(value, list) else value[index]
        return replace(self, **picked)


@dataclass
class DataSource:
    """A loaded data set: both splits, class names and what went wrong on the way.

    ``warnings`` holds every condition the loader noticed but accepted (files dropped, classes
    missing, splits made up); they are also logged, and :func:`describe` prints them.
    """

    name: str
    root: Path | None
    class_names: tuple[str, ...]
    train: Split
    test: Split
    warnings: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def parse_data_spec(spec: str | DataSpec) -> DataSpec:
    """Read ``NAME[:ROOT][,KEY=VALUE]...`` (see the module docstring); a DataSpec passes through.

    Raises:
        ValueError: unknown source name, an empty key or value, or a repeated key.
    """
    if isinstance(spec, DataSpec):
        _check_name(spec.name)
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a data spec must be a string such as 'cifar100:/data', got {type(spec).__name__}")
    name, _, rest = spec.strip().partition(":")
    if "," in name:  # "synthetic,num_classes=5"
        name, _, head = name.partition(",")
        rest = head + ("," + rest if rest else "")
    name = name.strip().lower()
    _check_name(name)
    pieces = [p for p in rest.split(",")] if rest else []
    root = None
    if pieces and not _is_option(pieces[0]):
        root = Path(pieces.pop(0)).expanduser() if pieces[0].strip() else None
    options: dict[str, Any] = {}
    for piece in pieces:
        if not _is_option(piece):
            raise ValueError(f"cannot read {piece!r} in data spec {spec!r}: options are key=value after the "
                             f"root, separated by commas, e.g. 'cub:/data/CUB_200_2011,classes=1-10'")
        key, _, value = piece.partition("=")
        key = key.strip()
        if key in options:
            raise ValueError(f"option {key!r} given twice in data spec {spec!r}")
        options[key] = value.strip()
    return DataSpec(name, root, options)


def _is_option(piece: str) -> bool:
    key, eq, _ = piece.partition("=")
    return bool(eq) and bool(_KEY.match(key.strip()))


def _check_name(name: str) -> None:
    if name not in SOURCES:
        import difflib

        close = difflib.get_close_matches(name, SOURCES, n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown data source {name!r}; available: {', '.join(SOURCES)}.{hint}")


# Option readers shared by the loaders: specs give strings, Python callers real values.
def check_options(source: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        import difflib

        allowed_text = ", ".join(allowed) if allowed else "none"
        close = [m for key in unknown for m in difflib.get_close_matches(key, allowed, n=1)]
        hint = f" (did you mean {' or '.join(dict.fromkeys(close))}?)" if close else ""
        raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}{hint}; allowed: {allowed_text}")


def option_bool(source: str, options: dict[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{source}: option {key} must be true or false, got {value!r}")


def option_number(source: str, options: dict[str, Any], key: str, default: Any, kind: type, low: float,
                  high: float) -> Any:
    value = options.get(key, default)
    try:
        number = kind(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: option {key} must be a {kind.__name__}, got {value!r}") from err
    if isinstance(value, bool) or not low <= number <= high:
        raise ValueError(f"{source}: option {key} must be in [{low}, {high}], got {value!r}")
    return number


def _root(spec: DataSpec) -> Path:
    if spec.root is None:
        raise ValueError(f"{spec.name} needs a data root, e.g. '{spec.name}:/path/to/data'; the files are read "
                         f"from (or, with download=True, saved to) that folder")
    return spec.root


def load_data(spec: str | DataSpec, *, download: bool = False,
              synthetic_options: dict[str, Any] | None = None) -> DataSource:
    """Load the train and test splits a data spec names.

    Args:
        spec: a spec string (module docstring) or a :class:`DataSpec`.
        download: fetch missing official files (verified against the official checksums).
        synthetic_options: defaults for ``synthetic`` (e.g. the run's image_size, num_classes);
            options in the spec win.

    Returns:
        A :class:`DataSource`. CIFAR, SVHN and synthetic splits hold uint8 images in memory;
        CUB and folder splits hold file lists, to decode with ``ltpa.data.materialise``.

    Raises:
        ValueError: a bad spec or option, or malformed data (the message names the file).
        FileNotFoundError: required files are missing (the message says where to get them).
    """
    spec = parse_data_spec(spec)
    if spec.name == "synthetic":
        return _load_synthetic(spec, synthetic_options or {})
    root = _root(spec)
    if spec.name in ("cifar10", "cifar100"):
        from .cifar import load_cifar

        return load_cifar(root, variant=spec.name, options=spec.options, download=download)
    if spec.name == "svhn":
        from .svhn import load_svhn

        return load_svhn(root, options=spec.options, download=download)
    if spec.name == "cub":
        from .cub import load_cub

        return load_cub(root, options=spec.options, download=download)
    if spec.name == "masks":
        from .masks import load_mask_source

        if download:
            raise UserError("masks: there is nothing to download for a mask folder; ", Option("download", False))
        return load_mask_source(root, options=spec.options)
    from .folder import load_folder

    if download:
        raise UserError("folder: there is nothing to download for an image folder; ", Option("download", False))
    return load_folder(root, options=spec.options)


_SYNTHETIC_KEYS = ("num_train", "num_test", "image_size", "num_classes", "seed", "clutter", "num_distractors")


def _load_synthetic(spec: DataSpec, defaults: dict[str, Any]) -> DataSource:
    from .synthetic import SyntheticLocalisation

    if spec.root is not None:
        raise ValueError(f"synthetic takes no root, got {str(spec.root)!r}; write options as "
                         f"'synthetic:num_classes=5,image_size=64'")
    check_options("synthetic", defaults, _SYNTHETIC_KEYS)
    check_options("synthetic", spec.options, _SYNTHETIC_KEYS)
    opts = {**defaults, **spec.options}
    big = 10**9
    num_train = option_number("synthetic", opts, "num_train", 5000, int, 1, big)
    num_test = option_number("synthetic", opts, "num_test", 1000, int, 1, big)
    distractors = opts.get("num_distractors", (2, 4))
    if isinstance(distractors, str):  # "3" or an inclusive range "2-4"
        lo, _, hi = distractors.partition("-")
        try:
            distractors = (int(lo), int(hi or lo))
        except ValueError as err:
            raise ValueError(f"synthetic: option num_distractors must be n or lo-hi, got {distractors!r}") from err
    common = dict(
        image_size=option_number("synthetic", opts, "image_size", 32, int, 1, big),
        num_classes=option_number("synthetic", opts, "num_classes", 10, int, 2, big),
        seed=option_number("synthetic", opts, "seed", 0, int, -big * big, big * big),
        clutter=option_bool("synthetic", opts, "clutter", True),
        num_distractors=distractors,
    )
    train, test = (SyntheticLocalisation(n, split=s, **common) for n, s in ((num_train, "train"), (num_test, "test")))

    def split(data: SyntheticLocalisation, name: str) -> Split:
        return Split(targets=data.targets, images=data.images, boxes=data.boxes, parts=data.parts,
                     part_visible=data.part_visible, part_names=tuple(data.part_names), masks=data.masks, name=name)

    return DataSource("synthetic", None, tuple(train.class_names), split(train, "train"), split(test, "test"),
                      [], dict(opts))


def describe(source: DataSource) -> str:
    """A short human-readable summary: counts per split and class, image sizes, annotations, warnings."""
    lines = [f"data: {source.name}" + (f" at {source.root}" if source.root else "")]
    k = source.num_classes
    names = source.class_names
    shown = ", ".join(names[:5]) + (f", ... {names[-1]}" if k > 6 else (", " + names[5] if k == 6 else ""))
    lines.append(f"classes: {k} ({shown})")
    for split in (source.train, source.test):
        counts = torch.bincount(split.targets, minlength=k)
        present = int((counts > 0).sum())
        if len(split):
            nonzero = counts[counts > 0].float()
            per_class = (f"per class min {int(nonzero.min())} / median {int(nonzero.median())} / "
                         f"max {int(nonzero.max())}, {present} of {k} classes present")
        else:
            per_class = "empty"
        lines.append(f"{split.name or 'split'}: {len(split)} images; {per_class}")
        lines.append(f"  images: {_sizes_text(split)}")
        notes = []
        if split.boxes is not None:
            notes.append("bounding boxes")
        if split.parts is not None:
            vis = float(split.part_visible.float().mean()) if split.part_visible is not None and len(split) else 1.0
            notes.append(f"{len(split.part_names)} parts ({', '.join(split.part_names)}; {vis:.0%} visible)")
        if split.masks is not None:
            notes.append("object masks")
        lines.append(f"  annotations: {'; '.join(notes) if notes else 'none'}")
    if source.warnings:
        lines.append(f"warnings ({len(source.warnings)}):")
        lines += [f"  - {w}" for w in source.warnings]
    else:
        lines.append("warnings: none")
    return "\n".join(lines)


def _sizes_text(split: Split) -> str:
    if split.images is not None:
        _, c, h, w = split.images.shape
        return f"in memory, uint8 {c}x{h}x{w} (H x W {h}x{w})"
    if split.sizes is None or not len(split):
        return f"{len(split.files or [])} files"
    h, w = split.sizes[:, 0].float(), split.sizes[:, 1].float()

    def stats(v: Tensor) -> str:
        return f"{int(v.min())}/{int(v.median())}/{int(v.max())}"

    return f"{len(split.files)} files; height min/median/max {stats(h)} px, width {stats(w)} px"
