"""White-box L-inf attacks on the un-normalised image: FGSM and PGD.

Both attacks work on float images in ``[0, 1]`` (the pixel scale of the uint8 files divided by
255) and pass them through the run's own preprocessing (mean/std or ZCA) inside the graph, so
``eps`` means the same perturbation for every model, whatever its normalisation, and the
``[0, 1]`` clamp is applied to pixels, never to normalised values.

Conventions (checked against ``torchattacks`` 3.5 in ``tests/robustness``):

* FGSM (Goodfellow et al. 2015): ``x' = clamp(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``.
* PGD (Madry et al. 2018): optional random start ``x_0 = clamp(x + U(-eps, eps), 0, 1)``, then
  ``steps`` times: a signed-gradient step of ``step_size``, projection onto the eps-ball around
  ``x`` (``delta = clamp(x_t - x, -eps, eps)``), clamp to ``[0, 1]``. The default step size is
  ``2.5 * eps / steps`` (Madry et al.), so the iterates can reach the ball's border from any
  start.

The loss is the cross-entropy of the logits against the true label, summed over the batch: with
the model in eval mode each image's gradient then depends on that image only, so results do not
depend on the batch size (a mean would only rescale the gradient, whose sign is all that is used).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ATTACKS", "PixelClassifier", "pixel_preprocess", "fgsm", "pgd", "default_step_size"]

ATTACKS = ("fgsm", "pgd")


def pixel_preprocess(trained) -> Callable[[Tensor], Tensor]:
    """The differentiable preprocessing of a run for float images in ``[0, 1]``.

    ``pixel_preprocess(trained)(images_uint8.float() / 255)`` equals ``trained.prepare(images_uint8)``
    (ZCA whitening if the run used it, else ``(x - mean) / std``), but accepts any float image,
    keeps the autograd graph and never rounds to uint8.

    Args:
        trained: a :class:`ltpa.inference.TrainedModel` (its ``config.mean``/``config.std`` and
            ``whiten``).

    Raises:
        ValueError: the run has neither ZCA nor a per-channel mean and std.
    """
    if trained.whiten is None and (trained.config.mean is None or trained.config.std is None):
        raise ValueError(f"checkpoint {trained.checkpoint} records no mean/std and no ZCA whitening, so its "
                         f"input preprocessing is unknown; use a checkpoint written by ltpa train")
    return trained.prepare_float  # the float path of the run's one Preprocessing, differentiable


class PixelClassifier(nn.Module):
    """``model`` behind ``preprocess``: float ``(B, 3, H, W)`` pixels in ``[0, 1]`` -> logits ``(B, K)``.

    Works for ltpa models (which return :class:`~ltpa.models.AttentionOutput`) and for plain
    modules that return a logits tensor; this is the function both attacks differentiate (and
    what a third-party attack library can be given).
    """

    def __init__(self, model: nn.Module, preprocess: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess

    def forward(self, images: Tensor) -> Tensor:
        output = self.model(self.preprocess(images))
        return output if isinstance(output, Tensor) else output.logits


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s PGD step: ``2.5 * eps / steps``."""
    return 2.5 * eps / steps


def _check(images: Tensor, targets: Tensor, eps: float) -> None:
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4:
        raise TypeError(f"images must be a float (B, C, H, W) tensor in [0, 1], got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}; "
                        f"convert uint8 images with images.float() / 255")
    if targets.shape != images.shape[:1]:
        raise ValueError(f"targets must have one label per image, shape ({images.shape[0]},), got "
                         f"{tuple(targets.shape)}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps is a perturbation of [0, 1] pixels and must be in [0, 1], got {eps!r} "
                         f"(write 8/255 as 0.0314)")


def _loss_gradient(forward: Callable[[Tensor], Tensor], images: Tensor, targets: Tensor) -> Tensor:
    images = images.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(forward(images).float(), targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, images)
    return grad


def fgsm(forward: Callable[[Tensor], Tensor], images: Tensor, targets: Tensor, eps: float) -> Tensor:
    """Fast gradient sign method: one signed-gradient step of ``eps``, clamped to ``[0, 1]``.

    Args:
        forward: float pixels ``(B, C, H, W)`` in ``[0, 1]`` -> logits ``(B, K)``, e.g. a
            :class:`PixelClassifier` in eval mode.
        images: float ``(B, C, H, W)`` in ``[0, 1]``; not modified.
        targets: ``(B,)`` int64 true classes.
        eps: L-inf budget in ``[0, 1]`` pixel units (``8/255`` is 8 grey levels).

    Returns:
        A new float tensor ``(B, C, H, W)`` in ``[0, 1]`` with ``|x' - x| <= eps``.
    """
    _check(images, targets, eps)
    grad = _loss_gradient(forward, images, targets)
    return (images.detach() + eps * grad.sign()).clamp(0.0, 1.0)


def pgd(forward: Callable[[Tensor], Tensor], images: Tensor, targets: Tensor, eps: float, *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient descent on the cross-entropy, L-inf ball of radius ``eps``.

    Args:
        forward, images, targets, eps: as for :func:`fgsm`.
        steps: gradient steps (10 by default).
        step_size: per-step change in pixel units; default :func:`default_step_size`.
        random_start: start from a uniform random point of the ball (Madry et al.).
        generator: random source of the start (on ``images``' device) for reproducible runs;
            None uses torch's global generator.

    Returns:
        A new float tensor ``(B, C, H, W)`` in ``[0, 1]`` with ``|x' - x| <= eps``.

    Raises:
        ValueError: ``steps < 1`` or a negative ``step_size``.
    """
    _check(images, targets, eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    step_size = default_step_size(eps, steps) if step_size is None else float(step_size)
    if step_size < 0:
        raise ValueError(f"step_size must be >= 0 (pixel units), got {step_size!r}")
    clean = images.detach()
    adversarial = clean.clone()
    if random_start:
        noise = torch.empty_like(clean).uniform_(-eps, eps, generator=generator)
        adversarial = (adversarial + noise).clamp(0.0, 1.0)
    for _ in range(steps):
        grad = _loss_gradient(forward, adversarial, targets)
        adversarial = adversarial + step_size * grad.sign()
        delta = (adversarial - clean).clamp(-eps, eps)  # project onto the ball, then onto the image box
        adversarial = (clean + delta).clamp(0.0, 1.0)
    return adversarial
