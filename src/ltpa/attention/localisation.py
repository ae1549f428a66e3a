"""Does attention land on the object? Pointing games on image-resolution maps, and baselines.

Coordinates follow the ltpa convention: pixel ``i`` spans ``[i, i + 1)`` with centre
``i + 0.5``; boxes are ``(x0, y0, x1, y1)`` floats in the same continuous coordinates (x =
column, y = row); masks are bool ``(H, W)``. Maps are at image resolution, e.g.
``AttentionMaps.upsampled``. Inputs may be tensors or numpy arrays and are never modified;
results are tensors on the heat map's device.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ltpa.attention.maps import _check_image_size
from ltpa.attention.peaks import peak_pixels

__all__ = [
    "box_to_mask",
    "centre_prior",
    "energy_pointing_game",
    "pointing_game",
    "random_map",
]


def box_to_mask(box: Tensor | np.ndarray | Sequence[float], image_size: Sequence[int]) -> Tensor:
    """Rasterise boxes: a pixel belongs to a box when its centre lies inside it.

    Pixel ``(y, x)`` is inside ``(x0, y0, x1, y1)`` when ``x0 <= x + 0.5 < x1`` and
    ``y0 <= y + 0.5 < y1`` (half-open like the pixels themselves), so the box ``(2, 3, 5, 4)``
    covers columns 2-4 of row 3. Parts of a box outside the image are ignored.

    Args:
        box: ``(4,)`` or ``(B, 4)`` finite ``(x0, y0, x1, y1)`` with ``x0 <= x1`` and ``y0 <= y1``.
        image_size: ``(H, W)`` in pixels.

    Returns:
        Bool tensor ``(H, W)`` for one box or ``(B, H, W)`` for a batch, on the box's device
        (CPU for arrays and sequences).

    Raises:
        ValueError: wrong shape, non-finite or inverted boxes, bad ``image_size``.
    """
    height, width = _check_image_size(image_size)
    boxes = torch.as_tensor(box, dtype=torch.float64)
    if boxes.shape[-1:] != (4,) or boxes.dim() not in (1, 2):
        raise ValueError(
            f"box must have shape (4,) or (B, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}."
        )
    if not torch.isfinite(boxes).all():
        raise ValueError("box contains NaN or infinite coordinates.")
    if (boxes[..., 2] < boxes[..., 0]).any() or (boxes[..., 3] < boxes[..., 1]).any():
        raise ValueError(
            f"boxes need x0 <= x1 and y0 <= y1 (order (x0, y0, x1, y1)), got {boxes.tolist()}."
        )
    batched = boxes.view(-1, 4)
    xs = torch.arange(width, dtype=torch.float64, device=boxes.device) + 0.5
    ys = torch.arange(height, dtype=torch.float64, device=boxes.device) + 0.5
    inside_x = (xs >= batched[:, 0:1]) & (xs < batched[:, 2:3])  # (B, W)
    inside_y = (ys >= batched[:, 1:2]) & (ys < batched[:, 3:4])  # (B, H)
    masks = inside_y[:, :, None] & inside_x[:, None, :]  # (B, H, W)
    return masks[0] if boxes.dim() == 1 else masks


def _as_heat(heat: Tensor | np.ndarray) -> Tensor:
    """``heat`` as a float ``(B, H, W)`` tensor (a view where possible; never written to)."""
    maps = torch.as_tensor(heat)
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3 or maps.numel() == 0:
        raise ValueError(
            f"heat must be a non-empty (B, H, W) or (B, 1, H, W) batch, got {tuple(maps.shape)}; "
            "add the batch axis with heat[None] for a single map."
        )
    if maps.dtype == torch.bool or maps.is_complex():
        raise TypeError(f"heat must hold real numbers, got {maps.dtype}.")
    if not maps.is_floating_point():
        maps = maps.double()
    if not torch.isfinite(maps).all():
        raise ValueError("heat contains NaN or infinite values; check the model's maps.")
    return maps


def _region(heat: Tensor, box: object, mask: object) -> Tensor:
    """The ground-truth region as a bool ``(B, H, W)`` tensor on ``heat``'s device."""
    if (box is None) == (mask is None):
        raise ValueError("give exactly one of box=(x0, y0, x1, y1) boxes or mask=bool masks.")
    batch, height, width = heat.shape
    if box is not None:
        region = box_to_mask(box, (height, width))
    else:
        region = torch.as_tensor(mask)
        if region.dtype != torch.bool:
            raise TypeError(
                f"mask must be bool, got {region.dtype}; build it with `mask > 0` or box_to_mask."
            )
        if region.dim() == 4 and region.shape[1] == 1:
            region = region[:, 0]
    if region.shape[-2:] != (height, width) or region.dim() not in (2, 3):
        raise ValueError(
            f"mask must be (H, W) or (B, H, W) with (H, W) = {(height, width)} like heat, "
            f"got {tuple(region.shape)}."
        )
    if region.dim() == 3 and region.shape[0] not in (1, batch):
        raise ValueError(
            f"got {region.shape[0]} boxes or masks for {batch} maps; give one per map or one "
            "for all."
        )
    region = region.to(heat.device).expand(batch, height, width)
    empty = ~region.flatten(1).any(1)
    if empty.any():
        warnings.warn(
            f"{int(empty.sum())} ground-truth region(s) contain no pixel centre and score as "
            "misses; check that masks are not empty and boxes (x0, y0, x1, y1) are in input "
            "pixels of the map's resolution.",
            stacklevel=3,
        )
    return region


