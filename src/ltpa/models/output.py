"""The one output type every ltpa model returns, and the per-level geometry it carries."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["LevelInfo", "AttentionOutput"]


@dataclass(frozen=True)
class LevelInfo:
    """Where one attended level sits in the network and on the input image.

    Attributes:
        name: trunk layer the local features come from, e.g. ``"conv7"``; also the key of that
            level in ``forward_features``'s dict.
        channels: width of the local features ``l`` at this level (before any up-projection).
        stride: input pixels between two neighbouring map positions (same along x and y).
        offset: continuous input coordinate (x and y) of the centre of map position 0. ltpa
            uses one convention everywhere: pixel ``i`` spans ``[i, i+1)``, so its centre is
            ``i + 0.5``. Map position ``j`` is centred at ``offset + j * stride``; a chain of
            k x k / stride-k max-pools over same-padded convs gives ``offset == stride / 2``.
    """

    name: str
    channels: int
    stride: float
    offset: float


@dataclass(frozen=True)
class AttentionOutput:
    """What ``model(images)`` returns, the same type for attention models and baselines.

    Attributes:
        logits: ``(B, num_classes)``.
        maps: one ``(B, 1, h, w)`` map per level, in ``levels`` order. ``normalisation`` says
            how they are normalised: ``"softmax"`` maps sum to 1 over the ``h*w`` positions,
            ``"sigmoid"`` maps lie in (0, 1), ``"cam"`` maps (VGG-GAP) are the class activation
            map of the predicted class, rectified and scaled to sum to 1. Empty for models
            without maps.
        scores: the raw, unnormalised compatibility scores ``(B, 1, h, w)`` per level (the raw
            CAM for VGG-GAP), or ``None`` for models without maps.
        levels: geometry of each map, see :class:`LevelInfo`.
        features: ``(B, D)``, the input of the final classifier (the concatenated attended
            vectors ``g_a`` for ``concat`` heads, ``g`` for baselines).
        normalisation: ``"softmax"``, ``"sigmoid"``, ``"cam"`` or ``"none"``.
    """

    logits: Tensor
    maps: tuple[Tensor, ...]
    scores: tuple[Tensor, ...] | None
    levels: tuple[LevelInfo, ...]
    features: Tensor
    normalisation: str
