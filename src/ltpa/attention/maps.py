"""Attention maps at feature resolution and placed exactly on the input pixel grid.

Geometry (the convention of :class:`ltpa.models.output.LevelInfo`): pixel ``i`` spans
``[i, i + 1)`` with centre ``i + 0.5``; map position ``j`` is centred at
``offset + j * stride`` input pixels, along x (columns) and y (rows) alike.

Placement moves *mass*, not values: each cell's value is spread over the pixels of its
footprint (see :func:`place_on_image`) with weights that sum to 1, so every cell counts fully,
none more than another, and a placed map sums to what the cell map sums to (1 for softmax
maps) whatever the level's stride or offset.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ltpa.models.output import AttentionOutput, LevelInfo

__all__ = ["AttentionMaps", "PLACE_MODES", "compute_maps", "place_on_image"]

PLACE_MODES = ("bilinear", "nearest")


@dataclass(frozen=True)
class AttentionMaps:
    """What :func:`compute_maps` returns: every level's map for a set of images, on the CPU.

    Attributes:
        maps: one ``(N, 1, h_l, w_l)`` float map per level at feature resolution, exactly as
            the model returned them (see ``normalisation``).
        upsampled: the same maps placed on the input pixel grid with :func:`place_on_image`
            (bilinear), one ``(N, 1, H, W)`` float map per level. Each map's mass is kept: it
            sums to what the cell map sums to (1 for softmax maps), and a pixel holds mass per
            pixel, about ``cell value / stride**2`` inside the map.
        levels: geometry of each level, in ``maps`` order.
        logits: ``(N, num_classes)``.
        predictions: ``(N,)`` int64, ``logits.argmax(1)``.
        normalisation: ``"softmax"``, ``"sigmoid"`` or ``"cam"``, copied from the model output.
    """

    maps: tuple[Tensor, ...]
    upsampled: tuple[Tensor, ...]
    levels: tuple[LevelInfo, ...]
    logits: Tensor
    predictions: Tensor
    normalisation: str


def _axis_coordinates(size_out: int, size_in: int, stride: float, offset: float) -> Tensor:
    """Continuous map index (float64) of each output pixel centre, clamped to the map's extent.

    Position ``u`` means "``u`` cells from the centre of cell 0"; clamping to ``[0, size_in - 1]``
    hands the pixels beyond the outermost cell centres to the outermost cells.
    """
    centres = torch.arange(size_out, dtype=torch.float64) + 0.5
    return ((centres - offset) / stride).clamp_(0.0, float(size_in - 1))


def _axis_weights(
    size_out: int, size_in: int, stride: float, offset: float, mode: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of the two neighbouring cells of each output pixel and the weight of the second.

    Returns:
        ``(lo, hi, t)``: int64 ``(size_out,)`` cell indices and float64 ``(size_out,)`` weights in
        [0, 1]; the pixel's interpolation weights are ``1 - t`` on cell ``lo`` and ``t`` on ``hi``.
    """
    u = _axis_coordinates(size_out, size_in, stride, offset)
    if mode == "nearest":
        # Cell j covers [c_j - s/2, c_j + s/2): a pixel centre on a boundary goes to the
        # higher cell, matching the half-open pixel convention.
        index = torch.floor(u + 0.5).clamp_(0, size_in - 1).long()
        return index, index, torch.zeros(size_out, dtype=torch.float64)
    lo = torch.floor(u).long().clamp_(0, size_in - 1)
    hi = (lo + 1).clamp_(max=size_in - 1)
    return lo, hi, u - lo.to(torch.float64)


