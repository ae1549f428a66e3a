"""VGG conv stacks described as data (a layer plan), with taps before and after every pool."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .blocks import ConvBNReLU, msr_init_

__all__ = ["Conv", "Pool", "VGGTrunk", "attention_plan", "vgg_bn_drop_plan", "scale_width"]

GLOBAL = 0  # Pool.kernel value meaning "global max over what is left"


@dataclass(frozen=True)
class Conv:
    name: str  # "conv7"
    channels: int
    dropout: float = 0.0


@dataclass(frozen=True)
class Pool:
    name: str  # "pool7": the max-pool that follows conv7
    kernel: int  # kernel == stride; GLOBAL reduces the remaining map to 1x1


def scale_width(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def attention_plan(first_pool: int = 2, *, depth: int = 15) -> list[Conv | Pool]:
    """The enlarged VGG trunk of the attention models (PAPER.md, "VGG-att for 32x32 inputs").

    Versus cifar.torch's vgg_bn_drop, the pools after conv2 and conv4 are gone and conv14,
    conv15 are added. ``first_pool`` is the pool after conv7: 2 for 32x32 inputs, 5 for the
    80x80 CUB model (so conv10 and conv13 see the CIFAR geometry, 16x16 and 8x8).
    ``depth=13`` stops after conv13 (the VGG-GAP trunk).
    """
    plan: list[Conv | Pool] = [
        Conv("conv1", 64, 0.3), Conv("conv2", 64), Conv("conv3", 128, 0.4), Conv("conv4", 128),
        Conv("conv5", 256, 0.4), Conv("conv6", 256, 0.4), Conv("conv7", 256), Pool("pool7", first_pool),
        Conv("conv8", 512, 0.4), Conv("conv9", 512, 0.4), Conv("conv10", 512), Pool("pool10", 2),
        Conv("conv11", 512, 0.4), Conv("conv12", 512, 0.4), Conv("conv13", 512),
    ]
    if depth == 15:
        plan += [Pool("pool13", 2), Conv("conv14", 512, 0.4), Pool("pool14", 2),
                 Conv("conv15", 512, 0.4), Pool("pool15", GLOBAL)]
    return plan


def vgg_bn_drop_plan() -> list[Conv | Pool]:
    """cifar.torch's vgg_bn_drop: the paper's VGG baseline (5 pools; 1x1 at 32x32 inputs)."""
    return [
        Conv("conv1", 64, 0.3), Conv("conv2", 64), Pool("pool2", 2),
        Conv("conv3", 128, 0.4), Conv("conv4", 128), Pool("pool4", 2),
        Conv("conv5", 256, 0.4), Conv("conv6", 256, 0.4), Conv("conv7", 256), Pool("pool7", 2),
        Conv("conv8", 512, 0.4), Conv("conv9", 512, 0.4), Conv("conv10", 512), Pool("pool10", 2),
        Conv("conv11", 512, 0.4), Conv("conv12", 512, 0.4), Conv("conv13", 512), Pool("pool13", GLOBAL),
    ]


class VGGTrunk(nn.Module):
    """Runs a layer plan and returns every named intermediate output.

    Args:
        plan: the layers, in order (see :func:`attention_plan`).
        in_channels: image channels.
        width: channel multiplier for CPU-scale experiments (1.0 = the paper).
        dropout: keep the plan's dropout layers (False removes them all).
        checkpointing: in training, keep only each conv block's input for backward and recompute
            the rest (activation checkpointing): much less memory for large inputs, about one
            extra forward pass of compute. Results, gradients and BN running statistics are the
            same as without it.
    """

    def __init__(
        self,
        plan: list[Conv | Pool],
        *,
        in_channels: int = 3,
        width: float = 1.0,
        dropout: bool = True,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.plan = tuple(plan)
        self.checkpointing = checkpointing
        self.in_channels = in_channels
        channels = in_channels
        self.channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        stride = 1
        for layer in plan:
            if isinstance(layer, Conv):
                out = scale_width(layer.channels, width)
                self.add_module(layer.name, ConvBNReLU(channels, out, layer.dropout if dropout else 0.0))
                channels = out
            elif layer.kernel != GLOBAL:
                stride *= layer.kernel
            self.channels[layer.name] = channels
            self.strides[layer.name] = stride
        self.out_channels = channels
        # Smallest input whose map is still >= 1 px when it reaches the last strided pool's output.
        self.min_input_size = stride
        msr_init_(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Returns ``{layer name: output}``; the last entry is the trunk's output."""
        taps: dict[str, Tensor] = {}
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.plan:
            if isinstance(layer, Conv):
                block = getattr(self, layer.name)
                if recompute:
                    x = checkpoint(_RunOnce(block), x, use_reentrant=False)
                else:
                    x = block(x)
            elif layer.kernel == GLOBAL:
                x = F.adaptive_max_pool2d(x, 1)
            else:
                x = F.max_pool2d(x, layer.kernel)
            taps[layer.name] = x
        return taps


class _RunOnce:
    """Calls ``block``; calls after the first (checkpoint's recomputation) leave BN statistics alone.

    Without this, recomputing a block in training mode would update BatchNorm's running mean
    and variance a second time for the same batch.
    """

    def __init__(self, block: nn.Module) -> None:
        self.block = block
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == 1:
            return self.block(x)
        with _frozen_bn_statistics(self.block):
            return self.block(x)


@contextlib.contextmanager
def _frozen_bn_statistics(module: nn.Module) -> Iterator[None]:
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
