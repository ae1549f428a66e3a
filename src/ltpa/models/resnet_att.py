"""RN-att (Jetley et al. 2018, Sec. 4): attention over the stages of a pre-activation ResNet-164.

Trunk: He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016), the CIFAR
bottleneck model: a 3x3 stem conv of 16 channels, then three stages of ``n = (depth - 2) / 9``
pre-activation bottlenecks with inner widths 16, 32, 64 and output widths 64, 128, 256, at
strides 1, 2, 4 (32x32, 16x16, 8x8 for 32 px inputs). Depth 164 (n = 18) is the paper's.

Choices the paper does not pin down, made here and documented:

- Downsampling happens in the bottleneck's 3x3 conv (stride 2, pad 1), as fb.resnet.torch's
  ``preresnet`` does, with a strided 1x1 projection shortcut. Putting the stride in the first
  1x1 conv instead (He et al.'s original Torch code) changes neither the parameter count nor
  the geometry below.
- The local features of a stage are its raw output (the residual sum, before any BN/ReLU),
  because pre-activation ResNets apply BN -> ReLU at the start of the next block, not at the
  end of this one. The first block of every stage shares its BN -> ReLU between the residual
  and the projection shortcut (He et al.'s ``both_preact``).
- Trunk BatchNorms use PyTorch's default eps (1e-5, as cudnn/He et al.); the global branch's
  conv reuses :class:`~ltpa.models.blocks.ConvBNReLU` (eps 1e-3, the LTPA code's layers).
- Geometry: stage ``s`` has stride ``2**(s-1)`` and map size ``ceil(H / stride)``; every
  strided layer (3x3 pad 1, 1x1 pad 0) centres output ``j`` on input ``2j``, so map position
  ``j`` is centred on input pixel ``j * stride``, i.e. ``offset = 0.5`` at every stage (not
  ``stride / 2`` as for VGG's 2x2 max-pools).
- The global branch (PAPER.md) is BN -> ReLU -> maxpool2 -> conv3x3 256 (+BN, ReLU, Dropout
  .4) -> maxpool4 -> Dropout .5 -> Linear(256 -> 256). At 32 px the map entering maxpool4 is
  4x4, so maxpool4 is a global max; ltpa implements it as a global (adaptive) max pool, exact at
  32 px and defined for every input of at least ``min_input_size`` (5 px: stage 3 must be at
  least 2x2 for the maxpool2).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import build, register_model
from .blocks import ConvBNReLU, LevelAttentionMixin, LinearHeadMixin, msr_init_
from .output import AttentionOutput, LevelInfo
from .trunk import scale_width
from .vgg_att import as_size, check_choices, check_images

__all__ = ["PreActBottleneck", "PreActResNetTrunk", "RNAttention", "PreActResNet"]

STAGES = (1, 2, 3)
INNER_WIDTHS = (16, 32, 64)
EXPANSION = 4


def blocks_per_stage(depth: int) -> int:
    """``depth = 9n + 2`` for the bottleneck CIFAR ResNets (164 -> 18, 110 -> 12, 56 -> 6, 20 -> 2)."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 11 or (depth - 2) % 9:
        raise ValueError(
            f"depth must be 9n + 2 with n >= 1 bottlenecks per stage (e.g. 20, 56, 110, 164), "
            f"got {depth!r}; pick the nearest such depth"
        )
    return (depth - 2) // 9


class PreActBottleneck(nn.Module):
    """BN -> ReLU -> conv1x1 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv1x1, plus shortcut.

    ``stride_in`` says which conv downsamples: ``"conv1"`` (the first 1x1, as in He et al.'s
    pre-activation Lua code that the official RN-att builds on) or ``"conv2"`` (the 3x3, as in
    torchvision-style ResNets). Both centre output j on input pixel 2j, so the geometry is the
    same. When the width or resolution changes, the shortcut is a strided 1x1 conv applied to
    the pre-activated input (shared with the residual path); otherwise it is the identity.
    """

    def __init__(self, in_channels: int, inner: int, out_channels: int, stride: int = 1,
                 stride_in: str = "conv1") -> None:
        super().__init__()
        if stride_in not in ("conv1", "conv2"):
            raise ValueError(f"stride_in must be 'conv1' or 'conv2', got {stride_in!r}")
        first, second = (stride, 1) if stride_in == "conv1" else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, stride=first, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=second, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut


