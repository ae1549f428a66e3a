"""Building blocks shared by the VGG-style models: conv stages, attention levels and heads.

Equation numbers refer to Jetley et al., "Learn To Pay Attention", ICLR 2018, Sec. 3.
"""
from __future__ import annotations

import math
import sys
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .output import AttentionOutput

__all__ = [
    "BN_EPS",
    "ConvBNReLU",
    "Dropout",
    "AttentionLevel",
    "GlobalProjection",
    "ClassifierHead",
    "scale_grad",
    "msr_init_",
    "LevelAttentionMixin",
    "LinearHeadMixin",
]

# cifar.torch's vgg_bn_drop (and the official attention code built on it) uses eps 1e-3 in the
# conv trunk; the official g projections and heads keep Torch's default 1e-5.
BN_EPS = 1e-3



class Dropout(nn.Dropout):
    """``nn.Dropout`` with a keep mask that is cheaper to draw on the CPU.

    Keeps each value with probability 1 - p and scales the kept ones so that the expectation is
    unchanged, as ``F.dropout`` does; the mask keeps the input's memory format. On the CPU,
    where PyTorch draws random numbers one at a time on one thread, the mask comes from 16-bit
    slices of 64-bit random words (:func:`_cpu_keep_mask`): a quarter of the draws of
    ``rand_like(x) >= p`` (``bernoulli_`` was slower still). There p is rounded to a multiple of
    1/65536 and the scale uses the rounded value, so the output stays unbiased. Elsewhere, and for
    a p that rounds to 0 or 1, the mask is ``rand_like(x) >= p``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        if x.device.type == "cpu" and _one_dense_run(x) and 0 < round(self.p * 65536) < 65536:
            keep, keep_probability = _cpu_keep_mask(x, self.p)
        else:
            keep, keep_probability = torch.rand_like(x, dtype=torch.float32) >= self.p, 1.0 - self.p
        return x * keep.to(x.dtype).mul_(1.0 / keep_probability)


def _one_dense_run(x: Tensor) -> bool:
    """Whether ``x``'s values fill one run of memory in a layout ``empty_like`` reproduces
    (contiguous, or channels_last for 4-D); other layouts take the ``rand_like`` path."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _cpu_keep_mask(x: Tensor, p: float, words_per_chunk: int = 1 << 16) -> tuple[Tensor, float]:
    """Draw a dropout keep mask for ``x`` from 16-bit lanes of random int64 words.

    ``random_()`` on int64 fills 63 uniform random bits per word (the sign bit is 0; a PyTorch
    detail that ``test_fast_dropout_keeps_with_probability_1_minus_p_and_rescales`` checks per
    lane), so the three low 16-bit lanes of every word are independent uniform int16 values; the
    fourth, which holds the sign bit, is dropped. The words are drawn into one small buffer,
    chunk by chunk, and compared straight into the mask: allocating and touching a full-size
    buffer of random words cost as much as the draws themselves.

    Args:
        x: a CPU tensor that :func:`_one_dense_run` accepts.
        p: drop probability with ``0 < round(p * 65536) < 65536``.
        words_per_chunk: size of the random-word buffer (tests use a small one to cover chunks).

    Returns:
        ``(keep, keep_probability)``: a bool tensor with ``x``'s shape and strides, each entry
        True with probability ``keep_probability = (65536 - round(p * 65536)) / 65536``.
    """
    count = x.numel()
    threshold = round(p * 65536) - 32768  # lanes >= threshold: 32768 - threshold values of 65536
    keep_probability = (32768 - threshold) / 65536
    keep = torch.empty_like(x, dtype=torch.bool)
    if count == 0:
        return keep, keep_probability
    flat = keep.as_strided((count,), (1,))  # one dense run of count values
    words = torch.empty(min(words_per_chunk, (count + 2) // 3), dtype=torch.int64, device=x.device)
    lanes = words.view(torch.int16).view(-1, 4)
    lanes = lanes[:, :3] if sys.byteorder == "little" else lanes[:, 1:]  # the sign bit's lane is dropped
    per_chunk = lanes.numel()
    for start in range(0, count, per_chunk):
        chunk = flat[start:start + per_chunk]
        if chunk.numel() == per_chunk:
            words.random_()
            torch.ge(lanes, threshold, out=chunk.view(-1, 3))
        else:  # the tail: draw only the words it needs
            needed = (chunk.numel() + 2) // 3
            words[:needed].random_()
            chunk.copy_((lanes[:needed] >= threshold).flatten()[:chunk.numel()])
    return keep, keep_probability


class ConvBNReLU(nn.Module):
    """3x3 conv (stride 1, pad 1) -> BN -> ReLU -> optional dropout, as in cifar.torch."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.drop = Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(F.relu(self.bn(self.conv(x)), inplace=True))


def msr_init_(module: nn.Module) -> None:
    """MSR init of every 3x3 conv below ``module``: N(0, sqrt(2 / (k*k*C_out))), bias 0.

    This is cifar.torch's ``MSRinit``; 1x1 attention convs keep PyTorch's default init.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def scale_grad(tensor: Tensor, factor: float) -> Tensor:
    """Multiply the *total* gradient arriving at ``tensor`` by ``factor`` (no-op without grad).

    A tensor hook sees the sum over all of the tensor's uses, which is what the official Lua
    code's hand-written backward averages: ``(downstream + attention) / 2`` for a local
    feature map and ``mean over levels`` for g.
    """
    if tensor.requires_grad:
        tensor.register_hook(lambda grad: grad * factor)
    return tensor


class GlobalProjection(nn.Module):
    """Official code's channel matching: g (B, D) -> BN -> ReLU -> Dropout(0.5) -> Linear -> (B, C)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)  # Torch's default eps (1e-5), as the official code
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, g: Tensor) -> Tensor:
        return self.fc(self.drop(F.relu(self.bn(g))))


def _weighted_sum(local: Tensor, weights: Tensor) -> Tensor:
    """``sum_i weights[b, i] * local[b, :, i]`` over the h*w positions: (B, C, h, w), (B, h*w) -> (B, C).

    Done as one bmm over a view of ``local``'s own memory layout, so that the gradient autograd
    returns for ``local`` has that layout too. With a (B, C, h*w) view of a channels_last map the
    gradient came back NCHW, and adding it to the trunk's channels_last gradient (and the ReLU
    backward that follows) ran on mixed strides, which is slower than on matching ones.
    """
    # With one channel both layouts are the same memory, and the plain view below is exact.
    if local.dim() == 4 and local.shape[1] > 1 and local.is_contiguous(memory_format=torch.channels_last):
        pixels = local.permute(0, 2, 3, 1).flatten(1, 2)  # (B, h*w, C), a view of NHWC memory
        return torch.bmm(weights.unsqueeze(1), pixels).squeeze(1)
    return torch.bmm(local.flatten(2), weights.unsqueeze(2)).squeeze(2)


class AttentionLevel(nn.Module):
    """Compatibility (eq. 2 or dot product), normalisation (eq. 3) and aggregation (eq. 4).

    Args:
        channels: width C of the local features ``l`` entering this level.
        compat: ``"pc"`` (learned u: ``c_i = <u, l_i + g>``) or ``"dp"`` (``c_i = <l_i, g>``).
        normalisation: ``"softmax"`` over positions, aggregated by a sum; or ``"sigmoid"``,
            aggregated by a spatial mean (the later PyTorch ports' variant).
        up_project_to: if set, ``l`` is first mapped to this width by a 1x1 conv (the paper
            text's channel matching) and ``g`` must have that width.
        compat_init: ``"msr"`` (official: u ~ N(0, sqrt 2)) or ``"default"`` (PyTorch's init).
    """

    def __init__(
        self, channels: int, *, compat: str, normalisation: str, up_project_to: int | None = None,
        compat_init: str = "msr",
    ) -> None:
        super().__init__()
        if compat_init not in ("msr", "default"):
            raise ValueError(f"compat_init must be 'msr' or 'default', got {compat_init!r}")
        self.normalisation = normalisation
        self.proj = None
        if up_project_to is not None:
            self.proj = nn.Conv2d(channels, up_project_to, 1, bias=False)
            channels = up_project_to
        self.out_channels = channels
        # A bias is a constant shift of all scores: invisible to softmax, meaningful to sigmoid.
        self.compat = (
            nn.Conv2d(channels, 1, 1, bias=normalisation == "sigmoid") if compat == "pc" else None
        )
        if self.compat is not None and compat_init == "msr":
            # The official code applies MSRinit to u as to every conv: N(0, sqrt(2 / (1*1*1))),
            # which makes the initial attention nearly one-hot; "default" keeps PyTorch's small init.
            nn.init.normal_(self.compat.weight, 0.0, math.sqrt(2.0))
            if self.compat.bias is not None:
                nn.init.zeros_(self.compat.bias)

    def forward(self, local: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Attend ``local`` (B, C_in, h, w) with ``g`` (B, C).

        Returns:
            ``(g_a, attention, scores)``: the attended vector (B, C), the normalised map
            (B, 1, h, w) and the raw compatibility scores (B, 1, h, w).
        """
        if self.proj is not None:
            local = self.proj(local)
        if local.dtype == torch.float16:
            # fp16 tops out at 65504: raw dot products over hundreds of channels can overflow.
            with torch.autocast(local.device.type, enabled=False):
                scores = self._scores(local.float(), g.float())
        else:
            scores = self._scores(local, g)
        flat_scores = scores.float().flatten(1)  # (B, h*w); fp32 keeps softmax exact under autocast
        weights = flat_scores.softmax(dim=1) if self.normalisation == "softmax" else flat_scores.sigmoid()
        g_a = _weighted_sum(local, weights.to(local.dtype))
        if self.normalisation != "softmax":
            g_a = g_a / flat_scores.shape[1]
        return g_a, weights.view_as(scores), scores

    def _scores(self, local: Tensor, g: Tensor) -> Tensor:
        if self.compat is not None:
            # <u, l_i + g> = <u, l_i> + <u, g>: same scores without materialising l + g (B, C, h, w).
            u = self.compat.weight.flatten().to(g.dtype)  # (C,)
            bias = self.compat.bias
            out = F.conv2d(local, self.compat.weight.to(local.dtype), None if bias is None else bias.to(local.dtype))
            return out + (g @ u)[:, None, None, None]  # (B, 1, h, w)
        return torch.einsum("bchw,bc->bhw", local, g.to(local.dtype)).unsqueeze(1)  # (B, 1, h, w)


class ClassifierHead(nn.Module):
    """Each input vector -> BN -> ReLU -> Dropout(0.5); then ``concat`` + one Linear, or ``indep``.

    ``indep`` has one Linear per input and combines them by summing the logits (the official
    code's ``pc`` ensembles) or the log-softmax outputs (its att2 ``dp`` ensemble). Under the
    cross-entropy loss the two train identically: each log-softmax differs from its logits by a
    per-image constant, which the loss's own log-softmax removes. With a single input both modes
    are the classic ``BN -> ReLU -> Dropout -> Linear`` classifier of cifar.torch's VGG.
    """

    def __init__(
        self,
        in_features: Sequence[int],
        num_classes: int,
        *,
        mode: str = "concat",
        indep_reduce: str = "logits",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.indep_reduce = indep_reduce
        self.norms = nn.ModuleList(nn.BatchNorm1d(d) for d in in_features)  # default eps, as official
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if mode == "concat":
            self.classifier = nn.Linear(sum(in_features), num_classes)
        else:
            self.classifiers = nn.ModuleList(nn.Linear(d, num_classes) for d in in_features)

    def forward(self, vectors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Returns ``(logits (B, K), features (B, sum D))``; features are the normalised inputs."""
        normed = [self.drop(F.relu(norm(v))) for norm, v in zip(self.norms, vectors)]
        features = torch.cat(normed, dim=1)
        if self.mode == "concat":
            return self.classifier(features), features
        per_level = [fc(v) for fc, v in zip(self.classifiers, normed)]
        if self.indep_reduce == "log_softmax":
            per_level = [F.log_softmax(p.float(), dim=1) for p in per_level]
        return torch.stack(per_level).sum(0), features

    def reset(self, num_classes: int) -> None:
        """Replace the final Linear layer(s) by freshly initialised ones with ``num_classes`` outputs."""
        if self.mode == "concat":
            old = self.classifier
            self.classifier = nn.Linear(old.in_features, num_classes).to(old.weight.device)
        else:
            self.classifiers = nn.ModuleList(
                nn.Linear(fc.in_features, num_classes).to(fc.weight.device) for fc in self.classifiers
            )


class LevelAttentionMixin:
    """Attention levels, g projections, head and the shared forward of trunk + g models.

    Subclasses are ``nn.Module``s that set ``levels``, ``normalisation`` and ``grad_average``,
    call :meth:`_build_attention` and implement ``forward_features`` (level names and
    ``"global"`` as keys). State-dict names follow VGG-att: ``attention.<i>`` per level,
    ``attention.g<C>`` per projected width, ``head.*``.
    """

    def _build_attention(
        self, g_dim: int, num_classes: int, *, compat: str, normalisation: str, channel_match: str,
        head: str, indep_reduce: str, g_dropout: float, head_dropout: float, compat_init: str = "msr",
    ) -> None:
        self.attention = nn.ModuleDict()
        self._g_keys: list[str | None] = []
        for index, level in enumerate(self.levels):
            up = g_dim if channel_match == "project_l" and level.channels != g_dim else None
            self.attention[str(index)] = AttentionLevel(level.channels, compat=compat, compat_init=compat_init,
                                                        normalisation=normalisation, up_project_to=up)
            key = None
            if level.channels != g_dim and channel_match == "project_g":
                key = f"g{level.channels}"  # one projection per width, shared by its levels
                if key not in self.attention:
                    self.attention[key] = GlobalProjection(g_dim, level.channels, g_dropout)
            self._g_keys.append(key)
        head_dims = [self.attention[str(i)].out_channels for i in range(len(self.levels))]
        self.head = ClassifierHead(head_dims, num_classes, mode=head, indep_reduce=indep_reduce,
                                   dropout=head_dropout)

    def forward_head(self, features: dict[str, Tensor]) -> AttentionOutput:
        """Attention and classifier on the output of ``forward_features``."""
        g = features["global"]
        if self.grad_average:
            g = scale_grad(g, 1.0 / len(self.levels))
        attended, maps, scores = [], [], []
        for index, info in enumerate(self.levels):
            local = features[info.name]
            if self.grad_average:
                scale_grad(local, 0.5)
            key = self._g_keys[index]
            g_level = self.attention[key](g) if key is not None else g
            g_a, weights, raw = self.attention[str(index)](local, g_level)
            attended.append(g_a)
            maps.append(weights)
            scores.append(raw)
        logits, head_features = self.head(attended)
        return AttentionOutput(logits, tuple(maps), tuple(scores), self.levels, head_features,
                               self.normalisation)

    def forward(self, images: Tensor) -> AttentionOutput:
        return self.forward_head(self.forward_features(images))

    def reset_classifier(self, num_classes: int) -> None:
        """Re-initialise the final classifier for ``num_classes``."""
        self.head.reset(num_classes)
        self.num_classes = num_classes


class LinearHeadMixin:
    """``forward`` and ``reset_classifier`` for models whose classifier is one Linear ``head.classifier``."""

    def forward(self, images: Tensor) -> AttentionOutput:
        return self.forward_head(self.forward_features(images))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``head.classifier`` by a freshly initialised Linear with ``num_classes`` outputs."""
        old = self.head.classifier
        self.head.classifier = nn.Linear(old.in_features, num_classes).to(old.weight.device)
        self.num_classes = num_classes
