"""Attention over the feature maps of any ``timm`` backbone (``timm_att``).

The backbone is ``timm.create_model(backbone, features_only=True)``; its ``feature_info``
lists the tap points (module name, channels, reduction). Chosen taps are attended by the
Learn-to-Pay-Attention module; the global vector g comes from the *last* tap:

    g = Linear(Dropout(global_avg_pool(last feature map)))      (B, g_dim)

``g_dim`` defaults to the channels of the last attended level, so that level needs no channel
matching (as RN-att2's g matches stage 3); narrower levels use ``channel_match``.

Weights never download behind the caller's back: ``pretrained=True`` needs ``weights=PATH``
(a local ``.safetensors``/``.pth`` state dict of the full timm model, as timm or the Hugging Face
hub save it); only ``pretrained="download"`` lets timm fetch weights from its hub.

Geometry: ``stride`` is the tap's reduction. The offset is *traced*, not assumed: at build time
the backbone runs once on the meta device (shapes only, no compute) with hooks on its convs
and pools, and each layer's kernel, stride and left padding move the centre of map position 0
(``offset_out = offset_in + stride_in * (dilation * (kernel - 1) / 2 - pad_left)``). ResNets
(7x7/2 pad 3 stem, 3x3/2 pad 1 max-pool and convs) get ``offset = 0.5`` at every level; patchify
stems (ConvNeXt's 4x4/4) and 2x2 pools give ``stride / 2``. Where branches disagree (e.g.
ResNet-D's average-pool shortcut) the main path, which runs first, wins. TF-"same" padding
depends on the input size; it is traced at ``input_size``. If tracing fails, ltpa warns and uses
``stride / 2``.
"""
from __future__ import annotations

import difflib
import math
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import Option, UserError
from ._registry import build, register_model
from .blocks import LevelAttentionMixin
from .output import LevelInfo
from .vgg_att import as_size, check_choices, check_images

__all__ = ["TimmAttention", "load_weights_file", "trace_geometry"]


def _import_timm():
    try:
        import timm
    except ImportError as err:
        raise ImportError("timm_att needs the timm package: pip install timm") from err
    return timm


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a local ``.safetensors`` or torch file, without unpickling code.

    Torch files are read with ``weights_only=True``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper (training checkpoints) is unwrapped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist; pass the path of a local "
                                ".safetensors or .pth state dict of the backbone")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch.load raise many types for unreadable files
        raise ValueError(f"could not read weights file {str(path)!r} ({type(err).__name__}: {err}); "
                         "it must be a .safetensors file or a torch.save'd state dict of tensors") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict of tensors "
                         f"(got {type(state).__name__}); save one with torch.save(model.state_dict(), path)")
    return state


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _checked_backbone_state(timm, backbone: str, state: dict[str, Tensor], path, options: dict) -> dict:
    """Load ``state`` strictly into the full timm model (classifier dropped) and return its state dict.

    timm's ``features_only`` loading is non-strict (the truncated head's keys are expected to be
    left over), so a file of the wrong architecture would load silently; this check catches it.
    """
    full = timm.create_model(backbone, pretrained=False, num_classes=0,
                             **{k: v for k, v in options.items() if k != "in_chans"})
    heads = tuple(f"{p}." for p in _classifier_prefixes(full))
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    try:
        result = full.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        raise ValueError(f"weights file {str(path)!r} does not fit timm backbone {backbone!r}: {err}; "
                         f"pass the weights of {backbone!r} itself") from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights file {str(path)!r} does not fit timm backbone {backbone!r}: "
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:5]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:5]}; "
            f"pass the weights of {backbone!r} itself (e.g. the hub's model.safetensors for it)")
    return full.state_dict()


def _create_backbone(timm, backbone: str, pretrained, weights, options: dict) -> nn.Module:
    if weights is not None:
        if pretrained == "download":
            raise ValueError("pass either weights=PATH or pretrained='download', not both")
        state = _checked_backbone_state(timm, backbone, load_weights_file(weights), weights, options)
        trunk = timm.create_model(backbone, features_only=True, pretrained=True,
                                  pretrained_cfg_overlay=dict(state_dict=state), **options)
        if isinstance(getattr(trunk, "pretrained_cfg", None), dict):
            trunk.pretrained_cfg.pop("state_dict", None)  # don't keep a second copy alive
        return trunk
    if pretrained is True:
        raise UserError(
            f"pretrained=True needs a local weights file for {backbone!r}: ", Option("weights", "PATH"),
            " with its .safetensors/.pth state dict, or pretrained='download' to let timm fetch it from its hub "
            "(needs network)")
    if pretrained == "download":
        try:
            return timm.create_model(backbone, features_only=True, pretrained=True, **options)
        except (OSError, RuntimeError, ValueError) as err:
            raise RuntimeError(
                f"could not download pretrained weights for {backbone!r} ({type(err).__name__}: {err}); "
                "offline, download the weights elsewhere and pass weights=PATH (CLI: --weights PATH)"
            ) from err
    if pretrained is not False:
        raise ValueError(f"pretrained must be False, True (with weights=PATH) or 'download', got {pretrained!r}")
    return timm.create_model(backbone, features_only=True, pretrained=False, **options)