class PreActResNetTrunk(nn.Module):
    """Stem conv + three bottleneck stages; returns ``{"stage1": ..., "stage2": ..., "stage3": ...}``.

    Args:
        depth: ``9n + 2`` (164 is the paper's ResNet-164).
        width: channel multiplier (1.0 = widths 16-64-128-256).
        in_channels: image channels.
        stride_in: which bottleneck conv downsamples (see :class:`PreActBottleneck`).
    """

    def __init__(self, *, depth: int = 164, width: float = 1.0, in_channels: int = 3,
                 stride_in: str = "conv1") -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        stem = scale_width(16, width)
        self.stem = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        channels, stride = stem, 1
        for stage, inner in zip(STAGES, INNER_WIDTHS):
            inner = scale_width(inner, width)
            out = inner * EXPANSION
            step = 1 if stage == 1 else 2
            stride *= step
            blocks = [PreActBottleneck(channels, inner, out, step, stride_in)]
            blocks += [PreActBottleneck(out, inner, out) for _ in range(n - 1)]
            self.add_module(f"stage{stage}", nn.Sequential(*blocks))
            self.channels[f"stage{stage}"] = channels = out
            self.strides[f"stage{stage}"] = stride
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al.'s MSR init, 1x1 convs included
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        taps = {}
        for stage in STAGES:
            x = taps[f"stage{stage}"] = getattr(self, f"stage{stage}")(x)
        return taps


class _GlobalBranch(nn.Module):
    """RN-att's g: BN -> ReLU -> maxpool2 -> ConvBNReLU(+Dropout .4) -> global max -> Dropout .5 -> Linear."""

    def __init__(self, in_channels: int, conv_channels: int, g_dim: int, *, dropout: bool) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = ConvBNReLU(in_channels, conv_channels, 0.4 if dropout else 0.0)
        self.drop = nn.Dropout(0.5) if dropout else nn.Identity()
        self.fc = nn.Linear(conv_channels, g_dim)
        msr_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn(x)), 2)  # (B, C, h/2, w/2)
        x = F.adaptive_max_pool2d(self.conv(x), 1).flatten(1)  # the paper's maxpool4 at 32 px
        return self.fc(self.drop(x))  # (B, g_dim)


