"""Images with localisation ground truth, from any spec: synthetic, CUB, mask folders, others.

The images come out at the model's training size with every annotation transformed with them,
ready for :func:`~ltpa.attention.report.localise` and :func:`~ltpa.attention.diagnostics.diagnose`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["EvaluationSet", "load_evaluation_set"]


@dataclass(frozen=True)
class EvaluationSet:
    """uint8 images ``(N, 3, S, S)`` and whatever ground truth their source has (else None)."""

    images: Tensor
    targets: Tensor | None
    masks: Tensor | None
    boxes: Tensor | None
    parts: Tensor | None
    part_visible: Tensor | None
    part_names: tuple[str, ...]
    description: str

    def ground_truth(self) -> dict:
        """Keyword arguments for :func:`~ltpa.attention.report.localise`."""
        return {"masks": self.masks, "boxes": self.boxes, "parts": self.parts,
                "part_visible": self.part_visible, "part_names": self.part_names or None,
                "targets": self.targets}


def load_evaluation_set(spec: str, *, image_size: int, limit: int | None = None, split: str = "test",
                        synthetic_defaults: dict | None = None) -> EvaluationSet:
    """Load ``split`` of a data spec at ``image_size`` with its annotations.

    Args:
        spec: ``"synthetic[,options]"``, ``"cub:PATH"``, ``"masks:PATH"`` (a folder of images with
            binary masks of the same stems, see :func:`~ltpa.data.masks.load_mask_folder`), or any
            other spec of :func:`~ltpa.data.sources.load_data` (images and labels only).
        image_size: side of the square images the model sees.
        limit: keep the first ``limit`` images.
        split: ``"test"`` or ``"train"``.
        synthetic_defaults: options for the synthetic set (the run's own class count and seed).

    Raises:
        ValueError: unknown spec or split; FileNotFoundError: missing files.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if spec.startswith("masks:"):
        from ..data.masks import load_mask_folder

        folder = load_mask_folder(spec.split(":", 1)[1], image_size, limit=limit)
        return EvaluationSet(folder.images, None, folder.masks, folder.boxes, None, None, (),
                             f"{len(folder.images)} images with masks from {spec[6:]}")
    from ..data.materialise import materialise
    from ..data.sources import load_data

    options = dict(synthetic_defaults or {})
    options.setdefault("image_size", image_size)
    source = load_data(spec, synthetic_options=options)
    data = getattr(source, split)
    if limit is not None:
        data = data.select(torch.arange(min(limit, len(data))))
    images, boxes, parts = materialise(data, size=image_size)
    masks = data.masks if data.masks is not None and tuple(data.masks.shape[1:]) == (image_size, image_size) else None
    return EvaluationSet(images, data.targets, masks, boxes, parts, data.part_visible, tuple(data.part_names),
                         f"{len(images)} {split} images of {source.name}")