def _same_pad_left(size: int, kernel: int, stride: int, dilation: int) -> int:
    """timm's dynamic TF-'same' padding puts ``total // 2`` on the left/top."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def trace_geometry(module: nn.Module, in_channels: int, size: tuple[int, int]) -> tuple[dict, object]:
    """Geometry of every map size ``module`` produces, from one shapes-only run.

    Runs ``module`` on a meta-device input of ``size`` (no compute, weights untouched) with hooks
    on every ``Conv2d``, ``MaxPool2d`` and ``AvgPool2d``; the first layer to produce a map size
    defines its geometry.

    Returns:
        ``({(h, w): (stride_y, stride_x, offset_y, offset_x)}, the module's meta output)``.
    """
    geometry = {tuple(size): (1.0, 1.0, 0.5, 0.5)}

    def hook(layer, args, output):
        if not args or not isinstance(args[0], Tensor) or args[0].ndim != 4 or output.ndim != 4:
            return
        key_in, key_out = tuple(args[0].shape[2:]), tuple(output.shape[2:])
        if key_in not in geometry or key_out in geometry:
            return
        kernel, stride = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
        dilation = _pair(getattr(layer, "dilation", 1))
        padding = layer.padding
        new = list(geometry[key_in])
        for axis in (0, 1):
            k, t, d = kernel[axis], stride[axis], dilation[axis]
            if "Same" in type(layer).__name__:
                pad = _same_pad_left(key_in[axis], k, t, d)
            elif padding == "same":
                pad = d * (k - 1) // 2
            elif padding == "valid":
                pad = 0
            else:
                pad = _pair(padding)[axis]
            new[2 + axis] = new[2 + axis] + new[axis] * (d * (k - 1) / 2 - pad)
            new[axis] = new[axis] * t
        geometry[key_out] = tuple(new)

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    try:
        params = {n: torch.empty_like(t, device="meta") for n, t in module.state_dict(keep_vars=True).items()}
        with torch.no_grad():
            output = torch.func.functional_call(module, params,
                                                (torch.empty(1, in_channels, *size, device="meta"),))
    finally:
        for handle in handles:
            handle.remove()
    return geometry, output


class TimmAttention(LevelAttentionMixin, nn.Module):
    """A timm backbone + global vector g + attention over chosen feature maps + classifier.

    Args:
        num_classes: classes K.
        backbone: a timm model name with ``features_only`` support (default ``resnet18``).
        levels: taps to attend, each an index into the backbone's ``feature_info`` or its module
            name (``"layer3"``, ``"stages.2"``). For ``resnet*``, (2, 3) is layer2 and layer3
            (strides 8 and 16); g always comes from the last tap (layer4).
        g_dim: width of g; default the channels of the last attended level.
        compat, head, indep_reduce, normalisation, channel_match, grad_average: as for
            :class:`~ltpa.models.vgg_att.VGGAttention`.
        dropout: Dropout(0.5) before g's Linear, in the g projections and in the head.
        pretrained: False (random init), True (needs ``weights``), or ``"download"`` (timm's hub).
        weights: path of a local state dict of the full timm model ``backbone``.
        input_size: design size; geometry is traced at it (it matters only for TF-"same" padding).
        in_channels: image channels (timm's ``in_chans``; pretrained first convs are adapted).
        backbone_options: extra keyword arguments for ``timm.create_model`` (e.g. ``drop_path_rate``).

    There is no ``width`` option: timm architectures come in fixed sizes; pick a smaller
    backbone (``resnet10t``, ``convnext_atto``, ``test_resnet``) for quick runs.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "resnet18",
        levels: Sequence[int | str] = (2, 3),
        g_dim: int | None = None,
        compat: str = "pc",
        head: str = "concat",
        indep_reduce: str = "logits",
        normalisation: str = "softmax",
        channel_match: str = "project_g",
        dropout: bool = True,
        pretrained: bool | str = False,
        weights: str | Path | None = None,
        input_size: int | Sequence[int] = 224,
        grad_average: bool = False,
        in_channels: int = 3,
        backbone_options: dict | None = None,
    ) -> None:
        super().__init__()
        check_choices(compat=compat, head=head, normalisation=normalisation, channel_match=channel_match,
                      indep_reduce=indep_reduce)
        timm = _import_timm()
        if not timm.is_model(backbone):
            close = difflib.get_close_matches(backbone, timm.list_models(), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"unknown timm backbone {backbone!r}.{hint} See timm.list_models('pattern*').")
        self.input_size = as_size(input_size)
        self.num_classes = num_classes
        self.grad_average = grad_average
        self.normalisation = normalisation
        self.in_channels = in_channels
        options = dict(backbone_options or {}, in_chans=in_channels)
        self.trunk = _create_backbone(timm, backbone, pretrained, weights, options)

        info = self.trunk.feature_info
        names = [d["module"] for d in info.info]
        indices = sorted({self._resolve_level(level, names) for level in levels})
        if not indices:
            raise ValueError("levels must name at least one feature map; "
                             f"this backbone has {list(enumerate(names))}")
        last = len(names) - 1
        if not set(indices + [last]) <= set(info.out_indices):
            self.trunk = _create_backbone(timm, backbone, pretrained, weights,
                                          dict(options, out_indices=tuple(range(len(names)))))
            info = self.trunk.feature_info
        self._positions = {i: list(info.out_indices).index(i) for i in indices + [last]}
        self._level_indices = indices
        self._global_index = last

        reductions = [info.info[i]["reduction"] for i in range(len(names))]
        self.min_input_size = max(reductions[i] for i in self._positions)
        geometry = self._geometry(reductions)
        level_infos = [LevelInfo(names[i], info.info[i]["num_chs"], float(reductions[i]), geometry[i])
                       for i in indices]
        self.levels: tuple[LevelInfo, ...] = tuple(level_infos)
        g_dim = int(g_dim) if g_dim is not None else level_infos[-1].channels
        if g_dim < 1:
            raise ValueError(f"g_dim must be a positive integer, got {g_dim}")
        self.options = dict(backbone=backbone, levels=tuple(names[i] for i in indices), g_dim=g_dim,
                            compat=compat, head=head, indep_reduce=indep_reduce, normalisation=normalisation,
                            channel_match=channel_match, dropout=dropout, pretrained=pretrained,
                            weights=None if weights is None else str(weights), input_size=self.input_size,
                            grad_average=grad_average, in_channels=in_channels,
                            backbone_options=dict(backbone_options or {}))

        self.add_module("global", nn.Sequential())
        self.global_branch.add_module("drop", nn.Dropout(0.5) if dropout else nn.Identity())
        self.global_branch.add_module("fc", nn.Linear(info.info[last]["num_chs"], g_dim))
        self._build_attention(g_dim, num_classes, compat=compat, normalisation=normalisation,
                              channel_match=channel_match, head=head, indep_reduce=indep_reduce,
                              g_dropout=0.5 if dropout else 0.0, head_dropout=0.5 if dropout else 0.0)

    @staticmethod
    def _resolve_level(level: int | str, names: list[str]) -> int:
        choices = ", ".join(f"{i}={n!r}" for i, n in enumerate(names))
        if isinstance(level, str):
            if level not in names:
                raise ValueError(f"level {level!r} is not a feature map of this backbone; "
                                 f"choose an index or name from: {choices}")
            return names.index(level)
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < len(names):
            raise ValueError(f"level {level!r} is out of range; choose an index or name from: {choices}")
        return level

    def _geometry(self, reductions: list[int]) -> dict[int, float]:
        """Traced offset per feature index (see the module docstring); ``stride / 2`` if tracing fails."""
        size = tuple(max(s, 2 * max(reductions)) for s in self.input_size)  # distinct size per stride
        fallback = {i: reductions[i] / 2.0 for i in self._level_indices}
        try:
            traced, outputs = trace_geometry(self.trunk, self.in_channels, size)
            shapes = {i: tuple(outputs[p].shape[2:]) for i, p in self._positions.items()}
        except Exception as err:  # any op without meta support; reported, not swallowed
            warnings.warn(f"could not trace the geometry of this backbone ({type(err).__name__}: {err}); "
                          "assuming offset = stride / 2", stacklevel=3)
            return fallback
        offsets = {}
        for i in self._level_indices:
            found = traced.get(shapes[i])
            if found is None or found[0] != reductions[i] or found[2] != found[3]:
                warnings.warn(f"traced geometry (stride_y, stride_x, offset_y, offset_x) = {found} of "
                              f"feature map {i} does not fit its reduction {reductions[i]} and one "
                              "offset; assuming offset = stride / 2", stacklevel=3)
                return fallback
            offsets[i] = found[2]
        return offsets

    @property
    def global_branch(self) -> nn.Sequential:
        """The global-feature layers (Dropout -> Linear), state-dict prefix ``global.``."""
        return self._modules["global"]

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        """Images (B, C, H, W) -> ``{level name: local features (B, C_s, h, w), "global": g (B, D)}``."""
        check_images(images, in_channels=self.in_channels, min_size=self.min_input_size,
                     model=f"{type(self).__name__}({self.options['backbone']})")
        maps = self.trunk(images)
        features = {info.name: maps[self._positions[i]] for info, i in zip(self.levels, self._level_indices)}
        last = maps[self._positions[self._global_index]]  # (B, C, h, w)
        features["global"] = self.global_branch(last.mean(dim=(2, 3)))
        return features


@register_model
def timm_att(**options) -> TimmAttention:
    """Attention over any timm backbone (default ``resnet18``, levels (2, 3)); no download by default."""
    return build(TimmAttention, options)