@dataclass(frozen=True)
class _AxisPlacement:
    """How one axis of a map is placed on the pixels (see :func:`place_on_image`).

    Pixel ``x`` receives ``(1 - t[x]) * scale[lo[x]] * m[lo[x]] + t[x] * scale[hi[x]] * m[hi[x]]``;
    ``scale[j]`` is 1 over cell ``j``'s total interpolation weight on the image, so each cell's
    weights sum to 1. ``orphans`` are the cells that reach no pixel centre (total weight 0, scale
    0); each puts its whole mass on ``orphan_pixels``, the pixel under its centre.
    """

    lo: Tensor  # (size_out,) int64
    hi: Tensor  # (size_out,) int64
    t: Tensor  # (size_out,) float64 in [0, 1]
    scale: Tensor  # (size_in,) float64 > 0, 0 for orphans
    orphans: Tensor  # (k,) int64
    orphan_pixels: Tensor  # (k,) int64


def _axis_placement(
    size_out: int, size_in: int, stride: float, offset: float, mode: str
) -> _AxisPlacement:
    lo, hi, t = _axis_weights(size_out, size_in, stride, offset, mode)
    total = torch.zeros(size_in, dtype=torch.float64)
    total.index_add_(0, lo, 1 - t)
    total.index_add_(0, hi, t)
    reached = total > 0
    scale = torch.where(reached, 1.0 / torch.where(reached, total, 1.0), 0.0)
    orphans = torch.nonzero(~reached).flatten()
    centres = offset + orphans.to(torch.float64) * stride
    orphan_pixels = torch.floor(centres).clamp_(0, size_out - 1).long()
    return _AxisPlacement(lo, hi, t, scale, orphans, orphan_pixels)


def _place_axis(values: Tensor, dim: int, axis: _AxisPlacement, mode: str) -> Tensor:
    """Apply ``axis`` along dimension ``dim`` (-2 rows, -1 columns) of ``values``."""
    device, dtype = values.device, values.dtype
    view = [-1, 1] if dim == -2 else [-1]
    scaled = values * axis.scale.to(device=device, dtype=dtype).view(view)
    placed = scaled.index_select(dim, axis.lo.to(device))
    if mode == "bilinear":
        t = axis.t.to(device=device, dtype=dtype).view(view)
        placed = placed * (1 - t) + scaled.index_select(dim, axis.hi.to(device)) * t
    if axis.orphans.numel():
        orphans = values.index_select(dim, axis.orphans.to(device))
        placed.index_add_(dim, axis.orphan_pixels.to(device), orphans)
    return placed


def _check_image_size(image_size: object) -> tuple[int, int]:
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
            for s in image_size
        )
    ):
        raise ValueError(
            f"image_size must be a pair of positive ints (H, W), got {image_size!r}; "
            "pass e.g. tuple(images.shape[-2:])."
        )
    return int(image_size[0]), int(image_size[1])


def _check_level(level: object) -> tuple[float, float]:
    stride = getattr(level, "stride", None)
    offset = getattr(level, "offset", None)
    if stride is None or offset is None:
        raise TypeError(
            f"level must be a LevelInfo (with .stride and .offset), got {type(level).__name__}; "
            "take it from the model output's `levels`."
        )
    stride, offset = float(stride), float(offset)
    if not (math.isfinite(stride) and stride > 0 and math.isfinite(offset)):
        raise ValueError(
            f"level {getattr(level, 'name', level)!r} has stride={stride} and offset={offset}; "
            "stride must be a finite number > 0 and offset a finite number."
        )
    return stride, offset


