"""Attention maps at feature resolution and placed exactly on the input pixel grid.

Geometry (the convention of :class:`ltpa.models.output.LevelInfo`): pixel ``i`` spans
``[i, i + 1)`` with centre ``i + 0.5``; map position ``j`` is centred at
``offset + j * stride`` input pixels, along x (columns) and y (rows) alike.
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
            (bilinear), one ``(N, 1, H, W)`` float map per level. Values are the map's own values
            interpolated between cell centres, not rescaled: a softmax map's pixels hold the mass of
            the cell they fall in, so they no longer sum to 1.
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
    repeats the edge value beyond the outermost cell centres.
    """
    centres = torch.arange(size_out, dtype=torch.float64) + 0.5
    return ((centres - offset) / stride).clamp_(0.0, float(size_in - 1))


def _axis_weights(
    size_out: int, size_in: int, stride: float, offset: float, mode: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of the two neighbouring cells of each output pixel and the weight of the second.

    Returns:
        ``(lo, hi, t)``: int64 ``(size_out,)`` cell indices and float64 ``(size_out,)`` weights in
        [0, 1]; the pixel's value is ``(1 - t) * map[lo] + t * map[hi]``.
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
    """Resample feature-resolution maps onto the input pixel grid using the level's geometry.

    The value at pixel ``(y, x)`` is the map evaluated at the pixel centre ``(x + 0.5, y + 0.5)``,
    where map position ``j`` sits at ``offset + j * stride``. This is not a stretch of the map
    over the image: a 15x15 map with stride 2 and offset 1 on a 32x32 image covers pixel centres
    1..29 and is clamped (edge value repeated) beyond its outermost cell centres.

    Args:
        maps: ``(B, C, h, w)`` floating tensor, usually ``(B, 1, h, w)`` attention; any values.
            Not modified.
        level: the :class:`LevelInfo` of these maps (``stride > 0`` in input pixels, ``offset``
            the continuous coordinate of cell 0's centre).
        image_size: ``(H, W)`` of the input image in pixels.
        mode: ``"bilinear"`` interpolates separably between the two nearest cell centres along x
            and y; ``"nearest"`` gives each pixel the value of the cell whose centre is nearest
            (a pixel centre exactly half-way goes to the higher-index cell).

    Returns:
        ``(B, C, H, W)`` new tensor of the same dtype and device as ``maps``. Each value is a
        convex combination of map values, so it stays within the map's min and max (a softmax
        map's pixels no longer sum to 1).

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

    y_lo, y_hi, ty = _axis_weights(height, h, stride, offset, mode)
    x_lo, x_hi, tx = _axis_weights(width, w, stride, offset, mode)
    device, dtype = maps.device, maps.dtype
    ty = ty.to(device=device, dtype=dtype)[:, None]  # (H, 1)
    tx = tx.to(device=device, dtype=dtype)  # (W,)

    # Separable interpolation: rows first (B, C, H, w), then columns (B, C, H, W).
    rows = maps.index_select(-2, y_lo.to(device))
    if mode == "bilinear":
        rows = rows * (1 - ty) + maps.index_select(-2, y_hi.to(device)) * ty
    placed = rows.index_select(-1, x_lo.to(device))
    if mode == "bilinear":
        placed = placed * (1 - tx) + rows.index_select(-1, x_hi.to(device)) * tx
    return placed


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
