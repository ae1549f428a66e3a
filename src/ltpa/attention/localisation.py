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
from scipy import ndimage
from torch import Tensor

from ltpa.attention._inputs import check_heat
from ltpa.attention.maps import _check_image_size
from ltpa.attention.peaks import peak_pixels

__all__ = [
    "ENERGY_NORMALISATIONS",
    "POINTING_OUTCOMES",
    "POINTING_TIES",
    "box_to_mask",
    "centre_prior",
    "energy_pointing_game",
    "minmax",
    "pointing_game",
    "pointing_outcomes",
    "random_map",
    "zhang_tolerance",
]


def box_to_mask(box: Tensor | np.ndarray | Sequence[float], image_size: Sequence[int]) -> Tensor:
    """Rasterise boxes: a pixel belongs to a box when its centre lies inside it.

    Pixel ``(y, x)`` is inside ``(x0, y0, x1, y1)`` when ``x0 <= x + 0.5 < x1`` and
    ``y0 <= y + 0.5 < y1`` (half-open like the pixels themselves), so the box ``(2, 3, 5, 4)``
    covers columns 2-4 of row 3. Parts of a box outside the image are ignored.

    Several objects per image: ``(B, K, 4)`` boxes give each image the union of its ``K`` boxes;
    pad images with fewer objects with zero-size boxes such as ``(0, 0, 0, 0)``, which cover no
    pixel.

    Args:
        box: ``(4,)``, ``(B, 4)`` or ``(B, K, 4)`` finite ``(x0, y0, x1, y1)`` with ``x0 <= x1``
            and ``y0 <= y1``.
        image_size: ``(H, W)`` in pixels.

    Returns:
        Bool tensor ``(H, W)`` for one box or ``(B, H, W)`` for a batch (the union of each
        image's boxes), on the box's device (CPU for arrays and sequences).

    Raises:
        ValueError: wrong shape, non-finite or inverted boxes, bad ``image_size``.
    """
    height, width = _check_image_size(image_size)
    boxes = torch.as_tensor(box, dtype=torch.float64)
    if boxes.shape[-1:] != (4,) or boxes.dim() not in (1, 2, 3):
        raise ValueError(
            f"box must have shape (4,), (B, 4) or (B, K, 4) as (x0, y0, x1, y1), got "
            f"{tuple(boxes.shape)}."
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
    masks = inside_y[:, :, None] & inside_x[:, None, :]  # (B*K, H, W)
    if boxes.dim() == 3:
        return masks.view(*boxes.shape[:2], height, width).any(1)
    return masks[0] if boxes.dim() == 1 else masks


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


POINTING_TIES = ("centroid", "any")

# Zhang et al. (ECCV 2016, Sec. 5.1; IJCV 2018): a hit within 15 pixels, on ~224 px inputs.
ZHANG_TOLERANCE_PX = 15.0
ZHANG_IMAGE_PX = 224.0


def zhang_tolerance(image_size: Sequence[int]) -> float:
    """The pointing-game tolerance of Zhang et al. (2018), 15 px at 224 px, scaled to the image:
    ``15 * min(H, W) / 224`` pixels (about 2.1 px at 32x32, 5.4 px at 80x80)."""
    height, width = _check_image_size(image_size)
    return ZHANG_TOLERANCE_PX * min(height, width) / ZHANG_IMAGE_PX


def pointing_game(
    heat: Tensor | np.ndarray,
    box: Tensor | np.ndarray | Sequence[float] | None = None,
    mask: Tensor | np.ndarray | None = None,
    tolerance: float = 0,
    *,
    ties: str = "centroid",
) -> Tensor:
    """Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV
    2016, Sec. 5.1; IJCV 2018): is the map's peak on the object?

    Where the maximum is attained by several pixels (a cell placed as a plateau, a constant
    map), ``ties`` decides:

    * ``"centroid"`` (ltpa's rule, the default): one peak, the tied pixel nearest to the
      centroid of the ties (:func:`~ltpa.attention.peaks.peak_pixels`, the rule the part table
      uses too), so ties do not drift to the top-left (a constant map points at the image
      centre);
    * ``"any"`` (Quantus' ``PointingGame``): a hit when *any* tied maximum hits. A constant map
      then hits every non-empty region, so this rule flatters flat maps.

    A peak hits when some pixel of the region lies within Euclidean distance ``tolerance`` of
    it (between pixel centres), i.e. the region dilated by a disc of radius ``tolerance``. The
    original protocol uses 15 px on ~224 px images: :func:`zhang_tolerance` scales it to the
    image. Several objects: pass ``(B, K, 4)`` boxes or a mask holding their union; a peak on
    any of them is a hit.

    Args:
        heat: ``(B, H, W)`` or ``(B, 1, H, W)`` finite maps at image resolution.
        box: ``(4,)`` (one for all maps), ``(B, 4)`` or ``(B, K, 4)`` boxes ``(x0, y0, x1, y1)``,
            rasterised with :func:`box_to_mask`. Give either ``box`` or ``mask``.
        mask: bool ``(H, W)`` or ``(B, H, W)`` regions.
        tolerance: dilation radius in pixels, ``>= 0``.
        ties: ``"centroid"`` or ``"any"``, see above.

    Returns:
        Bool tensor ``(B,)``: ``True`` where the peak hits the (dilated) region. A region with no
        pixels is a miss (with a warning); Quantus scores it as a hit (its NaN marker turns into
        ``True`` in a bool array), a difference pinned by ``tests/attention/test_quantus.py``.

    Raises:
        ValueError: shapes, non-finite values, a negative tolerance, an unknown ``ties``, or not
            exactly one of ``box``/``mask``.
        TypeError: a non-bool mask.
    """
    if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
            or not math.isfinite(tolerance) or tolerance < 0):
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}.")
    if ties not in POINTING_TIES:
        raise ValueError(f"ties must be one of {POINTING_TIES}, got {ties!r}.")
    maps = check_heat(heat)
    region = _region(maps, box, mask)
    batch, height, width = maps.shape
    if ties == "centroid":
        rows, columns = peak_pixels(maps)
        candidates = torch.zeros_like(region)
        candidates[torch.arange(batch, device=maps.device), rows, columns] = True
    else:
        flat = maps.reshape(batch, -1)
        candidates = (flat == flat.max(1, keepdim=True).values).view(batch, height, width)
    if tolerance == 0:
        return (candidates & region).flatten(1).any(1)
    near = torch.stack([torch.from_numpy(_within(r, tolerance)) for r in region.cpu().numpy()])
    return (candidates & near.to(region.device)).flatten(1).any(1)


