"""ROAD's noisy linear imputation (Rong et al., ICML 2022), batched over images and masks.

Each removed pixel becomes the weighted mean of its 8 neighbours (weight 1/6 for the 4 edge
neighbours, 1/12 for the 4 diagonal ones; neighbours outside the image drop out and the weights
left are not renormalised, as in the reference implementation): for the removed pixels ``u`` this
is the linear system ``(D - W_uu) x_u = W_uk x_k``, with ``D`` the sum of the in-image neighbour
weights. The reference (and grad-cam's copy of it) builds and factorises a sparse matrix per image
and percentile; here the matrix is never formed: it is a 3x3 convolution restricted to the removed
pixels, symmetric positive definite (the image border acts as a zero boundary), and solved by Jacobi-preconditioned
conjugate gradients for a whole batch of (image, mask) pairs at once. Gaussian noise of std
``noise`` is then added to the removed pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["noisy_linear_imputation"]

_EDGE, _DIAGONAL = 1 / 6, 1 / 12


def _neighbours(values: Tensor) -> Tensor:
    """Sum of weight x value over each pixel's in-image neighbours, ``(M, H, W)``: shifted adds
    of the zero-padded maps (cheaper than a 3x3 convolution with one channel)."""
    padded = F.pad(values, (1, 1, 1, 1))
    height, width = values.shape[-2:]

    def at(dy: int, dx: int) -> Tensor:
        return padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]

    edges = at(-1, 0) + at(1, 0) + at(0, -1) + at(0, 1)
    corners = at(-1, -1) + at(-1, 1) + at(1, -1) + at(1, 1)
    return _EDGE * edges + _DIAGONAL * corners


def noisy_linear_imputation(images: Tensor, keep: Tensor, *, noise: float = 0.01,
                            generator: torch.Generator | None = None, tolerance: float = 1e-4,
                            max_iterations: int | None = None) -> Tensor:
    """Impute the pixels where ``keep`` is False from the kept ones.

    Args:
        images: float ``(B, C, H, W)``; never modified.
        keep: bool ``(B, H, W)``: True where the pixel is known (with none kept, the removed
            pixels become 0 plus noise, as in the reference).
        noise: std of the Gaussian noise added to imputed pixels (0 for the plain interpolation).
        generator: draws the noise (default: the global RNG).
        tolerance: stop when every problem's residual norm is below ``tolerance`` times its
            right-hand side's norm (the default leaves an error far below the 0.01 noise).
        max_iterations: conjugate-gradient cap (default ``8 * (H + W)``, ample for these systems).

    Returns:
        A new ``(B, C, H, W)`` tensor in ``images``' dtype: kept pixels unchanged.

    Raises:
        ValueError: shapes that do not match.
    """
    if images.dim() != 4 or keep.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"images must be (B, C, H, W) and keep (B, H, W) with the same B, H, W; got "
                         f"{tuple(images.shape)} and {tuple(keep.shape)}.")
    batch, channels, height, width = images.shape
    x = images.double().reshape(batch * channels, height, width)
    known = keep.to(torch.float64).repeat_interleave(channels, 0)  # (BC, H, W)
    unknown = 1.0 - known
    neighbours = _neighbours
    diagonal = neighbours(torch.ones_like(known)) * unknown + known  # D on removed pixels, 1 elsewhere

    def operator(values: Tensor) -> Tensor:  # (D - W_uu) on the removed pixels
        values = values * unknown
        return (diagonal * values - neighbours(values)) * unknown

    rhs = neighbours(x * known) * unknown
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    z = residual / diagonal
    direction = z.clone()
    rz = (residual * z).sum((1, 2), keepdim=True)
    limit = (tolerance * rhs.flatten(1).norm(dim=1)).clamp_min(1e-300)
    for _ in range(max_iterations or 8 * (height + width)):
        if bool((residual.flatten(1).norm(dim=1) <= limit).all()):
            break
        applied = operator(direction)
        step = rz / (direction * applied).sum((1, 2), keepdim=True).clamp_min(1e-300)
        solution += step * direction
        residual -= step * applied
        z = residual / diagonal
        rz_next = (residual * z).sum((1, 2), keepdim=True)
        direction = z + (rz_next / rz.clamp_min(1e-300)) * direction
        rz = rz_next
    filled = x * known + solution * unknown
    if noise:
        draws = torch.randn(filled.shape, generator=generator, dtype=torch.float64, device="cpu").to(filled.device)
        filled = filled + noise * draws * unknown
    return filled.reshape(batch, channels, height, width).to(images.dtype)
