"""Post-hoc saliency baselines on the same model: Grad-CAM, Grad-CAM++, LayerCAM, and CAM (VGG-GAP).

Grad-CAM and its variants come from the ``grad-cam`` package (``pytorch_grad_cam``), used as a
library. They differ from LTPA attention in two ways the output records:

* they are class-specific: each map explains one class, by default the predicted one, or the
  ``target_classes`` you pass (LTPA attention is class-agnostic: one map per image);
* they are computed at one trunk layer chosen after training (default: the deepest attended
  level's conv, e.g. ``trunk.conv13``), from activations and gradients.

Maps are returned in the format of the learned maps, :class:`~ltpa.attention.AttentionMaps`:
the rectified map at the layer's resolution, scaled to sum to 1 (``normalisation="cam"``), and
the same map placed on the image with the layer's geometry (:func:`place_on_image`). We read the
raw layer-resolution map through the package's own ``get_cam_image`` instead of its
image-resolution output, which is min-max stretched per image (that would shift the energy
pointing game) and resized without ltpa's level geometry.

Side effects are undone: every submodule's train/eval flag (grad-cam's constructor calls
``model.eval()``), each parameter's ``requires_grad`` and ``.grad``; every hook is removed; the
caller's images are never modified. All methods share one forward and one backward pass per batch,
and that backward runs from the class score down to the layer only.

``pytorch_grad_cam`` is imported on first use, not with ``ltpa.attention``: importing it pulls in
OpenCV, scikit-learn and more (several seconds), which training and ``ltpa demo`` never need.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ltpa.attention._inputs import model_device, prepare_images, preserve_model_state
from ltpa.attention.maps import AttentionMaps, place_on_image
from ltpa.models.baselines import rectify_and_normalise
from ltpa.models.output import AttentionOutput, LevelInfo

__all__ = ["CAM_METHODS", "LogitsOnly", "default_cam_layer", "grad_cam_maps", "gap_cam_maps"]



class _LazyCamMethods(Mapping):
    """``{name: grad-cam class}``; names and membership need no import, a lookup imports
    ``pytorch_grad_cam`` (once) and returns the class."""

    _CLASSES = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM"}

    def __getitem__(self, name: str) -> type:
        return getattr(importlib.import_module("pytorch_grad_cam"), self._CLASSES[name])

    def __contains__(self, name: object) -> bool:  # Mapping's default would import via __getitem__
        return name in self._CLASSES

    def __iter__(self) -> Iterator[str]:
        return iter(self._CLASSES)

    def __len__(self) -> int:
        return len(self._CLASSES)

    def __repr__(self) -> str:
        return f"CAM_METHODS({list(self._CLASSES)})"


CAM_METHODS: Mapping[str, type] = _LazyCamMethods()


class LogitsOnly(nn.Module):
    """``model(images).logits``: grad-cam expects a model that returns the class scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(images)
        return out.logits if isinstance(out, AttentionOutput) else out


def default_cam_layer(model: nn.Module) -> str:
    """The deepest attended level's trunk conv (``"trunk.conv13"`` for VGG-att2/3), else the
    trunk's last conv."""
    levels = getattr(model, "levels", ())
    trunk = getattr(model, "trunk", None)
    if levels and trunk is not None and hasattr(trunk, levels[-1].name):
        return f"trunk.{levels[-1].name}"
    if trunk is not None:
        convs = [name for name, _ in trunk.named_children() if name.startswith("conv")]
        if convs:
            return f"trunk.{convs[-1]}"
    raise ValueError(f"cannot pick a default layer for {type(model).__name__}; pass layer='trunk.convN'.")