def _within(region: np.ndarray, tolerance: float) -> np.ndarray:
    """Bool ``(H, W)``: pixels whose centre lies within ``tolerance`` of a pixel of ``region``."""
    if not region.any():
        return region.copy()
    # Exact nearest region pixel of every pixel; squared distances are whole numbers, compared
    # exactly with tolerance**2.
    nearest = ndimage.distance_transform_edt(~region, return_distances=False, return_indices=True)
    ys, xs = np.indices(region.shape)
    distance2 = (ys - nearest[0]) ** 2 + (xs - nearest[1]) ** 2
    return distance2 <= tolerance**2


POINTING_OUTCOMES = ("hit", "near_object", "near_other", "border", "elsewhere")


def pointing_outcomes(
    heat: Tensor | np.ndarray,
    mask: Tensor | np.ndarray,
    *,
    near: float,
    others: Tensor | np.ndarray | None = None,
    border: int = 1,
) -> dict[str, Tensor]:
    """Where each map's peak lands: on the object, or, for a miss, why it missed.

    The pointing game says how often the peak misses, not where it goes; a coarse map whose
    peak sits on the object's edge and a map drawn to a distractor both score 0. Each peak
    (ltpa's tie rule, as :func:`pointing_game` with ``ties="centroid"``) falls in exactly one
    outcome, checked in this order:

    * ``hit``: on a pixel of ``mask`` (the pointing game without tolerance);
    * ``near_object``: within ``near`` px of the object (e.g. :func:`zhang_tolerance`, where
      the published pointing game still counts a hit);
    * ``near_other``: within ``near`` px of a pixel of ``others`` (distractors, other objects);
    * ``border``: in the outermost ``border`` rows or columns of the image (padding artefacts);
    * ``elsewhere``: none of these.

    Args:
        heat: ``(B, H, W)`` or ``(B, 1, H, W)`` finite maps at image resolution.
        mask: bool ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` object regions.
        near: distance in pixels between pixel centres, ``>= 0``.
        others: optional bool regions of other objects, shaped like ``mask`` (the
            synthetic set's ``distractor_masks``); without them ``near_other`` is all False.
        border: width in pixels of the image border, ``>= 0``.

    Returns:
        ``{outcome: bool (B,)}`` in :data:`POINTING_OUTCOMES` order; exactly one is True per map.

    Raises:
        ValueError: as :func:`pointing_game`, a negative ``near`` or ``border``, or ``others``
            that are not bool ``(H, W)``/``(B, H, W)``/``(B, 1, H, W)`` regions.
        TypeError: a non-bool ``mask``.
    """
    if (isinstance(near, bool) or not isinstance(near, (int, float)) or not math.isfinite(near)
            or near < 0):
        raise ValueError(f"near must be a finite number of pixels >= 0, got {near!r}.")
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise ValueError(f"border must be a whole number of pixels >= 0, got {border!r}.")
    maps = check_heat(heat)
    batch, height, width = maps.shape
    region = _region(maps, None, mask)
    rows, columns = peak_pixels(maps)
    index = torch.arange(batch, device=maps.device)

    def near_region(regions: Tensor) -> Tensor:
        dilated = np.stack([_within(r, near) for r in regions.cpu().numpy()])
        return torch.from_numpy(dilated).to(maps.device)[index, rows, columns]

    hit = region[index, rows, columns]
    near_object = ~hit & near_region(region)
    if others is None:
        near_other = torch.zeros_like(hit)
    else:
        other = torch.as_tensor(others)
        if other.dim() == 4 and other.shape[1] == 1:  # (B, 1, H, W), as mask accepts
            other = other[:, 0]
        if (other.dtype != torch.bool or other.dim() not in (2, 3) or other.shape[-2:] != (height, width)
                or (other.dim() == 3 and other.shape[0] not in (1, batch))):
            raise ValueError(f"others must be bool (H, W), (B, H, W) or (B, 1, H, W) regions with (B, H, W) = "
                             f"{(batch, height, width)}, got {other.dtype} {tuple(other.shape)}; "
                             "empty regions are fine.")
        other = other.to(maps.device).expand(batch, height, width)
        near_other = ~hit & ~near_object & near_region(other)
    on_border = ((rows < border) | (rows >= height - border) | (columns < border) | (columns >= width - border))
    border_miss = ~hit & ~near_object & ~near_other & on_border
    elsewhere = ~(hit | near_object | near_other | border_miss)
    return {"hit": hit, "near_object": near_object, "near_other": near_other, "border": border_miss,
            "elsewhere": elsewhere}


