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
from ..errors import Phrase, UserError

# The fix when no validation images exist: score part of the evaluation set, calibrate on the rest.
_HOLD_OUT = Phrase("hold_out(evaluation, 50)", "--calibrate 50")

__all__ = ["EvaluationSet", "hold_out", "load_evaluation_set", "load_validation_set"]


@dataclass(frozen=True)
class EvaluationSet:
    """uint8 images ``(N, 3, S, S)`` and whatever ground truth their source has (else None).

    ``groups`` ``(N,)`` int64 index into ``group_names``: the class folder of each image of a
    ``masks:`` folder with several classes (None otherwise); the report has a table per group.
    ``notes``: what the loader left out (e.g. images without a mask), for the report.
    """

    images: Tensor
    targets: Tensor | None
    masks: Tensor | None
    boxes: Tensor | None
    parts: Tensor | None
    part_visible: Tensor | None
    part_names: tuple[str, ...]
    description: str
    groups: Tensor | None = None
    group_names: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def select(self, index: slice | Tensor, description: str | None = None) -> EvaluationSet:
        """The images in ``index`` (a slice or int64 indices) with their ground truth."""
        def part(value):
            return None if value is None else value[index]

        return EvaluationSet(self.images[index], part(self.targets), part(self.masks), part(self.boxes),
                             part(self.parts), part(self.part_visible), self.part_names,
                             self.description if description is None else description, part(self.groups),
                             self.group_names, self.notes)

    def ground_truth(self) -> dict:
        """Keyword arguments for :func:`~ltpa.attention.report.localise`."""
        return {"masks": self.masks, "boxes": self.boxes, "parts": self.parts,
                "part_visible": self.part_visible, "part_names": self.part_names or None,
                "targets": self.targets, "groups": self.groups, "group_names": self.group_names or None,
                "notes": self.notes or None}


def load_evaluation_set(spec: str, *, image_size: int, limit: int | None = None, split: str = "test",
                        synthetic_defaults: dict | None = None, resize_mode: str = "resize_crop",
                        bbox_margin: float = BBOX_MARGIN, indices: Tensor | None = None) -> EvaluationSet:
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
        indices: keep these images of the split (before ``limit``), e.g. a run's validation
            images; not for ``masks:`` folders.

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
        if indices is not None:
            raise UserError(f"{spec!r} is a folder of images with masks, without a training split to take "
                            "validation images from; hold out part of it instead (e.g. ", _HOLD_OUT, ")")
        from ..data.masks import load_mask_folder
        from ..data.sources import check_options, parse_data_spec

        parsed = parse_data_spec(spec)
        check_options("masks", parsed.options, ("subset",))
        folder = load_mask_folder(parsed.root, image_size, limit=limit, mode=resize_mode, bbox_margin=bbox_margin,
                                  subset=str(parsed.options.get("subset", "auto")))
        counts = torch.bincount(folder.labels, minlength=len(folder.class_names)).tolist()
        classes = ", ".join(f"{name} {count}" for name, count in zip(folder.class_names, counts))
        empty = int((~folder.masks.flatten(1).any(1)).sum())
        notes = []
        if folder.missing_masks:
            notes.append(f"{len(folder.missing_masks)} image(s) without a mask left out: "
                         f"{', '.join(folder.missing_masks)}")
        if empty:
            notes.append(f"{empty} image(s) with an empty mask (no object) kept")
        text = f"{len(folder.images)} images with masks from {parsed.root} ({resize_mode}; {classes})"
        if notes:
            text += "; " + "; ".join(notes)
        return EvaluationSet(folder.images, None, folder.masks, folder.boxes, None, None, (), text,
                             folder.labels if len(folder.class_names) > 1 else None,
                             folder.class_names if len(folder.class_names) > 1 else (), tuple(notes))
    from ..data.sources import load_data

    options = dict(synthetic_defaults or {})
    options.setdefault("image_size", image_size)
    source = load_data(spec, synthetic_options=options)
    data = getattr(source, split)
    if indices is not None:
        data = data.select(torch.as_tensor(indices, dtype=torch.int64))
    if limit is not None:
        data = data.select(torch.arange(min(limit, len(data))))
    if resize_mode == "bbox_crop" and data.boxes is None and data.files is not None:
        raise ValueError(f"the run was trained with resize_mode=bbox_crop, but {spec!r} has no bounding boxes to "
                         f"crop around; evaluate on data with boxes (e.g. cub:PATH with bounding_boxes.txt)")
    data = prepare_split(data, image_size, resize_mode, bbox_margin=bbox_margin)
    return EvaluationSet(data.images, data.targets, data.masks, data.boxes, data.parts, data.part_visible,
                         tuple(data.part_names), f"{len(data)} {split} images of {source.name} ({resize_mode})")



