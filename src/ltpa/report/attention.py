"""The report's attention section: a run's checkpoint on a few test images, every level's map
drawn on each display scale, and the ``diagnose`` summary of the same maps.

Every (image, scale) pair is rendered once here with :func:`ltpa.attention.attention_grid`;
the HTML switches between the pre-rendered pictures, so the file needs no plotting code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltpa.attention import DISPLAY_MODES, attention_grid, compute_maps, explain, summarise_maps
from ltpa.report.figures import figure_uri, plain_text

__all__ = ["Frame", "AttentionPanel", "attention_panel"]


@dataclass(frozen=True)
class Frame:
    """One test image: a caption and its overlay grid as a ``data:`` URI per display mode."""

    index: int
    caption: str
    correct: bool | None
    images: dict[str, str]


@dataclass(frozen=True)
class AttentionPanel:
    """What the attention and diagnose sections show.

    Attributes:
        checkpoint: the checkpoint the maps come from.
        source: which images, in words.
        levels: ``{"name", "stride", "shape"}`` per level, in model order.
        normalisation: ``"softmax"``, ``"sigmoid"`` or ``"cam"``.
        frames: the images shown, correct predictions first, then wrong ones.
        pool: images the model ran on (the diagnose summary covers all of them).
        correct, wrong: how many of the pool were predicted right / wrong (None without labels).
        summary: :func:`ltpa.attention.summarise_maps` of the pool; explanation: its words.
    """

    checkpoint: Path
    source: str
    levels: list[dict]
    normalisation: str
    frames: list[Frame]
    pool: int
    correct: int | None
    wrong: int | None
    summary: dict
    explanation: str
    modes: tuple[str, ...] = field(default=DISPLAY_MODES)


def _pick(correct: torch.Tensor | None, count: int, total: int) -> list[int]:
    """Up to ``count`` of ``total`` indices: half correct and half wrong predictions where both
    exist (the first ones without labels)."""
    if correct is None:
        return list(range(min(count, total)))
    right = torch.nonzero(correct).flatten().tolist()
    wrong = torch.nonzero(~correct).flatten().tolist()
    take_wrong = min(len(wrong), count // 2)
    take_right = min(len(right), count - take_wrong)
    take_wrong = min(len(wrong), count - take_right)
    return right[:take_right] + wrong[:take_wrong]


def attention_panel(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    images: int = 8,
    pool: int = 64,
    batch_size: int = 64,
    dpi: float = 100,
) -> AttentionPanel:
    """Run ``checkpoint`` on the first ``pool`` test images and draw ``images`` of them.

    Args:
        checkpoint: an ltpa checkpoint sidecar (``RUN/checkpoints/best.json``).
        data: data spec of the images (default the run's own ``config.data``).
        images: how many images to draw (half correct, half wrong where possible), >= 1.
        pool: how many test images to run (and summarise for diagnose), >= ``images``.
        batch_size: images per forward pass.
        dpi: resolution of the pictures.

    Raises:
        ValueError: bad counts, a model without attention maps, unknown data spec.
        FileNotFoundError: the data (or the checkpoint) is missing.
        ltpa.train.CheckpointError: the checkpoint is not a readable ltpa checkpoint.
    """
    from ltpa.attention.ground_truth import load_evaluation_set
    from ltpa.inference import load_trained

    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be an int >= 1 (pictures to draw), got {images!r}")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < images:
        raise ValueError(f"pool must be an int >= images ({images}), got {pool!r}")
    trained = load_trained(checkpoint)
    config = trained.config
    # Only the test split is read: a one-image train split spares generating the synthetic one
    # (each split has its own random stream, so the test images do not change).
    defaults = {"num_classes": config.num_classes, "seed": config.data_seed, "num_test": config.num_test,
                "num_train": 1}
    evaluation = load_evaluation_set(data or config.data, image_size=config.image_size, limit=pool,
                                     split="test", synthetic_defaults=defaults, resize_mode=config.resize_mode)
    maps = compute_maps(trained.model, trained.prepare(evaluation.images), batch_size=batch_size)
    names = trained.class_names
    targets = evaluation.targets
    correct = (maps.predictions == targets) if targets is not None else None
    chosen = _pick(correct, images, len(evaluation.images))
    probabilities = maps.logits.float().softmax(dim=1)
    pixels = evaluation.images.permute(0, 2, 3, 1).numpy()
    level_names = [level.name for level in maps.levels]
    strides = [level.stride for level in maps.levels]

    frames = []
    for index in chosen:
        predicted = int(maps.predictions[index])
        label = f"predicted {names[predicted]} ({float(probabilities[index, predicted]):.0%})"
        title = f"pred: {names[predicted]}"
        is_correct = None if correct is None else bool(correct[index])
        if targets is not None:
            label += f", true {names[int(targets[index])]}: " + ("correct" if is_correct else "wrong")
            title += f"\ntrue: {names[int(targets[index])]}"
        pictures = {}
        for mode in DISPLAY_MODES:
            figure = attention_grid(pixels[index:index + 1], [m[index:index + 1] for m in maps.upsampled],
                                    level_names=level_names, strides=strides, titles=[plain_text(title)],
                                    mode=mode)
            pictures[mode] = figure_uri(figure, dpi=dpi)
        frames.append(Frame(index, f"test image {index}: {label}", is_correct, pictures))

    summary = summarise_maps(maps)
    return AttentionPanel(
        checkpoint=Path(trained.checkpoint),
        source=evaluation.description,
        levels=[{"name": lv.name, "stride": lv.stride, "shape": list(m.shape[-2:])}
                for lv, m in zip(maps.levels, maps.maps)],
        normalisation=maps.normalisation,
        frames=frames,
        pool=len(evaluation.images),
        correct=None if correct is None else int(correct.sum()),
        wrong=None if correct is None else int((~correct).sum()),
        summary=summary,
        explanation=explain(summary),
    )