ENERGY_NORMALISATIONS = ("raw", "minmax")


def energy_pointing_game(
    heat: Tensor | np.ndarray,
    box: Tensor | np.ndarray | Sequence[float] | None = None,
    mask: Tensor | np.ndarray | None = None,
    *,
    normalise: str = "raw",
) -> Tensor:
    """Energy-based pointing game (Wang et al., Score-CAM, CVPR-W 2020, Sec. 4.3): the share of
    the map's energy inside the region, ``sum(L * region) / sum(L)`` per map.

    ``normalise`` says what ``L`` is:

    * ``"raw"`` (ltpa's default): the map itself, e.g. attention mass. A uniform map scores the
      region's area fraction, so the score reads as "mass on the object"; this is Quantus'
      ``RelevanceMassAccuracy`` (Arras et al. 2022) for non-negative maps.
    * ``"minmax"`` (Score-CAM's convention, the one published energies use): each map first
      stretched to [0, 1] by its own min and max. The minimum pixel then carries no energy, so
      the score rises for maps with a floor (e.g. a softmax map is never 0) and a constant map
      has no energy (NaN).

    Args:
        heat: ``(B, H, W)`` or ``(B, 1, H, W)`` non-negative finite maps at image resolution
            (softmax and sigmoid maps are; rectify signed maps first, e.g. ``heat.clamp(min=0)``).
        box: ``(4,)``, ``(B, 4)`` or ``(B, K, 4)`` boxes, see :func:`pointing_game`.
        mask: bool ``(H, W)`` or ``(B, H, W)`` regions.
        normalise: ``"raw"`` or ``"minmax"``.

    Returns:
        float64 tensor ``(B,)`` in [0, 1]; ``NaN`` (with a warning) for a map without energy
        (all zero, or constant under ``"minmax"``), so that averages can skip it with
        ``nanmean``. An empty region scores 0 (with a warning); Quantus gives NaN there.

    Raises:
        ValueError: shapes, negative or non-finite values, an unknown ``normalise``, or not
            exactly one of ``box``/``mask``.
        TypeError: a non-bool mask.
    """
    if normalise not in ENERGY_NORMALISATIONS:
        raise ValueError(f"normalise must be one of {ENERGY_NORMALISATIONS}, got {normalise!r}.")
    maps = check_heat(heat)
    if (maps < 0).any():
        raise ValueError(
            f"heat must be non-negative for the energy game, got min {float(maps.min()):.3g}; "
            "rectify signed maps first with heat.clamp(min=0)."
        )
    region = _region(maps, box, mask)
    values = maps.double()
    if normalise == "minmax":
        values = minmax(values)
    total = values.flatten(1).sum(1)
    inside = (values * region).flatten(1).sum(1)
    zero = total == 0
    if zero.any():
        what = "all zero" if normalise == "raw" else "constant (no energy after min-max)"
        warnings.warn(f"{int(zero.sum())} map(s) are {what}; their energy is NaN.", stacklevel=2)
    return torch.where(zero, torch.full_like(total, float("nan")), inside / total.clamp(min=1e-300))


def minmax(heat: Tensor) -> Tensor:
    """Each ``(H, W)`` map of ``(B, H, W)`` stretched to [0, 1] by its own min and max; a
    constant map becomes all zeros. A new float64 tensor."""
    values = check_heat(heat).double()
    low = values.flatten(1).min(1).values[:, None, None]
    high = values.flatten(1).max(1).values[:, None, None]
    span = high - low
    return torch.where(span > 0, (values - low) / span.clamp_min(1e-300), torch.zeros_like(values))


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