def pointing_game(
    heat: Tensor | np.ndarray,
    box: Tensor | np.ndarray | Sequence[float] | None = None,
    mask: Tensor | np.ndarray | None = None,
    tolerance: float = 0,
) -> Tensor:
    """Pointing game (Zhang et al., Excitation Backprop, 2016): is the map's peak on the object?

    The peak is the maximum; where several pixels tie (a feature-resolution cell upsampled to
    a plateau, or a constant map), it is the tied pixel nearest to the centroid of the ties
    (:func:`~ltpa.attention.peaks.peak_pixels`, the rule the part table uses too), so ties do
    not drift to the top-left (a constant map points at the image centre). A hit is scored
    when some pixel of the region lies within Euclidean distance ``tolerance`` (measured
    between pixel centres) of the peak, i.e. the region dilated by a disc of radius
    ``tolerance``. The original protocol uses 15 px on ImageNet-sized (~224 px) inputs; scale
    it with the image, e.g. ~2 px at 32x32.

    Args:
        heat: ``(B, H, W)`` or ``(B, 1, H, W)`` finite maps at image resolution.
        box: ``(4,)`` (one for all maps) or ``(B, 4)`` boxes ``(x0, y0, x1, y1)``; rasterised
            with :func:`box_to_mask`. Give either ``box`` or ``mask``.
        mask: bool ``(H, W)`` or ``(B, H, W)`` regions (e.g. a union of several boxes).
        tolerance: dilation radius in pixels, ``>= 0``.

    Returns:
        Bool tensor ``(B,)``: ``True`` where the peak hits the (dilated) region. A region with no
        pixels is a miss (with a warning).

    Raises:
        ValueError: shapes, non-finite values, a negative tolerance, or not exactly one of
            ``box``/``mask``.
        TypeError: a non-bool mask.
    """
    if not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}.")
    maps = _as_heat(heat)
    region = _region(maps, box, mask)
    batch, height, width = maps.shape
    rows, columns = peak_pixels(maps)
    if tolerance == 0:
        return region[torch.arange(batch, device=maps.device), rows, columns]
    ys = torch.arange(height, device=maps.device)
    xs = torch.arange(width, device=maps.device)
    distance2 = (ys[None, :, None] - rows[:, None, None]) ** 2 + (
        xs[None, None, :] - columns[:, None, None]
    ) ** 2  # (B, H, W), integer squared pixel-centre distances
    return (region & (distance2 <= tolerance**2)).flatten(1).any(1)


