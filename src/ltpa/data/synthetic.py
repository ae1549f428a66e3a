"""Built-in synthetic localisation data: one class-defining target among distractors and clutter.

Every image holds exactly one *target*: a solid, oriented shape whose head end carries a white
disk. The class is the pair (target shape, target body colour), so neither global colour nor
shape alone names it. Around the target lie *distractors* and a cluttered background:

* Distractors are thin strokes or small dots (ring, square frame, equals sign, four dots) in the
  colours the classes use and of the same size as targets, but never solid and never with a white
  head. Both cues, and the white head alone, tell them apart from any target, so they carry no
  class information; they only make global colour statistics uninformative.
* They are placed so that no distractor pixel touches the target (not even diagonally), which
  keeps the target's silhouette intact.
* The background is a smooth, muted colour field with pixel noise, clamped well below white.

Everything is drawn with hard edges: a pixel belongs to an object exactly when its centre lies
inside the shape, so ``masks`` are the target's drawn pixels and ``boxes`` their tight box.
Coordinates follow the project convention: pixel ``i`` spans ``[i, i+1)``, x is the column.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

__all__ = [
    "SyntheticLocalisation",
    "TARGET_SHAPES",
    "DISTRACTOR_SHAPES",
    "COLOURS",
    "PART_NAMES",
    "MIN_IMAGE_SIZE",
    "MAX_IMAGE_SIZE",
    "MAX_CLASSES",
    "MAX_DISTRACTORS",
]

_ShapeFn = Callable[[Tensor, Tensor], Tensor]

# Shapes live in a local frame scaled by the object's half-length h: u runs from tail (-1) to
# head (+1), v across. Targets have similar areas (1.5-1.9 h^2) and the size varies by 2x in area,
# so the number of coloured pixels says little about the shape.
_TARGET_FNS: dict[str, _ShapeFn] = {
    "bar": lambda u, v: (u.abs() <= 1.0) & (v.abs() <= 0.475),
    "disk": lambda u, v: u * u + v * v <= 1.9 / math.pi,
    "wedge": lambda u, v: (u.abs() <= 1.0) & (v.abs() <= 0.475 * (u + 1.0)),  # pointed tail, flat head
    "diamond": lambda u, v: u.abs() + v.abs() / 0.75 <= 1.0,  # elongated, unlike the disk
    "bowtie": lambda u, v: (u.abs() <= 1.0) & (v.abs() <= 0.2 + 0.55 * u.abs()),
}
# Distractors are thin strokes or small dots, never solid, so even one cut by the image border
# cannot pass for a (headless) target.
_DISTRACTOR_FNS: dict[str, _ShapeFn] = {
    "ring": lambda u, v: ((u * u + v * v) <= 0.81) & ((u * u + v * v) >= 0.3),
    "frame": lambda u, v: (torch.maximum(u.abs(), v.abs()) <= 0.8) & (torch.maximum(u.abs(), v.abs()) >= 0.5),
    "equals": lambda u, v: (u.abs() <= 0.9) & (v.abs() >= 0.35) & (v.abs() <= 0.65),
    "dots": lambda u, v: ((u.abs() - 0.5) ** 2 + (v.abs() - 0.5) ** 2) <= 0.09,
}
TARGET_SHAPES: tuple[str, ...] = tuple(_TARGET_FNS)
DISTRACTOR_SHAPES: tuple[str, ...] = tuple(_DISTRACTOR_FNS)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (40, 170, 70),
    "blue": (50, 100, 230),
    "yellow": (225, 200, 40),
}
PART_NAMES: tuple[str, ...] = ("head", "tail")
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024
MAX_CLASSES = len(TARGET_SHAPES) * len(COLOURS)
MAX_DISTRACTORS = 8

# Radii of the circles that enclose every target / distractor shape, in units of h; placement
# keeps these circles apart, which is what guarantees the no-touching invariant.
_TARGET_RADIUS = 1.4
_DISTRACTOR_RADIUS = 1.15
_PART_U = 0.55  # head and tail keypoints sit at u = +/-0.55 on the axis
_HEAD_RADIUS = 0.28  # white head disk, in units of h
# A disk of this radius (px) around a keypoint always contains the pixel holding the keypoint
# (its centre is at most sqrt(0.5) ~ 0.707 px away), so the keypoint is on the mask by design.
_KEYPOINT_DISK_PX = 0.75
_SIZE_RANGE = (0.25, 0.35)  # object length 2h as a fraction of the short image side
_COLOUR_JITTER = 20.0
_BACKGROUND_MAX = 180.0  # the white head (>= 230 in every channel) stays unique
_CANDIDATES = 16  # candidate positions tried per distractor before it is dropped
# Pixels rendered at once (~12 MB of float32 RGB): bounds memory at large sizes while keeping the
# number of torch ops, each with a fixed cost, small at small sizes.
_CHUNK_PIXELS = 1 << 20


class SyntheticLocalisation(Dataset):
    """Procedurally generated images whose class is decided by one small target object.

    Class ``k`` is the target shape ``TARGET_SHAPES[k % 5]`` in colour
    ``list(COLOURS)[k // 5]``, e.g. ``"red-bar"``; with up to 5 classes only shape matters.
    Labels are exactly balanced: ``arange(num_samples) % num_classes``, then shuffled. All
    randomness comes from one ``torch.Generator`` seeded from ``(seed, split)``; the global RNG
    is never touched, and the same arguments always give bit-identical data (for a given torch
    version: torch does not promise identical random streams across releases).

    Attributes:
        images: ``(N, 3, H, W)`` uint8 RGB.
        targets: ``(N,)`` int64 in ``[0, num_classes)``.
        boxes: ``(N, 4)`` float32 ``(x0, y0, x1, y1)``, the tight box of ``masks``.
        masks: ``(N, H, W)`` bool, True on the target's drawn pixels (body and head disk).
        parts: ``(N, P, 2)`` float32 ``(x, y)`` keypoints named by ``part_names``; each lies in a
            pixel that is True in ``masks``.
        part_visible: ``(N, P)`` bool, always True (targets are never occluded or cropped).
        part_names: ``("head", "tail")``; the head end is the one with the white disk.
        distractor_masks: ``(N, H, W)`` bool, True on distractor pixels; never touches ``masks``
            (a one-pixel gap separates them, diagonals included).
        class_names: ``num_classes`` names, ``"<colour>-<shape>"``.
        image_size: ``(H, W)``.
        num_classes: number of classes.
    """

    def __init__(
        self,
        num_samples: int = 2048,
        *,
        image_size: int | Sequence[int] = 32,
        num_classes: int = 10,
        seed: int = 0,
        split: str = "train",
        num_distractors: int | Sequence[int] = (2, 4),
        clutter: bool = True,
    ) -> None:
        """Generates the whole data set in memory.

        Args:
            num_samples: number of images, at least 1.
            image_size: ``S`` for ``S x S`` images or ``(H, W)``; each side in
                ``[MIN_IMAGE_SIZE, MAX_IMAGE_SIZE]``. Objects scale with the short side (their
                length is 25-35% of it); 32 px is the smallest size meant for training.
            num_classes: in ``[2, MAX_CLASSES]`` (20).
            seed: any int; together with ``split`` it picks the random stream.
            split: any non-empty string; different splits give different, independent streams.
            num_distractors: ``n`` or an inclusive range ``(lo, hi)`` drawn uniformly per image,
                within ``[0, MAX_DISTRACTORS]``. A distractor that finds no free spot away from
                the target and earlier distractors is left out, so images may hold fewer.
            clutter: if False the background is one flat colour (handy for debugging).

        Raises:
            TypeError: if an argument has the wrong type.
            ValueError: if an argument is out of its allowed range.
        """
        self.image_size = _check_image_size(image_size)
        _check_int("num_samples", num_samples, 1, None)
        _check_int("num_classes", num_classes, 2, MAX_CLASSES)
        _check_int("seed", seed, None, None)
        if not isinstance(split, str):
            raise TypeError(f"split must be a string such as 'train', 'val' or 'test', got {split!r}")
        if not split:
            raise ValueError("split must be a non-empty string such as 'train', 'val' or 'test', got ''")
        self.num_distractors = _check_distractors(num_distractors)
        if not isinstance(clutter, bool):
            raise TypeError(f"clutter must be True or False, got {clutter!r}")

        self.num_classes = num_classes
        self.seed = seed
        self.split = split
        self.clutter = clutter
        colours = list(COLOURS)
        self.class_names = tuple(
            f"{colours[k // len(TARGET_SHAPES)]}-{TARGET_SHAPES[k % len(TARGET_SHAPES)]}" for k in range(num_classes)
        )
        self.part_names = PART_NAMES

        data = _generate(num_samples, self.image_size, num_classes, self.num_distractors, clutter, _stream_seed(seed, split))
        self.images: Tensor = data["images"]
        self.targets: Tensor = data["targets"]
        self.boxes: Tensor = data["boxes"]
        self.masks: Tensor = data["masks"]
        self.parts: Tensor = data["parts"]
        self.part_visible: Tensor = torch.ones(num_samples, len(PART_NAMES), dtype=torch.bool)
        self.distractor_masks: Tensor = data["distractor_masks"]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """Returns one sample as ``dict(image, target, box, mask, parts, part_visible)``.

        Shapes: image ``(3, H, W)`` uint8, target ``()`` int64, box ``(4,)``, mask ``(H, W)``,
        parts ``(P, 2)``, part_visible ``(P,)``. Negative indices count from the end. The tensors
        are views into the data set's storage: clone before changing them in place.
        """
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a SyntheticLocalisation of {n} samples")
        return {
            "image": self.images[index],
            "target": self.targets[index],
            "box": self.boxes[index],
            "mask": self.masks[index],
            "parts": self.parts[index],
            "part_visible": self.part_visible[index],
        }

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"SyntheticLocalisation(num_samples={len(self)}, image_size=({h}, {w}), num_classes={self.num_classes}, "
            f"seed={self.seed}, split={self.split!r}, num_distractors={self.num_distractors}, clutter={self.clutter})"
        )


def _is_int(value: object) -> bool:
    # bool is an int subclass; True as a sample count is almost certainly a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int | None, high: int | None) -> None:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {allowed}, got {value}")


def _check_pair(name: str, value: object, what: str) -> tuple[int, int]:
    """Accepts an int ``n`` (read as ``(n, n)``) or a length-2 sequence of ints."""
    pair = (value, value) if _is_int(value) else value
    if not isinstance(pair, (tuple, list)):
        raise TypeError(f"{name} must be an int or {what}, got {value!r} ({type(value).__name__})")
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or {what}, got {value!r} with {len(pair)} entries")
    if not all(_is_int(p) for p in pair):
        raise TypeError(f"{name} must be an int or {what}, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_image_size(image_size: object) -> tuple[int, int]:
    size = _check_pair("image_size", image_size, "an (H, W) pair of ints")
    if not all(MIN_IMAGE_SIZE <= s <= MAX_IMAGE_SIZE for s in size):
        raise ValueError(
            f"image_size sides must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] px, got {image_size!r}; "
            f"below {MIN_IMAGE_SIZE} px the target shapes are no longer distinguishable"
        )
    return size


def _check_distractors(num_distractors: object) -> tuple[int, int]:
    lo, hi = _check_pair("num_distractors", num_distractors, "an inclusive (lo, hi) pair of ints")
    if not 0 <= lo <= hi <= MAX_DISTRACTORS:
        raise ValueError(
            f"num_distractors must satisfy 0 <= lo <= hi <= {MAX_DISTRACTORS}, got {num_distractors!r} "
            f"(read as ({lo}, {hi}))"
        )
    return lo, hi


def _stream_seed(seed: int, split: str) -> int:
    # Python's hash() of a str changes per process, so hash the pair with a stable digest instead.
    digest = hashlib.sha256(f"ltpa.synthetic:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _local(xs: Tensor, ys: Tensor, cx: Tensor, cy: Tensor, h: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    """Maps pixel centres into each object's frame: ``(n,)`` poses -> ``(n, H, W)`` u and v."""
    dx = xs[None, None, :] - cx[:, None, None]  # (n, 1, W)
    dy = ys[None, :, None] - cy[:, None, None]  # (n, H, 1)
    c, s, h = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None], h[:, None, None]
    return (dx * c + dy * s) / h, (dy * c - dx * s) / h


