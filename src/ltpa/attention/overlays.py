"""Pictures of attention: heat-map overlays, display scales, figure grids and PNG saving.

Everything here is a pure function: arrays in, new arrays or a new Figure out. Colours are RGB.
Figures are built with :class:`matplotlib.figure.Figure` directly, so no pyplot state is
touched and nothing needs a display.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from ltpa._files import atomic_writer

__all__ = [
    "DISPLAY_MODES",
    "attention_grid",
    "denormalise",
    "normalise_for_display",
    "overlay",
    "save_figure",
]

DISPLAY_MODES = ("mass", "shared", "per-map")


def _to_numpy(array: object, name: str) -> np.ndarray:
    """A read-only view (or copy) of ``array`` as numpy; tensors are detached and moved to CPU."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    converted = np.asarray(array)
    if converted.dtype == object:
        raise TypeError(f"{name} must be a numeric array or tensor, got {type(array).__name__}.")
    return converted


def _image_as_float(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an RGB image and return it as a new float64 ``(H, W, 3)`` array in [0, 1]."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"{name} must be an RGB array of shape (H, W, 3), got {image.shape}; "
            "convert a (3, H, W) tensor batch with ltpa.attention.denormalise."
        )
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(
            f"{name} must be uint8 in [0, 255] or float in [0, 1], got dtype {image.dtype}."
        )
    if not np.all(np.isfinite(image)) or image.min() < 0.0 or image.max() > 1.0:
        raise ValueError(
            f"float {name} must hold finite values in [0, 1], got range "
            f"[{np.nanmin(image):.3g}, {np.nanmax(image):.3g}]; undo mean/std normalisation with "
            "ltpa.attention.denormalise first."
        )
    return image.astype(np.float64)