def energy_pointing_game(
    heat: Tensor | np.ndarray,
    box: Tensor | np.ndarray | Sequence[float] | None = None,
    mask: Tensor | np.ndarray | None = None,
) -> Tensor:
    """Energy-based pointing game (Wang et al., Score-CAM, 2020): map mass inside the region.

    ``sum(heat * region) / sum(heat)`` per map, on the raw non-negative values (no min-max
    rescaling, so a uniform map scores the region's area fraction).

    Args:
        heat: ``(B, H, W)`` or ``(B, 1, H, W)`` non-negative finite maps at image resolution
            (softmax and sigmoid maps are; rectify signed maps first, e.g. ``heat.clamp(min=0)``).
        box: ``(4,)`` or ``(B, 4)`` boxes, see :func:`pointing_game`.
        mask: bool ``(H, W)`` or ``(B, H, W)`` regions.

    Returns:
        float64 tensor ``(B,)`` in [0, 1]; ``NaN`` (with a warning) for an all-zero map, whose
        energy is undefined, so that averages can skip it with ``nanmean``.

    Raises:
        ValueError: shapes, negative or non-finite values, or not exactly one of ``box``/``mask``.
        TypeError: a non-bool mask.
    """
    maps = _as_heat(heat)
    if (maps < 0).any():
        raise ValueError(
            f"heat must be non-negative for the energy game, got min {float(maps.min()):.3g}; "
            "rectify signed maps first with heat.clamp(min=0)."
        )
    region = _region(maps, box, mask)
    values = maps.double()
    total = values.flatten(1).sum(1)
    inside = (values * region).flatten(1).sum(1)
    zero = total == 0
    if zero.any():
        warnings.warn(
            f"{int(zero.sum())} map(s) are all zero; their energy is NaN.", stacklevel=2
        )
    return torch.where(zero, torch.full_like(total, float("nan")), inside / total.clamp(min=1e-300))


def random_map(
    image_size: Sequence[int], generator: torch.Generator, *, batch_size: int = 1
) -> Tensor:
    """Chance baseline: i.i.d. uniform values, so the peak falls on a uniformly random pixel.

    Args:
        image_size: ``(H, W)`` in pixels.
        generator: a CPU :class:`torch.Generator`, seeded by the caller for reproducibility.
        batch_size: number of independent maps, ``>= 1``.

    Returns:
        float32 CPU tensor ``(batch_size, H, W)`` with values in [0, 1).
    """
    height, width = _check_image_size(image_size)
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator, got {type(generator).__name__}; "
            "use torch.Generator().manual_seed(0)."
        )
    _check_batch_size(batch_size)
    return torch.rand((batch_size, height, width), generator=generator)


def centre_prior(
    image_size: Sequence[int], *, sigma_fraction: float = 0.25, batch_size: int = 1
) -> Tensor:
    """Centre-bias baseline: an isotropic Gaussian centred on the image.

    The centre is ``(W / 2, H / 2)`` in continuous coordinates and the standard deviation is
    ``sigma_fraction * min(H, W)`` pixels; values are taken at pixel centres and scaled to sum
    to 1 per map. For even sizes the four central pixels tie; their centroid is the corner they
    share, so the pointing game's tie rule (:mod:`ltpa.attention.peaks`) picks the first of
    them in row-major order, ``(H / 2 - 1, W / 2 - 1)``.

    Args:
        image_size: ``(H, W)`` in pixels.
        sigma_fraction: standard deviation as a fraction of the shorter side, ``> 0``.
        batch_size: number of (identical) maps, ``>= 1``.

    Returns:
        float32 CPU tensor ``(batch_size, H, W)``, positive, each map summing to 1.
    """
    height, width = _check_image_size(image_size)
    if not isinstance(sigma_fraction, (int, float)) or not 0 < sigma_fraction < math.inf:
        raise ValueError(f"sigma_fraction must be a finite number > 0, got {sigma_fraction!r}.")
    _check_batch_size(batch_size)
    sigma = sigma_fraction * min(height, width)
    ys = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    xs = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    gaussian = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
    gaussian = (gaussian / gaussian.sum()).float()
    return gaussian.expand(batch_size, height, width).clone()


def _check_batch_size(batch_size: object) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