def _upsample(grid: Tensor, height: int, width: int) -> Tensor:
    """Bilinear ``(n, C, h, w) -> (n, C, height, width)`` as two small matmuls.

    Bilinear interpolation is separable; two matmuls run several times faster on CPU than
    ``F.interpolate`` here, and upsampling dominated generation time at 80 px.
    """

    def weights(cells: int, size: int) -> Tensor:  # (cells, size): weight of each cell per pixel
        return F.interpolate(torch.eye(cells)[None], size=size, mode="linear", align_corners=False)[0]

    return weights(grid.shape[-2], height).T @ grid @ weights(grid.shape[-1], width)


def _draw(kinds: Tensor, fns: Sequence[_ShapeFn], xs: Tensor, ys: Tensor, pose: Tensor) -> Tensor:
    """Rasterises one object per image; ``kinds`` (n,) indexes ``fns`` (-1 draws nothing).

    ``pose`` is ``(n, 4)``: centre x, centre y, half-length h (px), angle (rad).
    Returns ``(n, H, W)`` bool.
    """
    out = torch.zeros(kinds.shape[0], ys.shape[0], xs.shape[0], dtype=torch.bool)
    for k, fn in enumerate(fns):
        sel = kinds == k
        if sel.any():
            out[sel] = fn(*_local(xs, ys, *pose[sel].unbind(1)))
    return out


