"""VGG-att (Jetley et al. 2018, Sec. 3-4): attention over conv7/conv10/conv13 of an enlarged VGG.

Faithful to the official Lua code by default (see ``../shared/PAPER.md``); the paper-text and
PyTorch-port behaviours are keyword options.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ._registry import build, register_model
from .blocks import ClassifierHead, LevelAttentionMixin
from .output import AttentionOutput, LevelInfo
from .trunk import VGGTrunk, attention_plan, scale_width

__all__ = ["VGGAttention", "check_images", "check_choices", "as_size"]

ATTENDABLE = (7, 10, 13)
_CHOICES = {
    "compat": ("pc", "dp"),
    "head": ("concat", "indep"),
    "normalisation": ("softmax", "sigmoid"),
    "placement": ("before", "after"),
    "channel_match": ("project_g", "project_l"),
    "indep_reduce": ("logits", "log_softmax"),
}


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``32`` or ``(50, 70)`` -> ``(H, W)``, validated."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError) as err:
        raise ValueError(f"input_size must be an int or (height, width), got {size!r}") from err
    if height < 1 or width < 1:
        raise ValueError(f"input_size must be positive, got {size!r}")
    return height, width


def default_first_pool(input_size: tuple[int, int]) -> int:
    """2 for CIFAR-scale inputs; for >= 80 px, the pool that brings conv10 to ~16x16.

    80 px gives the paper's 5x5 / stride-5 CUB pool, 224 px gives 14; the attended levels
    then keep the CIFAR geometry whatever the input size.
    """
    short = min(input_size)
    return 2 if short < 80 else short // 16


def check_images(images: Tensor, *, in_channels: int, min_size: int, model: str) -> None:
    """Raise a clear error for a batch the model cannot take (wrong rank, channels or size)."""
    if images.ndim != 4:
        raise ValueError(
            f"{model} expects a batch of images (B, C, H, W), got a tensor of shape {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0)"
        )
    if images.shape[1] != in_channels:
        raise ValueError(
            f"{model} expects {in_channels}-channel images, got {images.shape[1]} channels "
            f"(shape {tuple(images.shape)}); convert grayscale/RGBA images to RGB, or build the "
            f"model with in_channels={images.shape[1]}"
        )
    if min(images.shape[2:]) < min_size:
        raise ValueError(
            f"{model} needs inputs of at least {min_size}x{min_size} px for its pooling layers, "
            f"got {tuple(images.shape[2:])}; resize the images or use fewer/earlier pools"
        )


def check_choices(**values: str) -> None:
    """Raise a ValueError naming the option, the value and the allowed values, for the first bad one."""
    for key, value in values.items():
        if value not in _CHOICES[key]:
            raise ValueError(f"{key} must be one of {_CHOICES[key]}, got {value!r}")


class VGGAttention(LevelAttentionMixin, nn.Module):
    """VGG trunk + global vector g + attention over chosen levels + classifier.

    All arguments are keyword-only; registered builders (``vgg_att1/2/3``, ``vgg_noatt``) fix
    ``levels`` (and ``attention``).

    Args:
        num_classes: classes K.
        levels: which conv outputs to attend, a subset of (7, 10, 13).
        attention: False gives the paper's missing ablation: the same enlarged trunk and g, then
            the classifier on g (no attention parameters).
        compat: ``"pc"`` (parametrised, default) or ``"dp"`` (dot product, no parameters).
        head: ``"concat"`` (one classifier on the concatenated g_a) or ``"indep"`` (one per level).
        indep_reduce: how ``indep`` combines levels: summed ``"logits"`` (official pc models) or
            summed ``"log_softmax"`` (official att2-dp); the same loss and predictions.
        normalisation: ``"softmax"`` (default) or ``"sigmoid"``.
        placement: attend the ReLU output ``"before"`` the max-pool that follows (default,
            official) or the pooled map ``"after"`` it (SaoYan's port option).
        channel_match: when a level is narrower than g, ``"project_g"`` maps g down per width
            (official code) or ``"project_l"`` maps l up with a 1x1 conv (paper text).
        dropout: keep every dropout layer (False removes them, e.g. for SaoYan-style training).
        width: channel multiplier; 1.0 is the paper, 0.25 a CPU-scale model.
        input_size: the image size the model is designed for (int or (H, W)); it picks the pool
            after conv7 (see ``first_pool``). Any input of at least ``min_input_size`` runs.
        first_pool: kernel (= stride) of the max-pool after conv7; default 2 below 80 px, else
            ``min(input_size) // 16`` (5 at 80 px, the paper's CUB model).
        grad_average: reproduce the official code's hand-written backward, which averages
            gradients where branches join (needed for its lr 1.0 recipe).
        checkpointing: activation checkpointing of the trunk (less memory, ~1 extra forward).
        compat_init: init of the ``pc`` vector u: ``"msr"`` (official code, N(0, sqrt 2): nearly
            one-hot attention at the start) or ``"default"`` (PyTorch's small init: near-uniform).
        in_channels: image channels.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        levels: Sequence[int] = (7, 10, 13),
        attention: bool = True,
        compat: str = "pc",
        head: str = "concat",
        indep_reduce: str = "logits",
        normalisation: str = "softmax",
        placement: str = "before",
        channel_match: str = "project_g",
        dropout: bool = True,
        width: float = 1.0,
        input_size: int | Sequence[int] = 32,
        first_pool: int | None = None,
        grad_average: bool = False,
        checkpointing: bool = False,
        compat_init: str = "msr",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_choices(compat=compat, head=head, normalisation=normalisation, placement=placement,
                      channel_match=channel_match, indep_reduce=indep_reduce)
        levels = tuple(sorted(set(levels)))
        if attention and (not levels or any(level not in ATTENDABLE for level in levels)):
            raise ValueError(f"levels must be a non-empty subset of {ATTENDABLE}, got {levels!r}")
        if not (0 < width <= 4):
            raise ValueError(f"width must be in (0, 4], got {width!r}")
        self.input_size = as_size(input_size)
        first_pool = default_first_pool(self.input_size) if first_pool is None else int(first_pool)
        if first_pool < 1:
            raise ValueError(f"first_pool must be >= 1, got {first_pool}")
        self.num_classes = num_classes
        self.use_attention = attention
        self.grad_average = grad_average
        self.normalisation = normalisation if attention else "none"
        self.in_channels = in_channels
        self.options = dict(levels=levels, attention=attention, compat=compat, head=head,
                            indep_reduce=indep_reduce, normalisation=normalisation,
                            placement=placement, channel_match=channel_match, dropout=dropout,
                            width=width, input_size=self.input_size, first_pool=first_pool,
                            grad_average=grad_average, checkpointing=checkpointing,
                            compat_init=compat_init, in_channels=in_channels)

        self.trunk = VGGTrunk(attention_plan(first_pool), in_channels=in_channels, width=width,
                              dropout=dropout, checkpointing=checkpointing)
        g_dim = scale_width(512, width)
        self.add_module("global", nn.Sequential())  # registered under the readable name "global"
        self.global_branch.add_module("drop", nn.Dropout(0.5) if dropout else nn.Identity())
        self.global_branch.add_module("fc", nn.Linear(self.trunk.out_channels, g_dim))
        self.min_input_size = self.trunk.min_input_size

        level_infos = []
        for level in levels if attention else ():
            tap = f"conv{level}" if placement == "before" else f"pool{level}"
            stride = self.trunk.strides[tap]
            level_infos.append(LevelInfo(tap, self.trunk.channels[tap], float(stride), stride / 2.0))
        self.levels: tuple[LevelInfo, ...] = tuple(level_infos)
        head_dropout = 0.5 if dropout else 0.0
        if attention:
            self._build_attention(g_dim, num_classes, compat=compat, normalisation=normalisation,
                                  channel_match=channel_match, head=head, indep_reduce=indep_reduce,
                                  g_dropout=head_dropout, head_dropout=head_dropout, compat_init=compat_init)
        else:
            self.head = ClassifierHead([g_dim], num_classes, mode=head, indep_reduce=indep_reduce,
                                       dropout=head_dropout)

    @property
    def global_branch(self) -> nn.Sequential:
        """The global-feature layers (Dropout -> Linear), state-dict prefix ``global.``."""
        return self._modules["global"]

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        """Images (B, C, H, W) -> ``{level name: local features (B, C_s, h, w), "global": g (B, D)}``."""
        check_images(images, in_channels=self.in_channels, min_size=self.min_input_size,
                     model=type(self).__name__)
        taps = self.trunk(images)
        features = {info.name: taps[info.name] for info in self.levels}
        features["global"] = self.global_branch(taps["pool15"].flatten(1))
        return features

    def forward_head(self, features: dict[str, Tensor]) -> AttentionOutput:
        """Attention and classifier on the output of :meth:`forward_features`."""
        if self.use_attention:
            return super().forward_head(features)
        logits, head_features = self.head([features["global"]])
        return AttentionOutput(logits, (), None, (), head_features, "none")


@register_model
def vgg_att1(**options) -> VGGAttention:
    """VGG-att1: attention over conv13 (8x8 at 32 px)."""
    return build(VGGAttention, options, levels=(13,))


@register_model
def vgg_att2(**options) -> VGGAttention:
    """VGG-att2: attention over conv10 and conv13 (the paper's CUB model)."""
    return build(VGGAttention, options, levels=(10, 13))


@register_model
def vgg_att3(**options) -> VGGAttention:
    """VGG-att3: attention over conv7, conv10 and conv13 (32x32, 16x16, 8x8 at 32 px)."""
    return build(VGGAttention, options, levels=(7, 10, 13))


@register_model
def vgg_noatt(**options) -> VGGAttention:
    """The enlarged VGG-att trunk and g with a plain classifier: the ablation the paper lacks."""
    return build(VGGAttention, options, attention=False, levels=())