class RNAttention(LevelAttentionMixin, nn.Module):
    """Pre-activation ResNet trunk + global vector g + attention over stages + classifier.

    All arguments are keyword-only; registered builders (``rn_att2``, ``rn_att3``) fix ``levels``.

    Args:
        num_classes: classes K.
        levels: stages to attend, a subset of (1, 2, 3): 32x32x64, 16x16x128, 8x8x256 at 32 px.
        depth: ``9n + 2``; 164 (default) is the paper's, 20 or 56 are quick to test.
        width: channel multiplier (1.0 = the paper).
        compat: ``"pc"`` (parametrised, default) or ``"dp"`` (dot product).
        head: ``"concat"`` (default) or ``"indep"``.
        indep_reduce: how ``indep`` combines levels (``"logits"`` or ``"log_softmax"``).
        normalisation: ``"softmax"`` (default) or ``"sigmoid"``.
        channel_match: ``"project_g"`` maps g (256-d) down to a narrower stage (one projection
            per width; the paper's "g projected to 128-d for stage 2") or ``"project_l"`` maps
            the stage up to 256 with a 1x1 conv.
        dropout: keep every dropout layer (global branch .4/.5, g projection .5, head .3).
        input_size: design size (recorded; every pool is adaptive, any input of at least
            ``min_input_size`` runs).
        grad_average: average gradients where branches join, as the official Lua code's
            hand-written backward does (see :func:`~ltpa.models.blocks.scale_grad`).
        stride_in: which bottleneck conv downsamples: ``"conv1"`` (official) or ``"conv2"``.
        in_channels: image channels.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        levels: Sequence[int] = (2, 3),
        depth: int = 164,
        width: float = 1.0,
        compat: str = "pc",
        head: str = "concat",
        indep_reduce: str = "logits",
        normalisation: str = "softmax",
        channel_match: str = "project_g",
        dropout: bool = True,
        input_size: int | Sequence[int] = 32,
        grad_average: bool = False,
        stride_in: str = "conv1",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_choices(compat=compat, head=head, normalisation=normalisation, channel_match=channel_match,
                      indep_reduce=indep_reduce)
        levels = tuple(sorted(set(levels)))
        if not levels or any(level not in STAGES for level in levels):
            raise ValueError(f"levels must be a non-empty subset of stages {STAGES}, got {levels!r}")
        if not (0 < width <= 4):
            raise ValueError(f"width must be in (0, 4], got {width!r}")
        self.input_size = as_size(input_size)
        self.num_classes = num_classes
        self.grad_average = grad_average
        self.normalisation = normalisation
        self.in_channels = in_channels
        self.options = dict(levels=levels, depth=depth, width=width, compat=compat, head=head,
                            indep_reduce=indep_reduce, normalisation=normalisation,
                            channel_match=channel_match, dropout=dropout, input_size=self.input_size,
                            grad_average=grad_average, stride_in=stride_in, in_channels=in_channels)

        self.trunk = PreActResNetTrunk(depth=depth, width=width, in_channels=in_channels, stride_in=stride_in)
        g_dim = scale_width(256, width)
        self.add_module("global", _GlobalBranch(self.trunk.out_channels, scale_width(256, width), g_dim,
                                                dropout=dropout))
        # stage 3 is ceil(H / 4) and must be >= 2 for the global branch's maxpool2: H >= 5
        self.min_input_size = 5

        self.levels: tuple[LevelInfo, ...] = tuple(
            LevelInfo(f"stage{stage}", self.trunk.channels[f"stage{stage}"],
                      float(self.trunk.strides[f"stage{stage}"]), 0.5)
            for stage in levels)
        self._build_attention(g_dim, num_classes, compat=compat, normalisation=normalisation,
                              channel_match=channel_match, head=head, indep_reduce=indep_reduce,
                              g_dropout=0.5 if dropout else 0.0, head_dropout=0.3 if dropout else 0.0)

    @property
    def global_branch(self) -> _GlobalBranch:
        """The global-feature layers, state-dict prefix ``global.``."""
        return self._modules["global"]

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        """Images (B, C, H, W) -> ``{"stageN": local features (B, C_s, h, w), "global": g (B, D)}``."""
        check_images(images, in_channels=self.in_channels, min_size=self.min_input_size,
                     model=type(self).__name__)
        taps = self.trunk(images)
        features = {info.name: taps[info.name] for info in self.levels}
        features["global"] = self.global_branch(taps["stage3"])
        return features


class PreActResNet(LinearHeadMixin, nn.Module):
    """The plain pre-activation ResNet baseline: trunk -> BN -> ReLU -> global average pool -> Linear.

    Same trunk (``trunk.*``) as :class:`RNAttention`, and its final BN is ``global.bn`` in both
    models, so trunk weights move between them by name. ``features`` (and g in
    ``forward_features``) is the pooled 256-d vector; there are no maps.

    Args:
        num_classes: classes K.
        depth, width, input_size, stride_in, in_channels: as for :class:`RNAttention`.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        depth: int = 164,
        width: float = 1.0,
        input_size: int | Sequence[int] = 32,
        stride_in: str = "conv1",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if not (0 < width <= 4):
            raise ValueError(f"width must be in (0, 4], got {width!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = as_size(input_size)
        self.options = dict(depth=depth, width=width, input_size=self.input_size, stride_in=stride_in,
                            in_channels=in_channels)
        self.trunk = PreActResNetTrunk(depth=depth, width=width, in_channels=in_channels, stride_in=stride_in)
        self.add_module("global", nn.Module())
        self._modules["global"].bn = nn.BatchNorm2d(self.trunk.out_channels)
        self.head = nn.Module()
        self.head.classifier = nn.Linear(self.trunk.out_channels, num_classes)
        self.min_input_size = 1
        self.levels: tuple[LevelInfo, ...] = ()

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        """Images (B, C, H, W) -> ``{"global": pooled features (B, 256)}``."""
        check_images(images, in_channels=self.in_channels, min_size=self.min_input_size,
                     model=type(self).__name__)
        x = self.trunk(images)["stage3"]
        return {"global": F.relu(self._modules["global"].bn(x)).mean(dim=(2, 3))}

    def forward_head(self, features: dict[str, Tensor]) -> AttentionOutput:
        g = features["global"]
        return AttentionOutput(self.head.classifier(g), (), None, (), g, "none")


@register_model
def rn_att2(**options) -> RNAttention:
    """RN-att2: pre-activation ResNet-164, attention over stages 2 and 3 (16x16, 8x8 at 32 px)."""
    return build(RNAttention, options, levels=(2, 3))


@register_model
def rn_att3(**options) -> RNAttention:
    """RN-att3: attention over stages 1, 2 and 3 (32x32, 16x16, 8x8 at 32 px)."""
    return build(RNAttention, options, levels=(1, 2, 3))


@register_model
def preact_resnet(**options) -> PreActResNet:
    """The RN-att baseline: pre-activation ResNet-164 (``depth`` option) without attention."""
    return build(PreActResNet, options)
