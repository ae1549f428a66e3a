"""How alike are two maps of the same image? The three similarities of the sanity checks
(Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3): Spearman rank
correlation, SSIM and top-k overlap, per image.

* **Spearman**: Pearson correlation of the pixels' ranks, ties sharing their average rank
  (:func:`scipy.stats.rankdata`); NaN when either map is constant (no ranking at all).
* **SSIM** (Wang et al., IEEE TIP 2004, eq. 13): each map min-max normalised to [0, 1] first
  (a constant map becomes 0), then the mean SSIM over every ``win x win`` window, with the
  defaults of scikit-image's ``structural_similarity``: a uniform 7x7 window (``win`` shrinks to
  the largest odd size that fits a smaller map), ``K1 = 0.01``, ``K2 = 0.03``, data range 1,
  sample (N - 1) covariances, windows reflected at the edges and the border of half a window
  left out of the mean. ltpa computes it itself (scikit-image is not a dependency);
  ``tests/attention/test_similarity.py`` checks it against scikit-image.
* **Top-k overlap**: the share of the first map's ``k`` highest pixels that are also among the
  second map's ``k`` highest, ``k = ceil(fraction * H * W)``; ties are ranked by a stable sort
  (row-major order), so two maps with the same order always overlap fully. Chance level is
  ``k / (H * W)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage, stats
from torch import Tensor

from ltpa.attention._inputs import check_heat
from ltpa.attention.localisation import minmax

__all__ = ["SIMILARITIES", "similarities", "spearman", "ssim", "topk_overlap"]

SIMILARITIES = ("spearman", "ssim", "topk_overlap")


def _pair(first: object, second: object) -> tuple[np.ndarray, np.ndarray]:
    a = check_heat(first, "first").double().cpu().numpy()
    b = check_heat(second, "second").double().cpu().numpy()
    if a.shape != b.shape:
        raise ValueError(f"the two map batches must have the same shape, got {a.shape} and {b.shape}.")
    return a, b


def spearman(first: Tensor, second: Tensor) -> np.ndarray:
    """Spearman rank correlation of each pair of ``(N, H, W)`` maps: float64 ``(N,)`` in
    [-1, 1], NaN where a map is constant."""
    a, b = _pair(first, second)
    ra = stats.rankdata(a.reshape(len(a), -1), axis=1)
    rb = stats.rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    norm = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (ra * rb).sum(1) / np.where(norm > 0, norm, 1.0), np.nan)


def ssim(first: Tensor, second: Tensor, *, win_size: int = 7) -> np.ndarray:
    """Mean SSIM of each pair of ``(N, H, W)`` maps after min-max normalisation (see the module
    docstring): float64 ``(N,)`` in [-1, 1]; 1 for identical maps."""
    a, b = _pair(first, second)
    a = minmax(torch.from_numpy(a)).numpy()
    b = minmax(torch.from_numpy(b)).numpy()
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd int >= 3, got {win_size!r}.")
    side = min(a.shape[1:])
    win = min(win_size, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"SSIM needs maps of at least 3x3 pixels, got {a.shape[1:]}.")
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    count = win * win
    cov_norm = count / (count - 1)
    pad = (win - 1) // 2
    out = np.empty(len(a))
    for n, (x, y) in enumerate(zip(a, b)):
        def local(values: np.ndarray) -> np.ndarray:
            return ndimage.uniform_filter(values, size=win)

        ux, uy = local(x), local(y)
        vx = cov_norm * (local(x * x) - ux * ux)
        vy = cov_norm * (local(y * y) - uy * uy)
        vxy = cov_norm * (local(x * y) - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        out[n] = s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean()
    return out


def topk_overlap(first: Tensor, second: Tensor, *, fraction: float = 0.1) -> np.ndarray:
    """Share of ``first``'s top ``ceil(fraction * H * W)`` pixels also in ``second``'s top
    (see the module docstring): float64 ``(N,)`` in [0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}.")
    a, b = _pair(first, second)
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    k = max(1, math.ceil(fraction * flat_a.shape[1]))
    top_a = np.argsort(-flat_a, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-flat_b, axis=1, kind="stable")[:, :k]
    return np.asarray([np.intersect1d(x, y).size / k for x, y in zip(top_a, top_b)], dtype=np.float64)


def similarities(first: Tensor, second: Tensor, *, topk_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """All three similarities of :data:`SIMILARITIES`, each float64 ``(N,)``."""
    return {"spearman": spearman(first, second), "ssim": ssim(first, second),
            "topk_overlap": topk_overlap(first, second, fraction=topk_fraction)}
