"""Weakly supervised object localisation scores (Choe et al., "Evaluating Weakly Supervised
Object Localization Methods Right", CVPR 2020, and the MaxBoxAccV2 update of their code,
``clovaai/wsolevaluation``): boxes from thresholded maps, MaxBoxAccV2, GT-known and top-1
localisation accuracy, and pixel average precision (PxAP).

Definitions, as ltpa computes them (maps at image resolution, e.g. ``AttentionMaps.upsampled``):

* **Score map**: each map min-max normalised to [0, 1] on its own (a constant map becomes 0).
* **Boxes at threshold** ``tau``: the mask ``{s >= tau}``; a box around *every contour* of it:
  each 8-connected component (its outer contour) and each hole in one (a 4-connected background
  region that does not reach the image edge; its contour runs along the foreground pixels next
  to it, so its box is the hole's box grown by one pixel). ``contours="largest"`` keeps only the
  largest component (the original MaxBoxAcc). Boxes are pixel sets: ``(x0, y0, x1, y1)`` with
  ``x1``/``y1`` one past the last pixel (ltpa's continuous coordinates).
* **IoU** of two boxes: the area of their intersection over the area of their union, in those
  coordinates. Several ground-truth boxes: the best match counts.
* **BoxAcc(tau, delta)**: the share of images whose best box has IoU >= delta with a ground-truth
  box. **MaxBoxAccV2** = mean over delta in {0.3, 0.5, 0.7} of max over tau of BoxAcc (all
  contours). The max over tau is the metric's own definition (it measures the maps whatever the
  threshold) and is taken on the scored images; ``calibrated_box_accuracy`` instead takes each
  tau from a disjoint calibration split, which is what a deployed method would do.
* **GT-known Loc** = BoxAcc(tau, 0.5) and **top-1 Loc** = the share of images that are both
  classified correctly and have IoU >= 0.5, at a tau chosen on a calibration split (or, labelled
  "oracle", on the scored images).
* **PxAP**: the area under the pixel precision-recall curve of all pixels of the split pooled,
  thresholds ``[0, interval, ..., 1 - interval]`` plus 1: ``sum_k P_k (R_k - R_(k-1))`` over the
  thresholds from high to low, skipping points with no positive prediction.

Differences from the reference code, all below its resolution of one pixel or 1/255: it
thresholds 8-bit maps with ``>`` (here float maps with ``>=``, as the paper writes), draws boxes
one pixel wider and taller with inclusive corners (here exact pixel sets), picks the largest
contour by polygon area (here by pixel count), and gives an empty mask the box ``[0, 0, 0, 0]``
(here no box, IoU 0). Contours come from :func:`scipy.ndimage.label`, not OpenCV:
``tests/attention/test_wsol.py`` checks that the boxes equal those of OpenCV's
``findContours(RETR_TREE)`` + ``boundingRect``. (OpenCV reaches ltpa only through
``grad-cam``; scipy is a direct dependency and labels components exactly.)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ltpa.attention._inputs import check_heat
from ltpa.attention.localisation import minmax

__all__ = [
    "CONTOURS",
    "IOU_THRESHOLDS",
    "box_iou",
    "boxes_from_mask",
    "best_box_iou",
    "box_accuracy_scores",
    "pixel_average_precision",
    "wsol_thresholds",
]

IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
CONTOURS = ("all", "largest")
_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = ndimage.generate_binary_structure(2, 1)


def wsol_thresholds(interval: float = 0.01) -> list[float]:
    """The score-map thresholds ``[0, interval, 2 * interval, ..., < 1]`` (the reference
    code's ``cam_curve_interval``, 0.01 by default)."""
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= 0.5:
        raise ValueError(f"interval must be a number in (0, 0.5], got {interval!r}; the reference uses 0.01.")
    count = math.ceil(1.0 / interval - 1e-9)
    return [round(i * interval, 10) for i in range(count)]


def boxes_from_mask(mask: np.ndarray, *, contours: str = "all") -> np.ndarray:
    """Boxes around the contours of a binary mask (see the module docstring).

    Args:
        mask: bool ``(H, W)``.
        contours: ``"all"`` (every component and every hole, MaxBoxAccV2) or ``"largest"``
            (the component with the most pixels, the original MaxBoxAcc).

    Returns:
        float64 ``(K, 4)`` boxes ``(x0, y0, x1, y1)``, outer contours first (in the order of
        their first pixel, row-major), then holes; ``(0, 4)`` for an empty mask.
    """
    if contours not in CONTOURS:
        raise ValueError(f"contours must be one of {CONTOURS}, got {contours!r}.")
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}.")
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return np.zeros((0, 4))
    slices = ndimage.find_objects(labels)
    boxes = [(sx.start, sy.start, sx.stop, sy.stop) for sy, sx in slices]
    if contours == "largest":
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        return np.asarray([boxes[int(np.argmax(sizes))]], dtype=np.float64)
    background, holes = ndimage.label(~mask, structure=_FOUR)
    height, width = mask.shape
    for sy, sx in ndimage.find_objects(background) if holes else ():
        if sy.start > 0 and sx.start > 0 and sy.stop < height and sx.stop < width:
            boxes.append((sx.start - 1, sy.start - 1, sx.stop + 1, sy.stop + 1))
    return np.asarray(boxes, dtype=np.float64)


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of every box in ``boxes`` ``(K, 4)`` with every box in ``others`` ``(M, 4)``
    (``(x0, y0, x1, y1)``, areas in continuous coordinates); ``(K, M)``, 0 where the union is
    empty."""
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(others, dtype=np.float64).reshape(-1, 4)[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _ground_truth_boxes(boxes: object, count: int) -> np.ndarray:
    gt = torch.as_tensor(boxes, dtype=torch.float64)
    if gt.dim() == 2:
        gt = gt[:, None]
    if gt.dim() != 3 or gt.shape[0] != count or gt.shape[2] != 4:
        raise ValueError(f"boxes must be (N, 4) or (N, K, 4) (x0, y0, x1, y1) for the {count} maps, "
                         f"got {tuple(gt.shape)}; pad missing objects with (0, 0, 0, 0).")
    if not torch.isfinite(gt).all():
        raise ValueError("boxes contain NaN or infinite coordinates.")
    return gt.numpy()


def best_box_iou(
    heat: Tensor, boxes: Tensor, thresholds: Sequence[float] | None = None, *, contours: str = "all"
) -> np.ndarray:
    """For every map and threshold, the best IoU between a box of the thresholded map and a
    ground-truth box.

    Args:
        heat: ``(N, H, W)`` or ``(N, 1, H, W)`` finite maps at image resolution (min-max
            normalised here, each on its own).
        boxes: ``(N, 4)`` or ``(N, K, 4)`` ground-truth boxes ``(x0, y0, x1, y1)`` in input
            pixels; zero-size boxes pad images with fewer objects.
        thresholds: score thresholds in [0, 1]; default :func:`wsol_thresholds`.
        contours: ``"all"`` or ``"largest"``, see :func:`boxes_from_mask`.

    Returns:
        float64 ``(N, T)``.
    """
    maps = minmax(check_heat(heat)).cpu().numpy()
    grid = wsol_thresholds() if thresholds is None else [float(t) for t in thresholds]
    if not grid or any(not 0 <= t <= 1 for t in grid):
        raise ValueError(f"thresholds must be a non-empty list of numbers in [0, 1], got {grid!r}.")
    gt = _ground_truth_boxes(boxes, maps.shape[0])
    ious = np.zeros((maps.shape[0], len(grid)))
    for n, score in enumerate(maps):
        previous, best = None, 0.0
        for t, tau in enumerate(grid):
            mask = score >= tau
            if previous is None or not np.array_equal(mask, previous):  # plateaus repeat masks
                found = boxes_from_mask(mask, contours=contours)
                best = float(box_iou(found, gt[n]).max()) if len(found) else 0.0
                previous = mask
            ious[n, t] = best
    return ious


def _accuracy(ious: np.ndarray, delta: float) -> np.ndarray:
    return (ious >= delta - 1e-12).mean(0)  # (T,); the tolerance absorbs rounding of exact ratios


def box_accuracy_scores(
    ious: np.ndarray,
    thresholds: Sequence[float],
    *,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    correct: Tensor | np.ndarray | None = None,
    calibration: np.ndarray | None = None,
) -> dict:
    """MaxBoxAccV2, per-delta accuracies, and GT-known / top-1 localisation from
    :func:`best_box_iou`'s ``(N, T)`` IoUs.

    Args:
        ious: ``(N, T)`` best IoUs of the scored images.
        thresholds: the ``T`` score thresholds the IoUs were computed at.
        iou_thresholds: the deltas (0.3, 0.5, 0.7 for MaxBoxAccV2).
        correct: bool ``(N,)``, whether each image is classified correctly; adds top-1 Loc.
        calibration: ``(M, T)`` IoUs of a calibration split disjoint from the scored images;
            each delta's threshold (and the GT-known/top-1 threshold, chosen at delta 0.5) is
            taken there. Without it only the oracle figures are reported.

    Returns:
        ``{"maxboxacc_v2", "box_accuracy": {delta: {"oracle", "oracle_threshold"[,
        "calibrated", "calibrated_threshold"]}}, "gt_known_oracle", "oracle_threshold",
        ["top1_loc_oracle"], ["boxacc_v2_calibrated", "gt_known_calibrated",
        "calibrated_threshold", "top1_loc_calibrated", "calibration_images"]}``; fractions in
        [0, 1].
    """
    ious = np.asarray(ious, dtype=np.float64)
    grid = [float(t) for t in thresholds]
    if ious.ndim != 2 or ious.shape[1] != len(grid):
        raise ValueError(f"ious must be (N, {len(grid)}) for the {len(grid)} thresholds, got {ious.shape}.")
    per_delta, result = {}, {}
    for delta in iou_thresholds:
        curve = _accuracy(ious, delta)
        best = int(np.argmax(curve))
        entry = {"oracle": float(curve[best]), "oracle_threshold": grid[best]}
        if calibration is not None:
            chosen = int(np.argmax(_accuracy(calibration, delta)))
            entry.update(calibrated=float(curve[chosen]), calibrated_threshold=grid[chosen])
        per_delta[f"{delta:g}"] = entry
    result["maxboxacc_v2"] = float(np.mean([e["oracle"] for e in per_delta.values()]))
    result["box_accuracy"] = per_delta
    hit = ious >= 0.5 - 1e-12  # (N, T)
    right = None if correct is None else np.asarray(torch.as_tensor(correct).cpu(), dtype=bool)[:, None]
    oracle = int(np.argmax(hit.mean(0)))
    result.update(gt_known_oracle=float(hit[:, oracle].mean()), oracle_threshold=grid[oracle])
    if right is not None:
        result["top1_loc_oracle"] = float((hit[:, oracle:oracle + 1] & right).mean())
    if calibration is not None:
        calibration = np.asarray(calibration, dtype=np.float64)
        chosen = int(np.argmax(_accuracy(calibration, 0.5)))
        result.update(
            boxacc_v2_calibrated=float(np.mean([e["calibrated"] for e in per_delta.values()])),
            gt_known_calibrated=float(hit[:, chosen].mean()), calibrated_threshold=grid[chosen],
            calibration_images=int(calibration.shape[0]))
        if right is not None:
            result["top1_loc_calibrated"] = float((hit[:, chosen:chosen + 1] & right).mean())
    return result


def pixel_average_precision(heat: Tensor, masks: Tensor, *, interval: float = 0.01) -> float:
    """PxAP: average precision of all pixels of the split pooled, scores min-max normalised per
    map (see the module docstring).

    Args:
        heat: ``(N, H, W)`` or ``(N, 1, H, W)`` finite maps at image resolution.
        masks: bool ``(N, H, W)`` object masks.
        interval: threshold spacing (0.01 in the reference protocol).

    Returns:
        PxAP in [0, 1] (the reference code reports it in percent); NaN when no mask has a pixel.
    """
    maps = minmax(check_heat(heat)).cpu().numpy()
    region = torch.as_tensor(masks)
    if region.dim() == 4 and region.shape[1] == 1:
        region = region[:, 0]
    if region.dtype != torch.bool or tuple(region.shape) != maps.shape:
        raise ValueError(f"masks must be bool {maps.shape} like the maps, got {region.dtype} {tuple(region.shape)}.")
    truth = region.cpu().numpy()
    positives = int(truth.sum())
    if positives == 0:
        return float("nan")
    edges = np.asarray([1.0, *reversed(wsol_thresholds(interval))])  # high to low
    # Pixels at or above each edge, by class: one sort instead of a pass per threshold.
    scores_pos = np.sort(maps[truth])
    scores_neg = np.sort(maps[~truth])
    tp = scores_pos.size - np.searchsorted(scores_pos, edges, side="left")
    fp = scores_neg.size - np.searchsorted(scores_neg, edges, side="left")
    predicted = tp + fp
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    recall = tp / positives
    gains = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(np.where(predicted > 0, precision * gains, 0.0)))
