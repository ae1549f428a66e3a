"""Localisation scores of attention maps over a data set, with centre and random baselines."""
from __future__ import annotations

import torch
from torch import Tensor

from .localisation import (box_to_mask, centre_prior, energy_pointing_game, pointing_game, pointing_outcomes,
                           random_map)
from .maps import AttentionMaps

__all__ = ["localisation_scores"]


def _scores(heat: Tensor, masks: Tensor, tolerance: float, near: float | None = None,
            others: Tensor | None = None) -> dict:
    scores = {
        "pointing": float(pointing_game(heat, mask=masks, tolerance=tolerance).float().mean()),
        "energy": float(energy_pointing_game(heat, mask=masks).nanmean()),
    }
    if near is not None:
        outcomes = pointing_outcomes(heat, masks, near=near, others=others)
        # the pointing game within near px, without a second distance transform per image
        scores["pointing_near"] = float((outcomes["hit"] | outcomes["near_object"]).float().mean())
        scores["outcomes"] = {name: float(landed.float().mean()) for name, landed in outcomes.items()}
    return scores


def localisation_scores(
    maps: AttentionMaps,
    *,
    boxes: Tensor | None = None,
    masks: Tensor | None = None,
    tolerance: float = 0.0,
    seed: int = 0,
    near: float | None = None,
    others: Tensor | None = None,
) -> dict:
    """Pointing game and energy pointing game per level, against the object's box or mask.

    Baselines on the same images: ``centre`` (a Gaussian centre prior, the same map for every
    image) and ``random`` (uniform noise, seeded). A level's score well above both says the
    attention finds the object rather than the image centre.

    Args:
        maps: from :func:`~ltpa.attention.compute_maps`, ``upsampled`` maps ``(N, 1, H, W)``.
        boxes: ``(N, 4)`` object boxes ``(x0, y0, x1, y1)``; or give ``masks``.
        masks: bool ``(N, H, W)`` object masks; used instead of boxes when both are given.
        tolerance: pointing-game tolerance in pixels.
        seed: seed of the random baseline.
        near: also score each map's pointing game within ``near`` px (``"pointing_near"``, e.g.
            at :func:`~ltpa.attention.localisation.zhang_tolerance`) and say where its peaks
            land (``"outcomes"``: the share of images per
            :func:`~ltpa.attention.localisation.pointing_outcomes` outcome; they sum to 1).
        others: bool ``(N, H, W)`` regions of other objects (distractors) for the
            ``near_other`` outcome; only with ``near``.

    Returns:
        ``{"num_images": N, "tolerance": t, "region": "mask"|"box", "levels": {name: {"pointing",
        "energy"}}, "baselines": {"centre": {...}, "random": {...}}}``, with ``"near": near`` and
        each map's ``"pointing_near"`` and ``"outcomes"`` when ``near`` is given; scores are
        fractions in [0, 1].

    Raises:
        ValueError: neither boxes nor masks, or a count that differs from the maps', or
            ``others`` without ``near``.
    """
    if others is not None and near is None:
        raise ValueError("others (distractor regions) only count with near=<pixels>; pass near as well")
    if masks is None and boxes is None:
        raise ValueError("localisation_scores needs ground truth: pass boxes=(N, 4) or masks=(N, H, W)")
    count, _, height, width = maps.upsampled[0].shape
    region = "mask" if masks is not None else "box"
    if masks is None:
        masks = box_to_mask(boxes, (height, width))
    if masks.shape != (count, height, width):
        raise ValueError(f"ground truth has shape {tuple(masks.shape)} but the maps are {count} x {height} x {width}")
    levels = {level.name: _scores(upsampled, masks, tolerance, near, others)
              for level, upsampled in zip(maps.levels, maps.upsampled)}
    generator = torch.Generator().manual_seed(seed)
    baselines = {
        "centre": _scores(centre_prior((height, width), batch_size=count), masks, tolerance, near, others),
        "random": _scores(random_map((height, width), generator, batch_size=count), masks, tolerance, near, others),
    }
    scores = {"num_images": count, "tolerance": tolerance, "region": region, "levels": levels,
              "baselines": baselines}
    if near is not None:
        scores["near"] = near
    return scores
