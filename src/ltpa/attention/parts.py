"""Which annotated part does each level look at? Peak and mass per keypoint, as a level x part table.

Keypoints are ``(x, y)`` in continuous input coordinates (pixel ``i`` spans ``[i, i + 1)``),
e.g. ``SyntheticLocalisation.parts`` (head, tail) or CUB's 15 parts, with a visibility flag.
Two assignments per image and level, on maps at image resolution:

* ``peak``: the map's peak pixel goes to the nearest *visible* keypoint, measured from the
  pixel centre, if that keypoint lies within ``radius`` px; otherwise to ``"none"``. The peak is
  the one the pointing game uses (:func:`~ltpa.attention.peaks.peak_pixels`): on a plateau of
  tied maxima, the tied pixel nearest to their centroid, not the first argmax.
* ``mass``: for each visible keypoint, the share of the map's total mass on pixels whose centres
  lie within ``radius`` px of it; the image goes to the part with the largest share, or to
  ``"none"`` when no disc holds any mass. Discs of nearby keypoints may overlap, so shares can
  add up to more than their union.

The table over a data set gives, per level, the fraction of images assigned to each part (and
``"none"``); each row sums to 1. Consistency says how often a level lands on the same part:
``max_fraction`` (the share of its most frequent part) and ``1 - H / log(P + 1)`` (1 = always the
same part, 0 = spread evenly over the parts and "none").
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ltpa.attention._inputs import check_heat
from ltpa.attention.peaks import peak_pixels

__all__ = ["ASSIGNMENTS", "part_assignments", "part_table", "plot_part_table"]

ASSIGNMENTS = ("peak", "mass")
_CHUNK_ELEMENTS = 1 << 24


def _check_parts(parts: object, visible: object, count: int) -> tuple[Tensor, Tensor]:
    points = torch.as_tensor(parts, dtype=torch.float64)
    if points.dim() != 3 or points.shape[0] != count or points.shape[2] != 2:
        raise ValueError(f"parts must be (N, P, 2) (x, y) keypoints for the {count} maps, got {tuple(points.shape)}.")
    if visible is None:
        flags = torch.ones(points.shape[:2], dtype=torch.bool)
    else:
        flags = torch.as_tensor(visible)
        if flags.dtype != torch.bool or flags.shape != points.shape[:2]:
            raise ValueError(f"part_visible must be bool (N, P) = {tuple(points.shape[:2])}, "
                             f"got {flags.dtype} {tuple(flags.shape)}.")
    flags = flags & torch.isfinite(points).all(-1)  # an invisible part may carry NaN or 0 coordinates
    return torch.nan_to_num(points), flags


def _check_radius(radius: float) -> float:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 <= radius < math.inf:
        raise ValueError(f"radius must be a finite number of pixels >= 0, got {radius!r}.")
    return float(radius)


def part_assignments(
    heat: Tensor, parts: Tensor, part_visible: Tensor | None = None, *, radius: float
) -> dict[str, Tensor]:
    """Per-image peak and mass assignment of maps to keypoints (see the module docstring).

    Args:
        heat: ``(N, H, W)`` or ``(N, 1, H, W)`` non-negative finite maps at image resolution.
        parts: ``(N, P, 2)`` keypoints ``(x, y)`` in input pixels.
        part_visible: bool ``(N, P)``; default all visible.
        radius: disc radius in pixels (from pixel centres), ``>= 0``.

    Returns:
        ``{"peak": (N,) int64, "most_mass": (N,) int64, "mass": (N, P) float64}``; index ``P``
        means ``"none"``; ``mass`` holds each visible part's share of the map (0 if invisible).
    """
    maps = check_heat(heat).double()
    if (maps < 0).any():
        raise ValueError("heat must be non-negative; rectify signed maps first (heat.clamp(min=0)).")
    count, height, width = maps.shape
    points, visible = _check_parts(parts, part_visible, count)
    radius = _check_radius(radius)
    num_parts = points.shape[1]
    points, visible = points.to(maps.device), visible.to(maps.device)

    rows, columns = peak_pixels(maps)
    peak_xy = torch.stack([columns.double() + 0.5, rows.double() + 0.5], 1)  # (N, 2) pixel centres
    distance = (points - peak_xy[:, None]).norm(dim=-1).masked_fill(~visible, math.inf)  # (N, P)
    nearest = distance.min(1)
    peak_part = torch.where(nearest.values <= radius, nearest.indices, torch.full_like(nearest.indices, num_parts))

    ys = torch.arange(height, dtype=torch.float64, device=maps.device) + 0.5
    xs = torch.arange(width, dtype=torch.float64, device=maps.device) + 0.5
    dy2 = (ys[None, None, :] - points[..., 1:2]) ** 2  # (N, P, H)
    dx2 = (xs[None, None, :] - points[..., 0:1]) ** 2  # (N, P, W)
    total = maps.flatten(1).sum(1)
    held = torch.empty(count, num_parts, dtype=torch.float64, device=maps.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, num_parts * height * width))  # bounds the (n, P, H, W) discs
    for start in range(0, count, chunk):
        part = slice(start, start + chunk)
        inside = (dy2[part, :, :, None] + dx2[part, :, None, :]) <= radius**2  # (n, P, H, W)
        held[part] = torch.einsum("nphw,nhw->np", inside.double(), maps[part])
    mass = torch.where(visible & (total[:, None] > 0), held / total.clamp_min(1e-300)[:, None],
                       torch.zeros_like(held))
    best = mass.max(1)
    most = torch.where(best.values > 0, best.indices, torch.full_like(best.indices, num_parts))
    return {"peak": peak_part, "most_mass": most, "mass": mass}


def _fractions(assigned: Tensor, names: Sequence[str]) -> dict[str, float]:
    counts = torch.bincount(assigned.cpu(), minlength=len(names)).double()
    return {name: float(c) for name, c in zip(names, counts / counts.sum())}


def _consistency(fractions: Mapping[str, float]) -> dict[str, float]:
    p = torch.tensor(list(fractions.values()), dtype=torch.float64)
    entropy = float(-(p * torch.log(p.clamp_min(1e-300))).sum())
    return {"max_fraction": float(p.max()), "one_minus_normalised_entropy": 1.0 - entropy / math.log(len(p))}


def part_table(
    level_heats: Mapping[str, Tensor],
    parts: Tensor,
    part_visible: Tensor | None,
    part_names: Sequence[str],
    *,
    radius: float,
) -> dict:
    """Level x part table over a data set: where each level's peak and mass go.

    Args:
        level_heats: ``{level or method name: (N, H, W) maps at image resolution}``.
        parts: ``(N, P, 2)`` keypoints ``(x, y)``; ``part_visible`` bool ``(N, P)`` or None.
        part_names: ``P`` names, e.g. ``("head", "tail")``.
        radius: disc radius in pixels (see the module docstring); a few pixels at 32 px.

    Returns:
        ``{"parts": [*part_names, "none"], "radius": r, "num_images": N, "levels": {name:
        {"peak": {part: fraction}, "mass": {part: fraction}, "mean_mass_within_radius":
        {part: mean share}, "consistency": {"peak": {...}, "mass": {...}}}}}``; fractions of
        each assignment sum to 1 over the parts and "none".
    """
    names = [str(n) for n in part_names]
    points = torch.as_tensor(parts)
    if points.dim() != 3 or points.shape[1] != len(names):
        raise ValueError(f"part_names must name the {points.shape[1] if points.dim() == 3 else '?'} "
                         f"parts of parts {tuple(points.shape)}, got {names}.")
    if not level_heats:
        raise ValueError("level_heats is empty; pass {level name: (N, H, W) maps}.")
    columns = [*names, "none"]
    levels = {}
    for level, heat in level_heats.items():
        assigned = part_assignments(heat, points, part_visible, radius=radius)
        peak = _fractions(assigned["peak"], columns)
        mass = _fractions(assigned["most_mass"], columns)
        levels[level] = {
            "peak": peak,
            "mass": mass,
            "mean_mass_within_radius": {n: float(v) for n, v in zip(names, assigned["mass"].mean(0))},
            "consistency": {"peak": _consistency(peak), "mass": _consistency(mass)},
        }
    return {"parts": columns, "radius": float(radius), "num_images": int(points.shape[0]), "levels": levels}


def plot_part_table(table: dict, *, assignment: str = "peak", cmap: str = "viridis") -> Figure:
    """A heat-map table (levels x parts, fractions annotated) of :func:`part_table`'s result.

    Returns a new :class:`matplotlib.figure.Figure` (no pyplot state); save it with
    :func:`ltpa.attention.save_figure`.
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}.")
    rows = list(table["levels"])
    columns = table["parts"]
    values = np.array([[table["levels"][r][assignment][c] for c in columns] for r in rows])
    figure = Figure(figsize=(1.2 + 1.1 * len(columns), 0.9 + 0.5 * len(rows)), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(columns)):
            ax.text(j, i, f"{values[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] < 0.6 else "black")
    ax.set_title(f"{assignment} on part (r = {table['radius']:g} px, {table['num_images']} images)", fontsize=9)
    figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    return figure