def _generate(
    n: int, size: tuple[int, int], num_classes: int, distractors: tuple[int, int], clutter: bool, stream: int
) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(stream)
    H, W = size
    short = min(H, W)

    def uni(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    num_shapes = len(TARGET_SHAPES)

    # Per-image parameters are drawn up front in a fixed order; only pixel noise is drawn later,
    # chunk by chunk with a fixed chunk size, so a (seed, split) pair always replays the same stream.
    targets = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    h = short * (_SIZE_RANGE[0] + (_SIZE_RANGE[1] - _SIZE_RANGE[0]) * uni(n)) / 2
    reach = _TARGET_RADIUS * h + 0.5  # keeps the whole target inside the image
    cx = reach + (W - 2 * reach) * uni(n)
    cy = reach + (H - 2 * reach) * uni(n)
    angle = 2 * math.pi * uni(n)
    body_rgb = palette[targets // num_shapes] + _COLOUR_JITTER * (2 * uni(n, 3) - 1)
    head_rgb = 230.0 + 25.0 * uni(n, 3)

    lo, hi = distractors
    count = torch.randint(lo, hi + 1, (n,), generator=g)
    d_kind = torch.randint(len(DISTRACTOR_SHAPES), (n, hi), generator=g)
    # Distractors reuse the colours the classes use, so colour statistics tell little about which
    # colour the target has.
    num_colours_used = -(-num_classes // num_shapes)
    d_rgb = palette[torch.randint(num_colours_used, (n, hi), generator=g)] + _COLOUR_JITTER * (2 * uni(n, hi, 3) - 1)
    d_h = short * (_SIZE_RANGE[0] + (_SIZE_RANGE[1] - _SIZE_RANGE[0]) * uni(n, hi)) / 2
    d_angle = 2 * math.pi * uni(n, hi)
    cand = uni(n, hi, _CANDIDATES, 2) * torch.tensor([W, H], dtype=torch.float32)

    bg_base = 60.0 + 60.0 * uni(n, 1) + 12.0 * (2 * uni(n, 3) - 1)  # muted: grey plus a small tint
    bg_coarse = 18.0 * torch.randn(n, 3, 4, 4, generator=g)
    bg_fine = 8.0 * torch.randn(n, 3, 8, 8, generator=g)

    # Place distractors one slot at a time: the first candidate whose enclosing circle keeps a
    # 2 px gap to the target's and a 1.5 px gap to earlier distractors' wins.
    d_active = torch.zeros(n, hi, dtype=torch.bool)
    d_centre = torch.zeros(n, hi, 2)
    centre = torch.stack([cx, cy], 1)
    rows = torch.arange(n)
    for d in range(hi):
        r = _DISTRACTOR_RADIUS * d_h[:, d, None]  # (n, 1)
        ok = (cand[:, d] - centre[:, None]).norm(dim=-1) >= _TARGET_RADIUS * h[:, None] + r + 2.0
        for e in range(d):
            gap = (cand[:, d] - d_centre[:, None, e]).norm(dim=-1) >= _DISTRACTOR_RADIUS * d_h[:, e, None] + r + 1.5
            ok &= gap | ~d_active[:, e, None]
        first = ok.to(torch.uint8).argmax(1)  # index of the first free candidate
        d_centre[:, d] = cand[rows, d, first]
        d_active[:, d] = ok.any(1) & (d < count)
    d_kind = torch.where(d_active, d_kind, -1)

    xs = torch.arange(W, dtype=torch.float32) + 0.5
    ys = torch.arange(H, dtype=torch.float32) + 0.5
    images = torch.empty(n, 3, H, W, dtype=torch.uint8)
    masks = torch.empty(n, H, W, dtype=torch.bool)
    d_masks = torch.empty(n, H, W, dtype=torch.bool)
    target_fns = list(_TARGET_FNS.values())
    distractor_fns = list(_DISTRACTOR_FNS.values())
    chunk = max(1, _CHUNK_PIXELS // (H * W))
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        m = sl.stop - sl.start
        img = bg_base[sl, :, None, None].expand(m, 3, H, W).clone()
        if clutter:
            for grid in (bg_coarse[sl], bg_fine[sl]):
                img += _upsample(grid, H, W)
            img += 5.0 * torch.randn(m, 3, H, W, generator=g)
        img.clamp_(0.0, _BACKGROUND_MAX)

        union = torch.zeros(m, H, W, dtype=torch.bool)
        for d in range(hi):
            pose = torch.cat([d_centre[sl, d], d_h[sl, d, None], d_angle[sl, d, None]], 1)
            dm = _draw(d_kind[sl, d], distractor_fns, xs, ys, pose)
            img = torch.where(dm[:, None], d_rgb[sl, d, :, None, None], img)
            union |= dm

        pose = torch.stack([cx[sl], cy[sl], h[sl], angle[sl]], 1)
        body = _draw(targets[sl] % num_shapes, target_fns, xs, ys, pose)
        u, v = _local(xs, ys, *pose.unbind(1))
        hh = h[sl, None, None]
        # Thin tails (wedge) could miss the tail keypoint's pixel; a sub-pixel disk fixes that.
        tail = ((u + _PART_U) ** 2 + v * v) * hh * hh <= _KEYPOINT_DISK_PX**2
        head_r = torch.clamp(_HEAD_RADIUS * hh, min=_KEYPOINT_DISK_PX)
        head = ((u - _PART_U) ** 2 + v * v) * hh * hh <= head_r**2
        img = torch.where((body | tail)[:, None], body_rgb[sl, :, None, None], img)
        img = torch.where(head[:, None], head_rgb[sl, :, None, None], img)

        images[sl] = img.round_().clamp_(0, 255).to(torch.uint8)
        masks[sl] = body | tail | head
        d_masks[sl] = union

    cols, rws = masks.any(1), masks.any(2)  # (n, W), (n, H)
    x0 = cols.to(torch.uint8).argmax(1)
    x1 = W - cols.flip(1).to(torch.uint8).argmax(1)
    y0 = rws.to(torch.uint8).argmax(1)
    y1 = H - rws.flip(1).to(torch.uint8).argmax(1)
    axis = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * (_PART_U * h)[:, None]  # (n, 2)
    return {
        "images": images,
        "targets": targets,
        "boxes": torch.stack([x0, y0, x1, y1], 1).float(),
        "masks": masks,
        "parts": torch.stack([centre + axis, centre - axis], 1),  # (n, P, 2), PART_NAMES order
        "distractor_masks": d_masks,
    }