def place_on_image(
    maps: Tensor, level: LevelInfo, image_size: Sequence[int], mode: str = "bilinear"
) -> Tensor:
    """Place feature-resolution maps on the input pixel grid with the level's geometry, keeping
    each cell's mass.

    Cell ``j`` is centred at ``c_j = offset + j * stride`` (x and y alike); pixel ``x`` has centre
    ``x + 0.5``, i.e. map coordinate ``u_x = (x + 0.5 - offset) / stride``, clamped to
    ``[0, n - 1]`` so that the pixels beyond the outermost centres belong to the outermost cells.
    This is not a stretch of the map over the image: a 15x15 map with stride 2 and offset 1 on a
    32x32 image has its centres on pixel centres 1..29 (the last cells also take pixels 30-31).

    Each cell spreads its value (its *mass*) over its **footprint** with weights summing to 1,
    separably along y and x:

    * ``"bilinear"``: the pixels whose clamped coordinate lies within one cell of it,
      ``|u_x - j| < 1``, i.e. pixel centres less than one stride from ``c_j`` plus, for the
      outermost cells, every pixel beyond their centre up to the image edge. Weights are the
      bilinear ones, ``1 - |u_x - j|``, divided by their sum over the image. Inside the map a
      pixel thus holds ``(interpolated cell value) / stride**2``.
    * ``"nearest"``: the pixels whose nearest centre is ``c_j`` (a pixel centre exactly half-way
      goes to the higher-index cell), all with the same weight.

    Edges: a footprint that extends past the image edge is clipped to the image and its weights
    renormalised, so the cell keeps its whole mass on fewer pixels, which then hold more mass
    each. ResNet-style levels (``offset = 0.5``) have cell 0 centred on pixel 0: at stride 4 it
    keeps 2.5 of its 4 pixel-weights per axis, while the last cell (centre 28.5 on 32 px)
    spreads over 5.5 (it also owns pixels 29-31). A *uniform* map thus puts 1.6x the inner
    mass per pixel on the top and left edges (2.56x in the corner, its peak) and 0.73x past the
    last centres. Nothing leaks outside the image and nothing is lost:
    ``placed.sum((-2, -1)) == maps.sum((-2, -1))`` up to rounding. A cell that reaches no pixel
    centre at all (``stride < 1``, or a cell more than a stride outside the image) puts its whole
    mass on the pixel under its centre, clamped into the image.

    Non-integer strides and offsets (timm backbones, sizes that are not a multiple of the
    stride) need no rounding: the weights come from the continuous coordinates above. With
    ``offset == stride / 2`` and an image of ``n * stride`` pixels (VGG levels at 32x32) every
    cell has the same footprint weight, ``stride`` per axis, so the result is the classic
    edge-clamped bilinear upsampling divided by ``stride**2``.

    Args:
        maps: ``(B, C, h, w)`` floating tensor, usually ``(B, 1, h, w)`` attention; any values
            (mass is moved linearly, so signed maps work too). Not modified.
        level: the :class:`LevelInfo` of these maps (``stride > 0`` in input pixels, ``offset``
            the continuous coordinate of cell 0's centre).
        image_size: ``(H, W)`` of the input image in pixels.
        mode: ``"bilinear"`` (smooth) or ``"nearest"`` (blocks), see above.

    Returns:
        ``(B, C, H, W)`` new tensor of the same dtype and device as ``maps``: mass per pixel.
        Each ``(b, c)`` map sums to the same total as ``maps[b, c]``; a softmax map still sums
        to 1.

    Raises:
        TypeError: ``maps`` is not a floating tensor, or ``level`` has no stride/offset.
        ValueError: wrong rank, empty map, bad ``image_size``, bad geometry or unknown ``mode``.
    """
    if not isinstance(maps, Tensor) or not maps.is_floating_point():
        got = maps.dtype if isinstance(maps, Tensor) else type(maps).__name__
        raise TypeError(
            f"maps must be a floating torch.Tensor of shape (B, C, h, w), got {got}; "
            "convert with torch.as_tensor(maps).float()."
        )
    if maps.dim() != 4 or maps.shape[-1] == 0 or maps.shape[-2] == 0:
        raise ValueError(
            f"maps must have shape (B, C, h, w) with h, w >= 1, got {tuple(maps.shape)}; "
            "add the channel axis with maps.unsqueeze(1) if needed."
        )
    if mode not in PLACE_MODES:
        raise ValueError(f"mode must be one of {PLACE_MODES}, got {mode!r}.")
    height, width = _check_image_size(image_size)
    stride, offset = _check_level(level)
    h, w = maps.shape[-2:]
    rows = _axis_placement(height, h, stride, offset, mode)
    columns = _axis_placement(width, w, stride, offset, mode)
    # Separable: rows first (B, C, H, w), then columns (B, C, H, W).
    return _place_axis(_place_axis(maps, -2, rows, mode), -1, columns, mode)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback


