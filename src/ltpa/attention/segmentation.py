"""Weakly supervised segmentation: binarised maps against object masks, scored by Jaccard index.

The paper's protocol (Jetley et al. 2018, Sec. 5.2, Object Discovery): threshold each attention
map into a binary mask and compare it with the ground truth by the Jaccard index (IoU). A map is
binarised *relative to its own maximum*: pixel on where ``heat >= t * heat.max()``, so maps of
any scale (softmax mass, sigmoid, rectified CAM) are treated alike. Three ways to pick ``t``:

* ``fixed``: one threshold set in advance (default 0.5 of each map's max); honest.
* ``calibrated``: the grid threshold with the best mean Jaccard on a *calibration* split that
  shares no image with the scored one (the run's validation images, or a held-out part of the
  evaluation set), applied to the scored images. This is the honest way to pick ``t``
  (Choe et al., CVPR 2020, argue the same for WSOL thresholds).
* ``oracle``: the grid threshold with the best mean Jaccard on the scored images themselves. It
  is chosen on the data it scores, so it is optimistic: report it as an oracle, beside the
  calibrated figure. (``jaccard_best``/``best_threshold`` are the older names of
  ``jaccard_oracle``/``oracle_threshold``, kept as aliases.)
* ``per-image best`` (an upper bound, not a method): every image gets its own best threshold.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from ltpa.attention._inputs import check_heat

__all__ = ["DEFAULT_THRESHOLDS", "binarise", "jaccard", "jaccard_curve", "segmentation_scores"]

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05..0.95


def _check_threshold(t: float) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
        raise ValueError(f"thresholds are fractions of each map's max in (0, 1], got {t!r}.")
    return float(t)


def _check_masks(masks: object, heat: Tensor) -> Tensor:
    region = torch.as_tensor(masks)
    if region.dim() == 4 and region.shape[1] == 1:
        region = region[:, 0]
    if region.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {region.dtype}; build them with `masks > 0`.")
    if region.shape != heat.shape:
        raise ValueError(
            f"masks must match the maps' shape {tuple(heat.shape)} (N, H, W), got {tuple(region.shape)}; "
            "place maps on the image grid (AttentionMaps.upsampled) first."
        )
    empty = ~region.flatten(1).any(1)
    if empty.any():
        warnings.warn(f"{int(empty.sum())} mask(s) are empty; a map then scores 1 only if it is "
                      "empty too.", stacklevel=3)
    return region.to(heat.device)


def binarise(heat: Tensor, threshold: float) -> Tensor:
    """Bool ``(N, H, W)``: pixels at or above ``threshold`` times each map's own maximum.

    A map whose maximum is <= 0 (all zero) binarises to all False.
    """
    maps = check_heat(heat)
    threshold = _check_threshold(threshold)
    peak = maps.flatten(1).max(1).values[:, None, None]
    return (maps >= threshold * peak) & (peak > 0)


def jaccard(predicted: Tensor, masks: Tensor) -> Tensor:
    """Per-image Jaccard index ``|P & M| / |P | M|`` of bool ``(N, H, W)`` masks, float64 ``(N,)``.

    Two empty masks agree perfectly (1.0).
    """
    intersection = (predicted & masks).flatten(1).sum(1).double()
    union = (predicted | masks).flatten(1).sum(1).double()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def jaccard_curve(heat: Tensor, masks: Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Tensor:
    """Jaccard index of every map at every relative threshold.

    Args:
        heat: ``(N, H, W)`` or ``(N, 1, H, W)`` non-negative finite maps at image resolution.
        masks: bool ``(N, H, W)`` ground truth, same size.
        thresholds: fractions of each map's max, in (0, 1].

    Returns:
        float64 ``(N, T)``.
    """
    maps = check_heat(heat)
    region = _check_masks(masks, maps)
    if not len(thresholds):
        raise ValueError("thresholds is empty; pass e.g. DEFAULT_THRESHOLDS.")
    return torch.stack([jaccard(binarise(maps, t), region) for t in thresholds], 1)


def segmentation_scores(
    heat: Tensor,
    masks: Tensor,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    fixed_threshold: float = 0.5,
    calibration: tuple[Tensor, Tensor] | None = None,
) -> dict:
    """Mean Jaccard at a fixed threshold, at a threshold calibrated on a held-out split, at the
    oracle (best on the scored images) threshold, and the per-image-best upper bound (see the
    module docstring).

    Args:
        heat: ``(N, H, W)`` or ``(N, 1, H, W)`` non-negative maps at image resolution.
        masks: bool ``(N, H, W)`` object masks.
        thresholds: the grid searched for the calibrated and oracle thresholds.
        fixed_threshold: the threshold of ``jaccard_fixed``, a fraction of each map's max.
        calibration: ``(heat, masks)`` of images disjoint from the scored ones; the threshold
            with the best mean Jaccard there is applied to ``heat``. ``None`` leaves the
            calibrated entries out.

    Returns:
        ``{"jaccard_fixed", "fixed_threshold", "jaccard_oracle", "oracle_threshold",
        "jaccard_per_image_best_upper_bound", "thresholds", "jaccard_curve"}`` (floats and
        lists; the curve is the mean Jaccard at each grid threshold), the aliases
        ``jaccard_best``/``best_threshold`` of the oracle entries, and with ``calibration``
        ``"jaccard_calibrated"``, ``"calibrated_threshold"`` and ``"calibration_images"``.
    """
    maps = check_heat(heat)
    region = _check_masks(masks, maps)
    fixed = _check_threshold(fixed_threshold)
    grid = [_check_threshold(t) for t in thresholds]
    curve = jaccard_curve(maps, region, grid)  # (N, T)
    mean_curve = curve.mean(0)
    best = int(mean_curve.argmax())
    scores = {
        "jaccard_fixed": float(jaccard(binarise(maps, fixed), region).mean()),
        "fixed_threshold": fixed,
        "jaccard_oracle": float(mean_curve[best]),
        "oracle_threshold": grid[best],
        "jaccard_per_image_best_upper_bound": float(curve.max(1).values.mean()),
        "thresholds": grid,
        "jaccard_curve": [float(v) for v in mean_curve],
    }
    scores["jaccard_best"], scores["best_threshold"] = scores["jaccard_oracle"], scores["oracle_threshold"]
    if calibration is not None:
        held_heat, held_masks = calibration
        held = check_heat(held_heat, "calibration heat")
        held_curve = jaccard_curve(held, _check_masks(held_masks, held), grid).mean(0)
        chosen = int(held_curve.argmax())
        scores.update(jaccard_calibrated=float(mean_curve[chosen]), calibrated_threshold=grid[chosen],
                      calibration_images=int(held.shape[0]))
    return scores
