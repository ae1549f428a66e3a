"""The paper's baselines: cifar.torch's VGG (``vgg``) and the CAM model VGG-GAP (``vgg_gap``).

Both share state-dict names with VGG-att (``trunk.convN``, ``global.fc``, ``head.classifier``)
so that weights move between them by name.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import build, register_model
from .blocks import ClassifierHead, LinearHeadMixin
from .output import AttentionOutput, LevelInfo
from .trunk import VGGTrunk, attention_plan, scale_width, vgg_bn_drop_plan
from .vgg_att import as_size, check_images, default_first_pool

__all__ = ["VGG", "VGGGAP"]


class VGG(nn.Module):
    """cifar.torch's ``vgg_bn_drop``: 13 convs, 5 pools, Dropout -> Linear(512) -> BN -> ReLU ->
    Dropout -> Linear. Inputs larger than 32 px end with a global max-pool.

    Args:
        num_classes: classes K.
        width: channel multiplier (1.0 = the paper).
        dropout: keep the dropout layers.
        input_size: design size (recorded; any input of at least ``min_input_size`` runs).
        checkpointing: activation checkpointing of the trunk (less memory, ~1 extra forward).
        in_channels: image channels.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        width: float = 1.0,
        dropout: bool = True,
        input_size: int | Sequence[int] = 32,
        checkpointing: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = as_size(input_size)
        self.options = dict(width=width, dropout=dropout, input_size=self.input_size,
                            checkpointing=checkpointing, in_channels=in_channels)
        self.trunk = VGGTrunk(vgg_bn_drop_plan(), in_channels=in_channels, width=width, dropout=dropout,
                              checkpointing=checkpointing)
        self.min_input_size = self.trunk.min_input_size
        self.add_module("global", nn.Sequential())
        self._modules["global"].add_module("drop", nn.Dropout(0.5) if dropout else nn.Identity())
        self._modules["global"].add_module(
            "fc", nn.Linear(self.trunk.out_channels, scale_width(512, width)))
        self.head = ClassifierHead([scale_width(512, width)], num_classes, dropout=0.5 if dropout else 0.0)
        self.levels: tuple[LevelInfo, ...] = ()

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        check_images(images, in_channels=self.in_channels, min_size=self.min_input_size, model="VGG")
        taps = self.trunk(images)
        return {"global": self._modules["global"](taps["pool13"].flatten(1))}

    def forward_head(self, features: dict[str, Tensor]) -> AttentionOutput:
        logits, head_features = self.head([features["global"]])
        return AttentionOutput(logits, (), None, (), head_features, "none")

    def forward(self, images: Tensor) -> AttentionOutput:
        return self.forward_head(self.forward_features(images))

    def reset_classifier(self, num_classes: int) -> None:
        self.head.reset(num_classes)
        self.num_classes = num_classes


class VGGGAP(LinearHeadMixin, nn.Module):
    """VGG-GAP for Class Activation Mapping (Zhou et al. 2016) on the VGG-att trunk.

    conv1..conv13 of the attention trunk (so the map has VGG-att3's conv13 geometry, 8x8 at
    32 px), global average pooling, one Linear. ``maps`` holds the CAM of the predicted class
    (or of ``target_classes`` passed to :meth:`cam`), rectified and scaled to sum to 1;
    ``scores`` holds the raw CAM.

    Args:
        num_classes: classes K.
        width, dropout, input_size, first_pool, checkpointing, in_channels: as for
            :class:`VGGAttention`.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        width: float = 1.0,
        dropout: bool = True,
        input_size: int | Sequence[int] = 32,
        first_pool: int | None = None,
        checkpointing: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = as_size(input_size)
        first_pool = default_first_pool(self.input_size) if first_pool is None else int(first_pool)
        self.options = dict(width=width, dropout=dropout, input_size=self.input_size,
                            first_pool=first_pool, checkpointing=checkpointing, in_channels=in_channels)
        self.trunk = VGGTrunk(attention_plan(first_pool, depth=13), in_channels=in_channels,
                              width=width, dropout=dropout, checkpointing=checkpointing)
        self.min_input_size = self.trunk.min_input_size
        stride = self.trunk.strides["conv13"]
        self.levels = (LevelInfo("conv13", self.trunk.out_channels, float(stride), stride / 2.0),)
        self.head = nn.Module()
        self.head.classifier = nn.Linear(self.trunk.out_channels, num_classes)

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        check_images(images, in_channels=self.in_channels, min_size=self.min_input_size, model="VGGGAP")
        return {"conv13": self.trunk(images)["conv13"]}

    def cam(self, local: Tensor, target_classes: Tensor) -> Tensor:
        """Raw class activation maps ``(B, 1, h, w)`` of ``target_classes`` (B,) for conv13 (B, C, h, w)."""
        weights = self.head.classifier.weight[target_classes]  # (B, C)
        return torch.einsum("bchw,bc->bhw", local, weights.to(local.dtype)).unsqueeze(1)

    def forward_head(self, features: dict[str, Tensor]) -> AttentionOutput:
        local = features["conv13"]
        pooled = local.mean(dim=(2, 3))
        logits = self.head.classifier(pooled)
        raw = self.cam(local, logits.argmax(dim=1))
        return AttentionOutput(logits, (rectify_and_normalise(raw),), (raw,), self.levels, pooled, "cam")


def rectify_and_normalise(raw: Tensor) -> Tensor:
    """ReLU then scale each map to sum to 1; an all-negative map becomes uniform, not NaN."""
    flat = F.relu(raw.float()).flatten(1)  # (B, h*w)
    total = flat.sum(dim=1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    return torch.where(total > 0, flat / total.clamp_min(1e-12), uniform).view_as(raw)


@register_model
def vgg(**options) -> VGG:
    """The VGG baseline of the paper (cifar.torch's vgg_bn_drop)."""
    return build(VGG, options)


@register_model
def vgg_gap(**options) -> VGGGAP:
    """VGG-GAP: the CAM baseline (global average pooling over conv13 + Linear)."""
    return build(VGGGAP, options)