def compute_maps(model: nn.Module, images: Tensor, *, batch_size: int = 64) -> AttentionMaps:
    """Run ``model`` on ``images`` in eval mode and collect its attention maps on the CPU.

    The model runs under ``torch.no_grad`` on its own device (batches are copied there). Every
    submodule's train/eval flag is restored afterwards, also when ``forward`` raises; ``images``
    is never modified.

    Args:
        model: an ltpa model whose ``forward`` returns :class:`AttentionOutput` with maps.
        images: ``(N, 3, H, W)`` float tensor, normalised as the model expects, any device.
        batch_size: images per forward pass, ``>= 1``.

    Returns:
        :class:`AttentionMaps` with CPU tensors: ``maps`` ``(N, 1, h_l, w_l)`` and ``upsampled``
        ``(N, 1, H, W)`` per level, ``logits`` ``(N, K)`` and ``predictions`` ``(N,)``.

    Raises:
        TypeError: ``model`` does not return an :class:`AttentionOutput`, or bad argument types.
        ValueError: empty or wrongly shaped ``images``, bad ``batch_size``, or a model output
            without maps (a baseline without attention) or with levels changing between batches.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"images must be a non-empty (N, C, H, W) tensor, got {shape}; "
            "add the batch axis with images.unsqueeze(0) for a single image."
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")

    image_size = (int(images.shape[-2]), int(images.shape[-1]))
    device = _model_device(model, images.device)
    modes = [(module, module.training) for module in model.modules()]
    maps: list[list[Tensor]] = []
    logits: list[Tensor] = []
    levels: tuple[LevelInfo, ...] | None = None
    normalisation = ""
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                # A copy, so that a model working in place cannot reach the caller's images.
                batch = images[start : start + batch_size].to(device, copy=True)
                out = model(batch)
                _check_output(out, levels)
                if levels is None:
                    levels, normalisation = tuple(out.levels), out.normalisation
                    maps = [[] for _ in levels]
                for per_level, level_map in zip(maps, out.maps):
                    per_level.append(level_map.detach().to("cpu", copy=True))
                logits.append(out.logits.detach().to("cpu", copy=True))
    finally:
        for module, training in modes:
            module.training = training

    assert levels is not None  # at least one batch ran
    full = tuple(torch.cat(per_level) for per_level in maps)
    upsampled = tuple(
        place_on_image(level_map, level, image_size) for level_map, level in zip(full, levels)
    )
    all_logits = torch.cat(logits)
    return AttentionMaps(
        maps=full,
        upsampled=upsampled,
        levels=levels,
        logits=all_logits,
        predictions=all_logits.argmax(1),
        normalisation=normalisation,
    )


def _check_output(out: object, levels: tuple[LevelInfo, ...] | None) -> None:
    if not isinstance(out, AttentionOutput):
        raise TypeError(
            f"model returned {type(out).__name__}, expected ltpa.models.output.AttentionOutput; "
            "compute_maps works with ltpa models (see ltpa.create_model)."
        )
    if len(out.maps) == 0:
        raise ValueError(
            "the model returned no attention maps (normalisation="
            f"{out.normalisation!r}); it is a baseline without attention. Use a model with "
            "attention (e.g. vgg_att2/vgg_att3) or a CAM baseline for maps."
        )
    if len(out.maps) != len(out.levels):
        raise ValueError(
            f"the model returned {len(out.maps)} maps but {len(out.levels)} levels; "
            "every map needs its LevelInfo."
        )
    if levels is not None and tuple(out.levels) != levels:
        raise ValueError(f"the model's levels changed between batches: {levels} vs {out.levels}.")
