"""Gradient saliency (Simonyan, Vedaldi & Zisserman, ICLR 2014 workshop, "Deep inside
convolutional networks"), one of the paper's weak-segmentation baselines.

For class ``c`` with score ``S_c`` (the logit, before the softmax, as in Simonyan et al.), the
saliency of pixel ``(i, j)`` is ``max_k |dS_c / dI_k(i, j)|`` over the colour channels ``k`` of
the network's input ``I`` (here the normalised image the model sees). One backward pass per
batch; the class is the prediction unless given.

The model runs in eval mode; its train/eval flags, the parameters' ``.grad`` and
``requires_grad`` and the caller's images are left unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ltpa.attention._inputs import model_device, prepare_images, preserve_model_state

__all__ = ["gradient_saliency"]


def _classes(target_classes: int | Sequence[int] | Tensor | None, count: int) -> Tensor | None:
    if target_classes is None:
        return None
    if isinstance(target_classes, bool):
        raise TypeError(f"target_classes must be class indices, got {target_classes!r}.")
    if isinstance(target_classes, int):
        return torch.full((count,), target_classes, dtype=torch.int64)
    classes = torch.as_tensor(target_classes)
    if classes.dtype.is_floating_point or classes.dtype == torch.bool or classes.shape != (count,):
        raise ValueError(f"target_classes must be {count} integer class indices (one per image), got "
                         f"{classes.dtype} {tuple(classes.shape)}.")
    return classes.to(torch.int64)


def gradient_saliency(
    model: nn.Module,
    images: Tensor,
    *,
    target_classes: int | Sequence[int] | Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Simonyan et al.'s saliency map of every image, scaled to sum to 1 per image.

    Args:
        model: a classifier returning logits or an object with ``.logits`` (``AttentionOutput``).
        images: uint8 ``(N, 3, H, W)`` with ``mean``/``std``, or float images already normalised.
        target_classes: the class whose score is differentiated, per image (or one int for all);
            default the model's prediction.
        batch_size: images per backward pass.

    Returns:
        float32 CPU ``(N, H, W)``, non-negative; an all-zero gradient gives an all-zero map.

    Raises:
        ValueError/TypeError: bad images, normalisation, classes or batch size.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (images per pass), got {batch_size!r}.")
    inputs = prepare_images(images, mean, std)
    chosen = _classes(target_classes, inputs.shape[0])
    device = model_device(model)
    maps = []
    with preserve_model_state(model), torch.enable_grad():
        model.eval()
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start:start + batch_size].to(device).requires_grad_(True)
            output = model(batch)
            logits = getattr(output, "logits", output)
            if chosen is None:
                classes = logits.detach().argmax(1)
            else:
                classes = chosen[start:start + batch_size].to(device)
                if int(classes.max()) >= logits.shape[1] or int(classes.min()) < 0:
                    raise ValueError(f"target_classes must lie in [0, {logits.shape[1]}), got "
                                     f"{classes.min().item()}..{classes.max().item()}.")
            score = logits.gather(1, classes[:, None]).sum()  # images are independent in eval mode
            (gradient,) = torch.autograd.grad(score, batch)
            maps.append(gradient.abs().amax(1).float().cpu())
    heat = torch.cat(maps)
    total = heat.flatten(1).sum(1).clamp_min(torch.finfo(torch.float32).tiny)
    return heat / total[:, None, None]
