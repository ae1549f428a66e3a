"""Geometry of resizing and cropping, applied alike to images, boxes and keypoints; ZCA whitening.

Every crop is described by :class:`CropParams`: an integer region of the source image (which may
reach past its border, where the output is black) that is resized onto ``out_height x
out_width``. In continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``) a source point
``(x, y)`` lands at ``((x - left) * out_width / width, (y - top) * out_height / height)``. PIL's
resampling uses the same pixel-centre convention, so images and annotations stay aligned exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

__all__ = [
    "CropParams",
    "resize_short_side_crop_params",
    "box_crop_params",
    "squash_params",
    "crop_params",
    "crop_and_resize",
    "transform_boxes",
    "transform_points",
    "ZCAWhitening",
]


@dataclass(frozen=True)
class CropParams:
    """A source region ``[left, left + width) x [top, top + height)`` mapped onto the output."""

    left: int
    top: int
    width: int
    height: int
    out_width: int
    out_height: int

    @property
    def scale_x(self) -> float:
        return self.out_width / self.width

    @property
    def scale_y(self) -> float:
        return self.out_height / self.height


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (e.g. 80, 224, 448), got {size!r}")
    return size


def resize_short_side_crop_params(height: int, width: int, size: int, *, random: bool = False,
                                  generator: torch.Generator | None = None) -> CropParams:
    """Resize the short side to ``size`` and crop ``size x size``: never changes the aspect ratio.

    The crop is the largest centred (or, with ``random``, uniformly placed) square of the source,
    which is the same as resizing first and cropping after, without the rounding of a resize.

    Args:
        height, width: source image size in pixels.
        size: output side.
        random: place the square uniformly at random along the long side.
        generator: randomness for ``random``.
    """
    _check_size(size)
    side = min(height, width)
    if random:
        left = int(torch.randint(0, width - side + 1, (), generator=generator))
        top = int(torch.randint(0, height - side + 1, (), generator=generator))
    else:
        left, top = (width - side) // 2, (height - side) // 2
    return CropParams(left, top, side, side, size, size)


def box_crop_params(height: int, width: int, box: Tensor | tuple[float, ...], size: int, *,
                    margin: float = 0.1) -> CropParams:
    """A square region around ``box`` (x0, y0, x1, y1), grown by ``margin`` times the box's width
    (height) on the left and right (top and bottom), then to a square on its longer side.

    The square is shifted inside the image where it fits; where it does not (a box spanning a
    long image), the part outside the image is black. The aspect ratio is never changed.

    Raises:
        ValueError: a negative margin or a box with no area.
    """
    _check_size(size)
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (a fraction of the box side), got {margin}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {(x0, y0, x1, y1)} has no area; expected x0 < x1 and y0 < y1")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max((x1 - x0) * (1 + 2 * margin), (y1 - y0) * (1 + 2 * margin))
    side_px = max(1, math.ceil(side))

    def place(centre: float, extent: int) -> int:
        start = math.floor(centre - side_px / 2)
        if side_px <= extent:
            return min(max(start, 0), extent - side_px)
        return (extent - side_px) // 2  # cannot fit: centre it, black borders on both sides

    return CropParams(place(cx, width), place(cy, height), side_px, side_px, size, size)


def squash_params(height: int, width: int, size: int) -> CropParams:
    """The whole image onto ``size x size``: changes the aspect ratio unless the image is square."""
    _check_size(size)
    return CropParams(0, 0, width, height, size, size)


def crop_params(height: int, width: int, size: int, mode: str, box: Tensor | tuple[float, ...] | None = None, *,
                margin: float = 0.1) -> CropParams:
    """The crop of one resize mode: ``"resize_crop"`` (:func:`resize_short_side_crop_params`),
    ``"squash"`` (:func:`squash_params`) or ``"bbox_crop"`` (:func:`box_crop_params`, needs ``box``).

    Raises:
        ValueError: an unknown mode, or ``bbox_crop`` without a box.
    """
    if mode == "resize_crop":
        return resize_short_side_crop_params(height, width, size)
    if mode == "squash":
        return squash_params(height, width, size)
    if mode != "bbox_crop":
        raise ValueError(f"mode must be one of resize_crop, bbox_crop, squash, got {mode!r}")
    if box is None:
        raise ValueError("mode='bbox_crop' needs a box; use mode='resize_crop' for images without one")
    return box_crop_params(height, width, box, size, margin=margin)


def crop_and_resize(image: Image.Image, params: CropParams, *,
                    resample: Image.Resampling = Image.Resampling.BILINEAR) -> Image.Image:
    """Cut ``params``' region out of ``image`` (black outside it) and resize it, bilinear with
    antialiasing by default (``NEAREST`` for masks)."""
    region = image.crop((params.left, params.top, params.left + params.width, params.top + params.height))
    if region.size == (params.out_width, params.out_height):
        return region
    return region.resize((params.out_width, params.out_height), resample)


def transform_points(points: Tensor, params: CropParams) -> Tensor:
    """Map ``(..., 2)`` ``(x, y)`` source points into the output; NaN stays NaN.

    Points may land outside ``[0, out_width) x [0, out_height)`` when the crop cuts them off;
    check that together with the visibility flags.
    """
    offset = torch.tensor([params.left, params.top], dtype=points.dtype, device=points.device)
    scale = torch.tensor([params.scale_x, params.scale_y], dtype=points.dtype, device=points.device)
    return (points - offset) * scale


def transform_boxes(boxes: Tensor, params: CropParams, *, clip: bool = True) -> Tensor:
    """Map ``(..., 4)`` ``(x0, y0, x1, y1)`` boxes into the output, clipped to it by default."""
    out = transform_points(boxes.reshape(*boxes.shape[:-1], 2, 2), params).reshape(boxes.shape)
    if clip:
        limit = torch.tensor([params.out_width, params.out_height] * 2, dtype=out.dtype, device=out.device)
        out = torch.minimum(out.clamp_min(0), limit)
    return out


class ZCAWhitening:
    """ZCA whitening of whole images, as the paper uses for CIFAR and SVHN (Table of recipes).

    ``W = U diag(1 / sqrt(s + epsilon)) U^T`` from the eigen-decomposition ``U diag(s) U^T`` of the
    pixel covariance of the train images in [0, 1] units; ``apply(x) = (x - mean) W``, per image
    flattened to ``D = 3 H W`` values. Fit on the train split only.

    Attributes:
        mean: ``(D,)`` float32 per-pixel mean in [0, 1] units.
        matrix: ``(D, D)`` float32 whitening matrix (symmetric).
        epsilon: regulariser added to the eigenvalues.
        shape: ``(C, H, W)`` the images it was fitted on.
    """

    def __init__(self, mean: Tensor, matrix: Tensor, epsilon: float, shape: tuple[int, int, int]) -> None:
        d = math.prod(shape)
        if mean.shape != (d,) or matrix.shape != (d, d):
            raise ValueError(f"ZCA state does not match image shape {shape}: mean {tuple(mean.shape)}, "
                             f"matrix {tuple(matrix.shape)}")
        self.mean, self.matrix = mean.float(), matrix.float()
        self.epsilon, self.shape = float(epsilon), tuple(int(s) for s in shape)

    @classmethod
    def fit(cls, images: Tensor, *, epsilon: float = 1e-2, max_dim: int = 4096, chunk: int = 2048) -> ZCAWhitening:
        """Estimate mean and whitening matrix from uint8 ``(N, C, H, W)`` train images.

        Args:
            images: the train split, uint8.
            epsilon: added to the covariance eigenvalues; larger keeps more low-frequency
                structure and amplifies less noise.
            max_dim: refuse ``C*H*W`` above this (the matrix is ``D x D``; 3x32x32 = 3072).
            chunk: images per step of the covariance sum (float64 accumulation).

        Raises:
            ValueError: not uint8 4-D, fewer than 2 images, or ``D > max_dim``.
        """
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"ZCA is fitted on uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        n, shape = images.shape[0], tuple(images.shape[1:])
        d = math.prod(shape)
        if n < 2:
            raise ValueError(f"ZCA needs at least 2 images, got {n}")
        if d > max_dim:
            raise ValueError(f"ZCA on {shape} images needs a {d}x{d} matrix (over max_dim={max_dim}); whiten "
                             f"32x32 inputs, or raise max_dim if you have the memory")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        total = torch.zeros(d, dtype=torch.float64)
        gram = torch.zeros(d, d, dtype=torch.float64)
        for start in range(0, n, chunk):
            x = images[start:start + chunk].reshape(-1, d).to(torch.float64) / 255.0
            total += x.sum(0)
            gram += x.T @ x
        mean = total / n
        cov = (gram - n * torch.outer(mean, mean)) / (n - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        scale = (eigvals.clamp_min(0) + epsilon).rsqrt()
        matrix = (eigvecs * scale) @ eigvecs.T
        return cls(mean, matrix, epsilon, shape)

    def apply(self, batch: Tensor) -> Tensor:
        """Whiten ``(B, C, H, W)`` floats in [0, 1] (uint8 is converted) on their own device.

        Returns:
            A new float32 tensor of the same shape, roughly zero-mean with identity covariance.
        """
        if tuple(batch.shape[1:]) != self.shape:
            raise ValueError(f"ZCA was fitted on {self.shape} images, got a batch of {tuple(batch.shape)}")
        x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
        mean, matrix = self.mean.to(x.device), self.matrix.to(x.device)
        if mean.device != self.mean.device:
            self.mean, self.matrix = mean, matrix  # move once, not per batch
        return ((x.reshape(len(x), -1) - mean) @ matrix).reshape(batch.shape)

    __call__ = apply

    def to(self, device: torch.device | str) -> ZCAWhitening:
        self.mean, self.matrix = self.mean.to(device), self.matrix.to(device)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only (safetensors-ready): mean, matrix, epsilon (0-d), shape (3,) int64; on CPU."""
        return {"mean": self.mean.cpu().contiguous(), "matrix": self.matrix.cpu().contiguous(),
                "epsilon": torch.tensor(self.epsilon, dtype=torch.float64),
                "shape": torch.tensor(self.shape, dtype=torch.int64)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> ZCAWhitening:
        missing = {"mean", "matrix", "epsilon", "shape"} - set(state)
        if missing:
            raise ValueError(f"ZCA state lacks {', '.join(sorted(missing))}; got keys {', '.join(sorted(state))}")
        return cls(state["mean"], state["matrix"], float(state["epsilon"]), tuple(state["shape"].tolist()))