def _resolve(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    name = default_cam_layer(model) if layer is None else layer
    for candidate in (name, f"trunk.{name}"):
        try:
            return candidate, model.get_submodule(candidate)
        except AttributeError:
            continue
    convs = [n for n, m in model.named_modules() if n.startswith("trunk.conv") and n.count(".") == 1]
    raise ValueError(f"layer {name!r} is not a submodule of {type(model).__name__}; choose one of "
                     f"{convs or 'its named_modules()'}.")


def _geometry(model: nn.Module, name: str, feature_size: int, image_size: int) -> LevelInfo:
    short = name.split(".")[-1]
    for level in getattr(model, "levels", ()):
        if level.name == short:
            return level
    strides = getattr(getattr(model, "trunk", None), "strides", {})
    stride = float(strides.get(short, image_size / feature_size))
    channels = getattr(getattr(model, "trunk", None), "channels", {}).get(short, 0)
    # Same-padded convs and k x k / stride-k pools: the LevelInfo convention offset = stride / 2.
    return LevelInfo(short, channels, stride, stride / 2.0)


def _targets(target_classes: int | Sequence[int] | Tensor | None, count: int, num_classes: int) -> Tensor | None:
    if target_classes is None:
        return None
    classes = torch.as_tensor(target_classes, dtype=torch.int64).flatten()
    if classes.numel() == 1:
        classes = classes.expand(count)
    if classes.numel() != count:
        raise ValueError(f"target_classes needs one class per image ({count}) or one for all, got {classes.numel()}.")
    if (classes < 0).any() or (classes >= num_classes).any():
        raise ValueError(f"target_classes must lie in [0, {num_classes}), got {classes.unique().tolist()}.")
    return classes.clone()


def grad_cam_maps(
    model: nn.Module,
    images: Tensor,
    *,
    methods: Sequence[str] = tuple(CAM_METHODS),
    layer: str | None = None,
    target_classes: int | Sequence[int] | Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 64,
) -> dict[str, AttentionMaps]:
    """Grad-CAM family maps of ``model`` at one trunk layer, in the learned maps' format.

    Args:
        model: an ltpa model (returns :class:`AttentionOutput`) or any classifier returning logits.
        images: uint8 ``(N, 3, H, W)`` with ``mean``/``std``, or float images already normalised.
        methods: names from :data:`CAM_METHODS` (``"gradcam"``, ``"gradcam++"``, ``"layercam"``).
        layer: module path such as ``"trunk.conv13"`` (or ``"conv13"``); default
            :func:`default_cam_layer`.
        target_classes: the class each map explains: one int for all images or ``(N,)``;
            default the predicted class.
        mean, std: the training normalisation, for uint8 images.
        batch_size: images per forward/backward pass.

    Returns:
        ``{method: AttentionMaps}``, one level each (the layer); ``maps`` ``(N, 1, h, w)`` sum to
        1, ``upsampled`` ``(N, 1, H, W)``, ``normalisation="cam"``; ``logits``/``predictions``
        are the model's.

    Raises:
        ValueError: an unknown method or layer, or bad ``target_classes``.
    """
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown CAM method(s) {unknown}; choose from {list(CAM_METHODS)}.")
    inputs = prepare_images(images, mean, std)
    name, module = _resolve(model, layer)
    count, image_size = inputs.shape[0], tuple(inputs.shape[-2:])
    device = model_device(model)
    wrapper = LogitsOnly(model)
    # Checked against the logits' width after the first batch when the model has no num_classes.
    chosen = _targets(target_classes, count, int(getattr(model, "num_classes", 2**62)))
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    raw: dict[str, list[Tensor]] = {method: [] for method in methods}
    logits = []
    with preserve_model_state(model), torch.enable_grad():
        # The methods differ only in how they weigh the same activations and gradients, so one
        # forward and one backward serve them all; each method's own get_cam_image (grad-cam's
        # formula) turns them into its map. The graph is cut at the layer: nothing before it
        # needs gradients, and no parameter does, so the backward pass runs from the class
        # score down to the layer only (a small part of the model, not a full backward).
        for param in model.parameters():
            param.requires_grad_(False)
        cams, cut, store = {}, None, None
        try:
            for method in methods:  # only their formulas are used; `store` below captures
                cams[method] = CAM_METHODS[method](model=wrapper, target_layers=[module])
                cams[method].activations_and_grads.release()
            # The clone lets the model modify the layer's output in place (an inplace ReLU).
            cut = module.register_forward_hook(
                lambda _m, _i, output: output.detach().requires_grad_(True).clone(), prepend=True)
            store = ActivationsAndGradients(wrapper, [module], None)
            for start in range(0, count, batch_size):
                batch = inputs[start:start + batch_size].to(device)
                out = store(batch)
                if chosen is not None and int(chosen.max()) >= out.shape[1]:
                    raise ValueError(f"target_classes must lie in [0, {out.shape[1]}), got "
                                     f"{chosen.unique().tolist()}.")
                classes = out.argmax(1) if chosen is None else chosen[start:start + batch_size].to(device)
                if not out.requires_grad:  # the cut output never reached the class scores
                    raise ValueError(f"the class scores do not depend on layer {name!r} (it did not run, or its "
                                     f"output is not used); choose a layer on the path to the logits, e.g. a trunk conv")
                out.gather(1, classes[:, None]).sum().backward()
                if len(store.activations) != 1 or len(store.gradients) != 1:
                    raise ValueError(f"layer {name!r} ran {len(store.activations)} times in one forward pass "
                                     f"(a shared module); choose a layer that runs once, e.g. a conv")
                targets = [ClassifierOutputTarget(int(k)) for k in classes]
                activations = store.activations[0].numpy()
                gradients = store.gradients[0].numpy()
                for method, cam in cams.items():
                    raw[method].append(torch.from_numpy(np.asarray(cam.get_cam_image(
                        batch, module, targets, activations, gradients, False), dtype=np.float32)))
                logits.append(out.detach().cpu())
                store.clear()
        finally:
            if store is not None:
                store.release()
            if cut is not None:
                cut.remove()
            for cam in cams.values():
                cam.activations_and_grads.release()
    all_logits = torch.cat(logits)
    result: dict[str, AttentionMaps] = {}
    for method in methods:
        level_maps = rectify_and_normalise(torch.cat(raw[method])[:, None])  # (N, 1, h, w), sums to 1
        level = _geometry(model, name, level_maps.shape[-1], image_size[-1])
        result[method] = AttentionMaps(
            maps=(level_maps,), upsampled=(place_on_image(level_maps, level, image_size),),
            levels=(level,), logits=all_logits, predictions=all_logits.argmax(1), normalisation="cam")
    return result


def gap_cam_maps(
    gap_model: nn.Module,
    images: Tensor,
    *,
    target_classes: int | Sequence[int] | Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 64,
) -> AttentionMaps:
    """CAM (Zhou et al. 2016) of a VGG-GAP model (``create_model("vgg_gap", ...)``), for the
    predicted class or ``target_classes``; maps rectified and scaled to sum to 1.

    The model runs in eval mode without gradients; its mode and the images are left unchanged.

    Raises:
        TypeError: ``gap_model`` has no ``cam`` method (not a VGG-GAP).
    """
    if not hasattr(gap_model, "cam") or not hasattr(gap_model, "forward_features"):
        raise TypeError(f"gap_model must be a VGG-GAP model (ltpa.create_model('vgg_gap', ...)), "
                        f"got {type(gap_model).__name__}.")
    inputs = prepare_images(images, mean, std)
    count, image_size = inputs.shape[0], tuple(inputs.shape[-2:])
    chosen = _targets(target_classes, count, int(gap_model.num_classes))
    device = model_device(gap_model)
    maps, logits = [], []
    with preserve_model_state(gap_model), torch.no_grad():
        gap_model.eval()
        for start in range(0, count, batch_size):
            features = gap_model.forward_features(inputs[start:start + batch_size].to(device))
            out = gap_model.forward_head(features)
            classes = out.logits.argmax(1) if chosen is None else chosen[start:start + batch_size].to(device)
            maps.append(rectify_and_normalise(gap_model.cam(features["conv13"], classes)).cpu())
            logits.append(out.logits.cpu())
    level = gap_model.levels[0]
    level_maps, all_logits = torch.cat(maps), torch.cat(logits)
    return AttentionMaps(maps=(level_maps,), upsampled=(place_on_image(level_maps, level, image_size),),
                         levels=(level,), logits=all_logits, predictions=all_logits.argmax(1), normalisation="cam")
