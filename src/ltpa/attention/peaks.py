"""The peak of a map: one tie rule for every tool that asks where a map points.

The pointing game (:func:`~ltpa.attention.pointing_game`) and the part table
(:func:`~ltpa.attention.part_assignments`) both call :func:`peak_pixels`, so a map points at
the same pixel in both.

Rule, per map:

1. The candidates are the pixels whose value equals the map's maximum exactly. Plateaus are
   common: a cell placed with ``mode="nearest"``, the clamped border of a bilinear placement, a
   constant map. No tolerance is used, since any tolerance would be arbitrary.
2. Their centroid (mean row, mean column) is taken.
3. The peak is the candidate nearest to that centroid (Euclidean distance between pixel
   centres). The peak is therefore always a pixel where the map is maximal, also when the
   centroid is not a candidate: two separate maxima, or an L- or ring-shaped plateau, have a
   centroid where the map may be low, and pointing there would credit a place the map does not
   favour. Equidistant candidates (a 2x2 plateau, whose centroid is the corner the four pixels
   share) go to the first in row-major order: smallest row, then smallest column.

A plateau thus points at its middle rather than its top-left corner, as a first ``argmax``
would. A constant ``H x W`` map points at ``((H - 1) // 2, (W - 1) // 2)``, the image centre
rounded up and to the left.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ltpa.attention._inputs import check_heat

__all__ = ["peak_pixels"]


def peak_pixels(heat: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column of each map's peak, ties broken by the rule in the module docstring.

    Args:
        heat: ``(B, H, W)`` or ``(B, 1, H, W)`` finite maps (tensor or array); not modified.

    Returns:
        ``(rows, columns)``: int64 ``(B,)`` tensors on ``heat``'s device.

    Raises:
        ValueError: wrong shape, empty, or non-finite values.
    """
    maps = check_heat(heat)
    batch, height, width = maps.shape
    flat = maps.reshape(batch, -1)
    ties = flat == flat.max(dim=1, keepdim=True).values  # (B, H*W)
    ys = torch.arange(height, device=maps.device, dtype=torch.float64).repeat_interleave(width)
    xs = torch.arange(width, device=maps.device, dtype=torch.float64).repeat(height)
    count = ties.sum(1, keepdim=True).double()
    # Distances scaled by the tie count, count * (y - centroid_y) = count * y - sum(y): whole
    # numbers, exact in float64, so that equidistant candidates compare equal.
    dy = count * ys - (ties * ys).sum(1, keepdim=True)
    dx = count * xs - (ties * xs).sum(1, keepdim=True)
    distance = torch.where(ties, dy**2 + dx**2, math.inf)
    peak = distance.argmin(1)  # the first minimum: row-major order among equidistant candidates
    return peak // width, peak % width
