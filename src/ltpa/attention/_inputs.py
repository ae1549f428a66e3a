"""Shared input checks and the model-state guard of the analysis tools (private)."""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from ltpa.attention.maps import AttentionMaps
from ltpa.runs.preprocess import Preprocessing

__all__ = ["prepare_images", "preserve_model_state", "inference_layout", "in_inference_layout", "uses_channels_last",
           "as_distribution", "check_heat", "model_device"]


def prepare_images(
    images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> Tensor:
    """The model input for ``images``: a new float tensor, never a view of the caller's.

    uint8 images ``(N, 3, H, W)`` in [0, 255] are normalised with ``mean``/``std`` (the training
    values, on the [0, 1] scale, e.g. ``trained.config.mean``). Float images are taken as
    already normalised, and then ``mean``/``std`` must be ``None``: the dtype decides, so an
    image batch is never normalised twice.

    Raises:
        TypeError: ``images`` is not a tensor or has another dtype.
        ValueError: wrong shape, or ``mean``/``std`` missing for uint8 / given for float images.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor (N, 3, H, W), got {type(images).__name__}.")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty (N, C, H, W) batch, got shape {tuple(images.shape)}; "
            "add the batch axis with images.unsqueeze(0) for one image."
        )
    if images.dtype == torch.uint8:
        if mean is None or std is None:
            raise ValueError(
                "uint8 images need the training normalisation: pass mean=... and std=... "
                "(e.g. trained.config.mean and trained.config.std), or pass float images that "
                "are already normalised."
            )
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(
                f"mean and std need one value per channel ({images.shape[1]}), got {mean!r}, {std!r}."
            )
        return Preprocessing(mean, std, device=images.device)(images)  # the run's one normalisation
    if images.is_floating_point():
        if mean is not None or std is not None:
            raise ValueError(
                "float images are taken as already normalised; pass uint8 images with mean/std, "
                "or float images with mean=None and std=None."
            )
        return images.detach().clone()
    raise TypeError(f"images must be uint8 (raw) or float (normalised), got {images.dtype}.")


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def inference_layout(model: nn.Module | None) -> Iterator[None]:
    """Run an ltpa model with its conv weights in channels_last inside the block, and put the
    very same weight tensors back afterwards.

    Convolutions run faster in channels_last than in the default layout (oneDNN's and cuDNN's
    preferred layout), with the same fp32 math up to rounding. Only ltpa's own models are converted (their code never
    assumes a layout; a user's model may flatten with ``.view``); one whose 4-D weights are not
    all in the default layout (already channels_last, or mixed) is left as it is.
    """
    weights = [p for p in model.parameters() if p.dim() == 4] if model is not None else []
    if (not weights or not type(model).__module__.startswith("ltpa.")
            or not all(p.is_contiguous() for p in weights)
            or all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)):
        yield
        return
    originals = [(p, p.data) for p in weights]
    try:
        for param, data in originals:
            param.data = data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for param, data in originals:
            param.data = data


def uses_channels_last(model: nn.Module) -> bool:
    """Whether the model's first 4-D weight is in channels_last (then its inputs should be too)."""
    for param in model.parameters():
        if param.dim() == 4:
            return param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous()
    return False


def in_inference_layout(fn):
    """Decorate an analysis function whose first argument is the model: it runs under
    :func:`inference_layout`."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with inference_layout(model):
            return fn(model, *args, **kwargs)
    return wrapper


@contextlib.contextmanager
def preserve_model_state(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag, every parameter's ``requires_grad`` and
    ``.grad`` on exit, also when the body raises (grad-cam's constructor calls ``model.eval()``
    and its backward pass fills ``.grad``)."""
    modes = [(module, module.training) for module in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad, grad in params:
            param.requires_grad_(requires_grad)
            param.grad = grad


def check_heat(heat: object, name: str = "heat") -> Tensor:
    """``heat`` as a float ``(N, H, W)`` tensor (accepts ``(N, 1, H, W)``), finite.

    A view of the caller's tensor where possible (never written to); integer maps become float64.

    Raises:
        ValueError: wrong shape, empty, or NaN/infinite values.
        TypeError: bool or complex values.
    """
    maps = torch.as_tensor(heat)
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3 or maps.numel() == 0:
        raise ValueError(
            f"{name} must be a non-empty (N, H, W) or (N, 1, H, W) batch, got {tuple(maps.shape)}; "
            f"add the batch axis with {name}[None] for a single map."
        )
    if maps.dtype == torch.bool or maps.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {maps.dtype}.")
    if not maps.is_floating_point():
        maps = maps.double()
    if not torch.isfinite(maps).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the model's maps.")
    return maps


def as_distribution(maps: Tensor) -> Tensor:
    """Non-negative ``(N, ...)`` maps -> float64 ``(N, n)`` rows summing to 1.

    Softmax maps are unchanged (up to rounding); sigmoid and CAM maps are rescaled. An all-zero
    map becomes uniform (no location is preferred), never NaN.
    """
    flat = maps.detach().double().flatten(1)
    if (flat < 0).any():
        raise ValueError(
            f"maps must be non-negative, got min {float(flat.min()):.3g}; rectify signed maps "
            "first (e.g. maps.clamp(min=0))."
        )
    total = flat.sum(1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    return torch.where(total > 0, flat / total.clamp_min(1e-300), uniform)


def level_maps(maps: AttentionMaps, *, upsampled: bool) -> dict[str, Tensor]:
    """``{level name: (N, H, W)}`` from :class:`AttentionMaps`."""
    source = maps.upsampled if upsampled else maps.maps
    return {level.name: m[:, 0] for level, m in zip(maps.levels, source)}
