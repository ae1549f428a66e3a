"""Attention overlays for TensorBoard: the same fixed *validation* images every epoch, every
level on the honest ``"mass"`` scale (attention mass per input pixel, one colour scale shared by
the levels of an image, with a colour bar), titled with the truth and the prediction.

(The popular PyTorch port logs min-max-stretched maps of training images under a "test" tag:
every map then looks equally peaked, and the images are ones the model was fitted on.)

The trainer calls :func:`log_attention_overlays` once per epoch on rank 0, after validation::

    log_attention_overlays(writer, model, val_images[:8], prepare=prepare, step=epoch,
                           targets=val_targets[:8], class_names=class_names)

where ``prepare`` turns uint8 images into the model's input exactly as the loaders do (mean/std
normalisation or the run's ZCA whitening).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from torch import Tensor, nn

from ltpa.attention.maps import compute_maps
from ltpa.attention.overlays import DISPLAY_MODES, attention_grid

__all__ = ["attention_overlay_image", "log_attention_overlays"]


def attention_overlay_image(
    model: nn.Module,
    images: Tensor,
    *,
    prepare: Callable[[Tensor], Tensor],
    targets: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    mode: str = "mass",
    cmap: str = "jet",
    dpi: float = 72,
) -> np.ndarray:
    """The attention overlays of a batch as one RGB picture: a row per image (the image, then
    every level on the ``mode`` colour scale).

    The model runs in eval mode without gradients and its mode is restored
    (:func:`~ltpa.attention.compute_maps`); ``images`` are not modified.

    Args:
        model: an ltpa model with attention (unwrapped from DDP / ``torch.compile``).
        images: uint8 ``(B, 3, H, W)`` RGB, e.g. the first validation images.
        prepare: uint8 images -> the model's input, as in training.
        targets: ``(B,)`` true classes, shown in the titles with the prediction.
        class_names: names of the classes (default their indices).
        mode: ``"mass"`` (default), ``"shared"`` or ``"per-map"``, see
            :func:`~ltpa.attention.normalise_for_display`.
        cmap: matplotlib colormap.
        dpi: resolution of the rendered figure.

    Returns:
        uint8 ``(height, width, 3)`` RGB array, ready for ``SummaryWriter.add_image(...,
        dataformats="HWC")``.

    Raises:
        ValueError: images that are not a uint8 ``(B, 3, H, W)`` batch, an unknown mode, or a
            model without attention maps.
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty uint8 (B, 3, H, W) batch, got {got}.")
    if mode not in DISPLAY_MODES:
        raise ValueError(f"mode must be one of {DISPLAY_MODES}, got {mode!r}.")
    maps = compute_maps(model, prepare(images))
    if not maps.levels:
        raise ValueError(f"{type(model).__name__} returns no attention maps to draw.")
    names = list(class_names) if class_names is not None else None

    def label(k: int) -> str:
        return names[k] if names is not None and 0 <= k < len(names) else str(k)

    probabilities = maps.logits.float().softmax(1)
    titles = []
    for index in range(images.shape[0]):
        predicted = int(maps.predictions[index])
        title = f"val {index}: pred {label(predicted)} ({float(probabilities[index, predicted]):.0%})"
        if targets is not None:
            title += f"\ntrue {label(int(targets[index]))}"
        titles.append(title)
    figure = attention_grid(images.permute(0, 2, 3, 1).numpy(), list(maps.upsampled),
                            level_names=[level.name for level in maps.levels],
                            strides=[level.stride for level in maps.levels], titles=titles, mode=mode, cmap=cmap)
    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def log_attention_overlays(
    writer,
    model: nn.Module,
    images: Tensor,
    *,
    prepare: Callable[[Tensor], Tensor],
    step: int,
    tag: str = "val/attention_mass",
    **options,
) -> np.ndarray:
    """One call for the trainer: :func:`attention_overlay_image` of ``images`` written to
    TensorBoard as ``tag`` at ``step`` (the epoch). ``writer`` is a
    ``torch.utils.tensorboard.SummaryWriter`` (or ``None``: nothing is drawn or written).

    Returns:
        The picture written (an empty ``(0, 0, 3)`` array when ``writer`` is None).
    """
    if writer is None:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    picture = attention_overlay_image(model, images, prepare=prepare, **options)
    writer.add_image(tag, picture, global_step=step, dataformats="HWC")
    return picture
