"""Localisation scores of attention maps over a data set, with centre and random baselines."""
from __future__ import annotations

import torch
from torch import Tensor

from .localisation import box_to_mask, centre_prior, energy_pointing_game, pointing_game, random_map
from .maps import AttentionMaps

__all__ = ["localisation_scores"]


def _scores(heat: Tensor, masks: Tensor, tolerance: float) -> dict[str, float]:
    return {
        "pointing": float(pointing_game(heat, mask=masks, tolerance=tolerance).float().mean()),
        "energy": float(energy_pointing_game(heat, mask=masks).nanmean()),
    }


def localisation_scores(
    maps: AttentionMaps,
    *,
    boxes: Tensor | None = None,
    masks: Tensor | None = None,
    tolerance: float = 0.0,
    seed: int = 0,
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

    Returns:
        ``{"num_images": N, "tolerance": t, "region": "mask"|"box", "levels": {name: {"pointing",
        "energy"}}, "baselines": {"centre": {...}, "random": {...}}}``; scores are fractions in [0, 1].

    Raises:
        ValueError: neither boxes nor masks, or a count that differs from the maps'.
    """
    if masks is None and boxes is None:
        raise ValueError("localisation_scores needs ground truth: pass boxes=(N, 4) or masks=(N, H, W)")
    count, _, height, width = maps.upsampled[0].shape
    region = "mask" if masks is not None else "box"
    if masks is None:
        masks = box_to_mask(boxes, (height, width))
    if masks.shape != (count, height, width):
        raise ValueError(f"ground truth has shape {tuple(masks.shape)} but the maps are {count} x {height} x {width}")
    levels = {level.name: _scores(upsampled, masks, tolerance)
              for level, upsampled in zip(maps.levels, maps.upsampled)}
    generator = torch.Generator().manual_seed(seed)
    baselines = {
        "centre": _scores(centre_prior((height, width), batch_size=count), masks, tolerance),
        "random": _scores(random_map((height, width), generator, batch_size=count), masks, tolerance),
    }
    return {"num_images": count, "tolerance": tolerance, "region": region, "levels": levels,
            "baselines": baselines}
