"""Images with localisation ground truth, from any spec: synthetic, CUB, mask folders, others.

The images come out exactly as a training run with the same ``image_size`` and ``resize_mode``
saw them (the same decoding, crop and resize: :func:`~ltpa.data.materialise.prepare_split`), with
every annotation (boxes, keypoints, masks) moved by the same crop and resize, ready for
:func:`~ltpa.attention.report.localise` and :func:`~ltpa.attention.diagnostics.diagnose`.
:func:`ltpa.inference.evaluation_set` fills the preprocessing in from a checkpoint's config.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.materialise import BBOX_MARGIN, MODES, prepare_split

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
                        synthetic_defaults: dict | None = None, resize_mode: str = "resize_crop",
                        bbox_margin: float = BBOX_MARGIN) -> EvaluationSet:
    """Load ``split`` of a data spec as a run at ``image_size`` with ``resize_mode`` saw it.

    Args:
        spec: ``"synthetic[,options]"``, ``"cub:PATH"``, ``"masks:PATH"`` (a folder of images with
            binary masks of the same stems, see :func:`~ltpa.data.masks.load_mask_folder`), or any
            other spec of :func:`~ltpa.data.sources.load_data` (images and labels only).
        image_size: side of the square images the model sees.
        limit: keep the first ``limit`` images (>= 1).
        split: ``"test"`` or ``"train"``.
        synthetic_defaults: options for the synthetic set (the run's own class count and seed).
        resize_mode: the run's ``resize_mode``: ``resize_crop``, ``squash`` or ``bbox_crop``
            (around each annotated box; for ``masks:`` around each mask's tight box).
        bbox_margin: the fraction of the box's side ``bbox_crop`` adds per side.

    Raises:
        ValueError: unknown spec, split or resize mode, ``bbox_crop`` for a set without boxes,
            a bad ``limit``; FileNotFoundError: missing files.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if resize_mode not in MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(MODES)}, got {resize_mode!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number >= 1 (images to use), got {limit!r}")
    if spec.startswith("masks:"):
        from ..data.masks import load_mask_folder

        folder = load_mask_folder(spec.split(":", 1)[1], image_size, limit=limit, mode=resize_mode,
                                  bbox_margin=bbox_margin)
        return EvaluationSet(folder.images, None, folder.masks, folder.boxes, None, None, (),
                             f"{len(folder.images)} images with masks from {spec[6:]} ({resize_mode})")
    from ..data.sources import load_data

    options = dict(synthetic_defaults or {})
    options.setdefault("image_size", image_size)
    source = load_data(spec, synthetic_options=options)
    data = getattr(source, split)
    if limit is not None:
        data = data.select(torch.arange(min(limit, len(data))))
    if resize_mode == "bbox_crop" and data.boxes is None and data.files is not None:
        raise ValueError(f"the run was trained with resize_mode=bbox_crop, but {spec!r} has no bounding boxes to "
                         f"crop around; evaluate on data with boxes (e.g. cub:PATH with bounding_boxes.txt)")
    data = prepare_split(data, image_size, resize_mode, bbox_margin=bbox_margin)
    return EvaluationSet(data.images, data.targets, data.masks, data.boxes, data.parts, data.part_visible,
                         tuple(data.part_names), f"{len(data)} {split} images of {source.name} ({resize_mode})")