def load_validation_set(config, spec: str | None = None, *, limit: int | None = None) -> EvaluationSet:
    """A run's validation images with their ground truth: the class-stratified part of its
    training split that the trainer held out (:func:`ltpa.train.stratified_split` with the run's
    ``subset_train``, ``val_fraction`` and ``data_seed``), prepared as the run prepared them.
    They share no image with the test split, so thresholds chosen on them are honest.

    Args:
        config: the run's :class:`~ltpa.train.config.TrainConfig` (e.g. ``trained.config``).
        spec: the data spec; default the run's own. Another spec's training split was not the
            run's, so its "validation images" would be arbitrary: that is refused.
        limit: keep the first ``limit`` validation images.

    Raises:
        ValueError: another spec than the run's, a run without a validation split, or a
            ``masks:`` folder (no training split).
    """
    from ..data.splits import stratified_split

    spec = spec or config.data
    if spec != config.data:
        raise UserError(f"validation images exist for the run's own data ({config.data!r}), not for {spec!r}; "
                        "hold out part of the evaluation set instead (e.g. ", _HOLD_OUT, ")")
    if config.val_fraction <= 0:
        raise UserError("this run has no validation split (val_fraction=0); hold out part of the evaluation "
                        "set instead (e.g. ", _HOLD_OUT, ")")
    defaults = {"num_classes": config.num_classes, "seed": config.data_seed, "num_test": config.num_test,
                "num_train": config.num_train}
    options = dict(image_size=config.image_size, synthetic_defaults=defaults, resize_mode=config.resize_mode)
    if spec.startswith("masks:"):
        return load_evaluation_set(spec, indices=torch.zeros(0), **options)  # refused there, with the fix
    from ..data.sources import load_data

    targets = torch.as_tensor(load_data(spec, synthetic_options={**defaults, "image_size": config.image_size})
                              .train.targets, dtype=torch.int64)
    kept = torch.arange(len(targets))
    if 0 < config.subset_train < len(targets):  # the trainer's class-stratified subset, then its split
        _, kept = stratified_split(targets, config.subset_train / len(targets), config.data_seed)
    _, val = stratified_split(targets[kept], config.val_fraction, config.data_seed)
    chosen = kept[val]
    evaluation = load_evaluation_set(spec, split="train", limit=limit, indices=chosen, **options)
    return EvaluationSet(evaluation.images, evaluation.targets, evaluation.masks, evaluation.boxes,
                         evaluation.parts, evaluation.part_visible, evaluation.part_names,
                         f"{len(evaluation.images)} validation images (held out of the training split) of "
                         f"{evaluation.description.split(' of ', 1)[-1]}")


def hold_out(evaluation: EvaluationSet, count: int) -> tuple[EvaluationSet, EvaluationSet]:
    """Split ``evaluation`` into a calibration part (its first ``count`` images) and the scored
    rest, which share no image. With ``groups`` (a ``masks:`` folder of several classes) the
    calibration part takes the first images of every class in turn (class 0's first, class 1's
    first, ..., then the seconds), so every class is scored and the threshold is not chosen on
    one class alone.

    Raises:
        ValueError: ``count`` leaves no image on either side.
    """
    total = len(evaluation.images)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count < total:
        raise UserError(f"the calibration count {count!r} must hold out between 1 and {total - 1} of the {total} "
                        "evaluation images (the rest are scored); ",
                        Phrase("load more images (limit)", "raise --limit"), " or hold out fewer")
    if evaluation.groups is None:
        order = torch.arange(total)
    else:  # rank of each image within its class, then class: round-robin over the classes
        groups = torch.as_tensor(evaluation.groups, dtype=torch.int64)
        rank = torch.zeros(total, dtype=torch.int64)
        for group in groups.unique():
            members = (groups == group).nonzero().flatten()
            rank[members] = torch.arange(len(members))
        order = torch.as_tensor(sorted(range(total), key=lambda i: (int(rank[i]), int(groups[i]), i)))
    held_index, scored_index = order[:count].sort().values, order[count:].sort().values
    return (evaluation.select(held_index, f"{count} held-out images of {evaluation.description}"),
            evaluation.select(scored_index, f"{total - count} scored images of {evaluation.description}"))