def _get_cmap(cmap: str | Colormap) -> Colormap:
    if isinstance(cmap, Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except KeyError as err:
        close = difflib.get_close_matches(str(cmap), list(matplotlib.colormaps), n=5)
        raise ValueError(
            f"unknown colormap {cmap!r}; closest matplotlib names: {close or ['jet', 'viridis']}."
        ) from err


def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(
            f"alpha must be a number in [0, 1] (weight of the heat map), got {alpha!r}."
        )
    return float(alpha)


def _scale(heat: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    """``heat`` mapped to [0, 1] with ``vmin -> 0`` and ``vmax -> 1``, clipped outside."""
    low = float(heat.min()) if vmin is None else float(vmin)
    high = float(heat.max()) if vmax is None else float(vmax)
    if not (np.isfinite(low) and np.isfinite(high)) or high < low:
        raise ValueError(
            f"the colour scale needs finite vmin <= vmax, got vmin={low}, vmax={high}."
        )
    if high == low:
        # A constant scale has no span: everything at or below it is the low colour, and
        # only values strictly above it (possible with explicit vmin/vmax) are the high colour.
        return (heat > high).astype(np.float64)
    return np.clip((heat.astype(np.float64) - low) / (high - low), 0.0, 1.0)


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    *,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Blend a colour-mapped heat map over an RGB image.

    Args:
        image: ``(H, W, 3)`` RGB, either uint8 in [0, 255] or float in [0, 1]. Not modified.
        heat: ``(H, W)`` finite float values, e.g. one map of ``AttentionMaps.upsampled``
            (numpy array or CPU/GPU tensor). Not modified.
        cmap: matplotlib colormap name (looked up in ``matplotlib.colormaps``) or object.
        alpha: weight of the heat colours, in [0, 1]; ``0`` returns the image.
        vmin: heat value drawn in the lowest colour; default ``heat.min()``.
        vmax: heat value drawn in the highest colour; default ``heat.max()``. Values outside
            ``[vmin, vmax]`` are clipped. A constant map (``vmin == vmax``) is drawn in the low
            colour.

    Returns:
        New ``(H, W, 3)`` uint8 RGB array.

    Raises:
        TypeError: an unsupported image dtype.
        ValueError: shapes, ranges, ``alpha``, ``vmin > vmax`` or an unknown colormap.
    """
    rgb = _image_as_float(_to_numpy(image, "image"))
    heat = _to_numpy(heat, "heat")
    if heat.shape != rgb.shape[:2]:
        raise ValueError(
            f"heat must have the image's shape {rgb.shape[:2]}, got {heat.shape}; place "
            "feature-resolution maps on the image with ltpa.attention.place_on_image first."
        )
    if not np.all(np.isfinite(heat)):
        raise ValueError("heat contains NaN or infinite values; check the model's maps.")
    weight = _check_alpha(alpha)
    colours = _get_cmap(cmap)(_scale(heat, vmin, vmax))[..., :3]  # (H, W, 3) in [0, 1]
    blended = (1.0 - weight) * rgb + weight * colours
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def normalise_for_display(
    maps_per_level: Sequence[np.ndarray], mode: str
) -> tuple[list[np.ndarray], tuple[float, float]]:
    """Put one image's per-level maps on a common colour scale for display.

    Modes:
        ``"mass"``: raw values of ``AttentionMaps.upsampled``, i.e. attention mass per input
        pixel, on one scale shared by all levels: one ``(vmin, vmax)`` spanning them, so the same
        colour means the same mass per pixel in every level. A level that spreads its unit mass
        over more input pixels (a broad map, or a coarse level whose cells cover ``stride ** 2``
        pixels each) is fainter.
        ``"shared"``: all levels min-max scaled together to [0, 1] (one min and max over all
        levels); relative differences between levels survive, absolute values do not.
        ``"per-map"``: each map stretched to its own [0, 1]; every map looks as peaked as it
        can, so differences of spread between levels are hidden (label such plots).

    Args:
        maps_per_level: one finite ``(H, W)`` map per level (arrays or tensors). Not modified.
        mode: one of :data:`DISPLAY_MODES`.

    Returns:
        ``(maps, (vmin, vmax))``: new float64 ``(H, W)`` arrays, one per level, and the scale
        to pass to :func:`overlay` for every one of them (``(0.0, 1.0)`` except in ``"mass"``
        mode). A constant map scales to all zeros.

    Raises:
        ValueError: unknown ``mode``, no maps, a map that is not 2-D, or non-finite values.
    """
    if mode not in DISPLAY_MODES:
        raise ValueError(f"unknown display mode {mode!r}; choose one of {list(DISPLAY_MODES)}.")
    arrays = [np.array(_to_numpy(m, "map"), dtype=np.float64) for m in maps_per_level]
    if not arrays:
        raise ValueError("maps_per_level is empty; pass one (H, W) map per level.")
    for index, array in enumerate(arrays):
        if array.ndim != 2:
            raise ValueError(
                f"map {index} must be 2-D (H, W), got shape {array.shape}; "
                "index one image and squeeze the channel axis."
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"map {index} contains NaN or infinite values.")
    low = min(float(a.min()) for a in arrays)
    high = max(float(a.max()) for a in arrays)
    if mode == "mass":
        return arrays, (low, high)
    if mode == "shared":
        return [_stretch(a, low, high) for a in arrays], (0.0, 1.0)
    return [_stretch(a, float(a.min()), float(a.max())) for a in arrays], (0.0, 1.0)


def _stretch(array: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros_like(array)
    return (array - low) / (high - low)


def _per_image_maps(upsampled_maps: Sequence[object], batch: int, size: tuple[int, int]) -> list:
    """``upsampled_maps`` as a list over levels of numpy ``(B, H, W)`` arrays, validated."""
    levels = []
    for index, maps in enumerate(upsampled_maps):
        array = _to_numpy(maps, f"upsampled_maps[{index}]")
        if array.ndim == 4 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 3 or array.shape[0] != batch or array.shape[1:] != size:
            raise ValueError(
                f"upsampled_maps[{index}] must have shape ({batch}, 1, {size[0]}, {size[1]}) or "
                f"({batch}, {size[0]}, {size[1]}) to match the images, got {array.shape}; use "
                "AttentionMaps.upsampled."
            )
        levels.append(array)
    return levels


def attention_grid(
    images: np.ndarray,
    upsampled_maps: Sequence[object],
    *,
    level_names: Sequence[str],
    strides: Sequence[float] | None = None,
    titles: Sequence[str] | None = None,
    mode: str = "mass",
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
) -> Figure:
    """A figure with one row per image: the image, then its attention overlay at every level.

    Args:
        images: ``(B, H, W, 3)`` RGB, uint8 in [0, 255] or float in [0, 1] (see
            :func:`denormalise`). Not modified.
        upsampled_maps: one ``(B, 1, H, W)`` or ``(B, H, W)`` map batch per level, e.g.
            ``AttentionMaps.upsampled``. Not modified.
        level_names: column title of each level, e.g. ``[level.name for level in levels]``.
        strides: optional stride of each level, shown in the column title.
        titles: optional title of each row's image panel, e.g. ``"pred: cat / true: dog"``.
        mode: colour scale, see :func:`normalise_for_display`. ``"mass"`` adds one colour bar
            per row (each image's own shared scale); ``"per-map"`` says so in the column titles.
        cmap: matplotlib colormap name or object.
        alpha: weight of the heat colours in [0, 1].

    Returns:
        A new :class:`matplotlib.figure.Figure` (constrained layout), not registered with
        pyplot; save it with :func:`save_figure`.

    Raises:
        ValueError: mismatched shapes or lengths, unknown ``mode`` or colormap.
    """
    if mode not in DISPLAY_MODES:
        raise ValueError(f"unknown display mode {mode!r}; choose one of {list(DISPLAY_MODES)}.")
    images = _to_numpy(images, "images")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (B, H, W, 3) array, got {images.shape}.")
    batch, size = images.shape[0], tuple(images.shape[1:3])
    levels = _per_image_maps(upsampled_maps, batch, size)
    if not levels:
        raise ValueError("upsampled_maps is empty; pass at least one level of maps.")
    _check_length(level_names, len(levels), "level_names", "one name per level")
    if strides is not None:
        _check_length(strides, len(levels), "strides", "one stride per level")
    if titles is not None:
        _check_length(titles, batch, "titles", "one title per image")
    colormap = _get_cmap(cmap)
    _check_alpha(alpha)

    columns = 1 + len(levels)
    width = 2.2 * columns + (0.6 if mode == "mass" else 0.0)  # room for the colour bars
    figure = Figure(figsize=(width, 2.4 * batch), layout="constrained")
    axes = figure.subplots(batch, columns, squeeze=False)
    for row in range(batch):
        picture = images[row]
        rgb = (_image_as_float(picture, f"images[{row}]") * 255).round().astype(np.uint8)
        axes[row, 0].imshow(rgb)
        if titles is not None:
            axes[row, 0].set_title(str(titles[row]), fontsize=9)
        elif row == 0:
            axes[row, 0].set_title("image", fontsize=9)
        shown, (vmin, vmax) = normalise_for_display([m[row] for m in levels], mode)
        for column, heat in enumerate(shown, start=1):
            axes[row, column].imshow(
                overlay(picture, heat, cmap=colormap, alpha=alpha, vmin=vmin, vmax=vmax)
            )
            if row == 0:
                axes[row, column].set_title(
                    _column_title(level_names, strides, column - 1, mode), fontsize=9
                )
        if mode == "mass":
            bar = figure.colorbar(
                ScalarMappable(norm=Normalize(vmin, vmax), cmap=colormap),
                ax=list(axes[row, 1:]), fraction=0.05, pad=0.02,
            )
            bar.ax.tick_params(labelsize=7)
            bar.set_label("mass per pixel", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return figure


def _column_title(
    names: Sequence[str], strides: Sequence[float] | None, index: int, mode: str
) -> str:
    title = str(names[index])
    if strides is not None:
        title += f" (stride {float(strides[index]):g})"
    if mode == "per-map":
        title += "\nper-map scale"
    return title


def _check_length(values: object, expected: int, name: str, what: str) -> None:
    is_sequence = isinstance(values, Sequence) and not isinstance(values, str)
    if not is_sequence or len(values) != expected:
        got = len(values) if is_sequence else values
        raise ValueError(f"{name} must be a sequence with {what} ({expected}), got {got!r}.")


def save_figure(figure: Figure, path: str | os.PathLike, *, dpi: float = 100) -> Path:
    """Write ``figure`` as PNG atomically: to a temporary file beside ``path``, then rename.

    A reader never sees a half-written file, and an existing file is replaced only once the
    new one is complete.

    Args:
        figure: a matplotlib Figure.
        path: destination ending in ``.png``; its directory must exist.
        dpi: resolution in dots per inch.

    Returns:
        The destination path.

    Raises:
        TypeError: ``figure`` is not a Figure.
        ValueError: ``path`` does not end in ``.png``.
        FileNotFoundError: the destination directory does not exist.
    """
    if not isinstance(figure, Figure):
        raise TypeError(f"figure must be a matplotlib.figure.Figure, got {type(figure).__name__}.")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG; give a path ending in .png, got {str(path)!r}.")
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"directory {str(path.parent)!r} does not exist; create it first "
            "(Path(...).mkdir(parents=True))."
        )
    with atomic_writer(path) as handle:  # the one atomic writer (umask permissions, fsynced)
        figure.savefig(handle, format="png", dpi=dpi)
    return path


def denormalise(
    images: torch.Tensor | np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Undo per-channel mean/std normalisation and return displayable RGB images.

    Args:
        images: ``(B, 3, H, W)`` float batch computed as ``(x - mean) / std`` from RGB ``x`` in
            [0, 1] (the torchvision convention). Tensor (any device) or array; not modified.
        mean: three per-channel means, RGB order, on the [0, 1] scale.
        std: three per-channel standard deviations, all > 0.

    Returns:
        New ``(B, H, W, 3)`` uint8 RGB array; values outside [0, 1] are clipped before scaling
        to [0, 255].

    Raises:
        ValueError: wrong shape, wrong ``mean``/``std`` length or a non-positive ``std``.
    """
    array = _to_numpy(images, "images")
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(
            f"images must have shape (B, 3, H, W), got {array.shape}; "
            "add the batch axis with [None] for a single image."
        )
    mean_array = np.asarray(mean, dtype=np.float64)
    std_array = np.asarray(std, dtype=np.float64)
    if mean_array.shape != (3,) or std_array.shape != (3,):
        raise ValueError(f"mean and std need three RGB values each, got {mean!r} and {std!r}.")
    if not np.all(std_array > 0):
        raise ValueError(f"std values must be > 0, got {std!r}.")
    restored = array.astype(np.float64) * std_array[:, None, None] + mean_array[:, None, None]
    rgb = np.clip(np.rint(np.clip(restored, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb.transpose(0, 2, 3, 1))
