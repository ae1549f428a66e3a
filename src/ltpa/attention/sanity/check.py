"""Does a map depend on what the model learned? The model-parameter randomisation test of Adebayo
et al. ("Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3), for every attention level and
for the Grad-CAM family, with a verdict in plain words.

For each stage of the randomisation (:mod:`ltpa.attention.sanity.randomise`: cascading from the
head down to the first conv, and each group on its own) the maps of the same images are computed
again and compared with the trained model's maps by Spearman rank correlation, SSIM and top-k
overlap (:mod:`ltpa.attention.metrics.similarity`), all at image resolution (the maps as placed
on the image, which is what the localisation scores and overlays use). Class-specific maps keep
explaining the class they explained in the trained model (its prediction, or ``target_classes``),
so that a randomised head does not also change the question.

Verdict: a map whose mean Spearman correlation with the trained maps is still at least
``flag_threshold`` (0.5) once *every* parameter is random (the last cascading stage) is flagged:
it reflects the input (edges, colours) or positions, not what the model learned. Attention maps
are computed before the classifier, so randomising the head alone cannot change them; that
stage shows 1.0 for them by construction.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ltpa.attention._inputs import prepare_images
from ltpa.attention.cam_baselines import CAM_METHODS, default_cam_layer, grad_cam_maps
from ltpa.attention.maps import compute_maps
from ltpa.attention.metrics.similarity import SIMILARITIES, similarities
from ltpa.attention.sanity.randomise import BN_STATS, INITS, parameter_groups, randomise, recompute_bn_stats

__all__ = ["MODES", "check_options", "explain_sanity", "plot_sanity", "sanity_check", "sanity_trained", "write_sanity_report"]

MODES = ("cascading", "independent")
SANITY_FILE = "sanity.json"


def check_options(count: int, *, methods: Sequence[str], modes: Sequence[str], init: str, bn_stats: str) -> None:
    """Refuse options :func:`sanity_check` cannot run with, before any work (or output folder).

    Raises:
        ValueError: unknown methods, modes, init or bn_stats, or ``bn_stats="recompute"`` with
            fewer than 2 images.
    """
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {list(modes)!r}.")
    unknown = [m for m in methods if m != "attention" and m not in CAM_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {['attention', *CAM_METHODS]}.")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")
    if bn_stats not in BN_STATS:
        raise ValueError(f"bn_stats must be one of {BN_STATS}, got {bn_stats!r}.")
    if bn_stats == "recompute" and count < 2:
        raise ValueError("bn_stats='recompute' estimates BatchNorm statistics from the images: give at least 2 "
                         "images, or choose bn_stats='reset' or 'keep'.")


def _maps(model: nn.Module, inputs: Tensor, methods: Sequence[str], cam_layer: str | None,
          classes: Tensor, batch_size: int) -> dict[str, Tensor]:
    """``{source: (N, H, W)}``: every attention level, then every CAM method."""
    out: dict[str, Tensor] = {}
    if "attention" in methods:
        learned = compute_maps(model, inputs, batch_size=batch_size)
        if not learned.levels:
            raise ValueError(f"{type(model).__name__} returns no attention maps; drop 'attention' from methods.")
        for level, placed in zip(learned.levels, learned.upsampled):
            out[f"attention/{level.name}"] = placed[:, 0].double()
    cams = [m for m in methods if m in CAM_METHODS]
    if cams:
        for name, maps in grad_cam_maps(model, inputs, methods=cams, layer=cam_layer, target_classes=classes,
                                        batch_size=batch_size).items():
            out[f"{name}/{maps.levels[0].name}"] = maps.upsampled[0][:, 0].double()
    return out


def _summary(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "std": None, "undefined": int(values.size)}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "undefined": int(values.size - finite.size)}


def _compare(original: dict[str, Tensor], changed: dict[str, Tensor], topk_fraction: float) -> dict:
    return {source: {name: _summary(values) for name, values in
                     similarities(original[source], changed[source], topk_fraction=topk_fraction).items()}
            for source in original}


def sanity_check(
    model: nn.Module,
    images: Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    methods: Sequence[str] = ("attention", "gradcam"),
    cam_layer: str | None = None,
    target_classes: Tensor | None = None,
    modes: Sequence[str] = MODES,
    init: str = "reset",
    bn_stats: str = "recompute",
    seed: int = 0,
    topk_fraction: float = 0.1,
    flag_threshold: float = 0.5,
    show: int = 2,
    display_images: Tensor | None = None,
    batch_size: int = 64,
) -> dict:
    """Model-parameter randomisation test for the attention levels and CAM methods of ``model``.

    The caller's model is never changed (the randomisation works on copies; its mode and
    gradients are restored by the map functions).

    Args:
        model: a trained ltpa model.
        images: uint8 ``(N, 3, H, W)`` with ``mean``/``std``, or float images already normalised.
            With ``bn_stats="recompute"`` at least 2 images.
        methods: ``"attention"`` and/or names from :data:`~ltpa.attention.CAM_METHODS`.
        cam_layer: layer of the CAM methods (default
            :func:`~ltpa.attention.cam_baselines.default_cam_layer`).
        target_classes: ``(N,)`` classes the CAM maps explain at every stage; default the trained
            model's predictions.
        modes: ``"cascading"`` and/or ``"independent"``.
        init, bn_stats: see :mod:`ltpa.attention.sanity.randomise`.
        seed: seed of the random parameters.
        topk_fraction: the share of pixels of the top-k overlap.
        flag_threshold: mean Spearman correlation at or above which a map is flagged when every
            parameter is random.
        show: images per map source kept for :func:`plot_sanity`.
        display_images: uint8 ``(N, 3, H, W)`` shown beside the maps in the figure (default
            ``images`` when they are uint8).
        batch_size: images per forward pass.

    Returns:
        A dict: settings, ``groups`` (name and parameter names, top-down), ``sources``,
        ``cascading`` and/or ``independent`` (a list of stages, each ``{"stage", "randomised",
        "similarity": {source: {similarity: {"mean", "std", "undefined"}}}}``), ``verdict``
        (``{source: {"flagged", "spearman_all_random", ...}}``), ``explanation`` (plain words)
        and ``gallery`` (tensors for the figure; :func:`write_sanity_report` leaves it out of
        the JSON).
    """
    if not (isinstance(flag_threshold, (int, float)) and -1 <= flag_threshold <= 1):
        raise ValueError(f"flag_threshold must be a correlation in [-1, 1], got {flag_threshold!r}.")
    inputs = prepare_images(images, mean, std)
    check_options(inputs.shape[0], methods=methods, modes=modes, init=init, bn_stats=bn_stats)
    groups = parameter_groups(model)
    if target_classes is None:
        classes = compute_maps(model, inputs, batch_size=batch_size).predictions if "attention" in methods else \
            _predictions(model, inputs, batch_size)
    else:
        classes = torch.as_tensor(target_classes, dtype=torch.int64).expand(inputs.shape[0]).clone()
    options = dict(init=init, bn_stats=bn_stats, seed=seed)
    original = _maps(model, inputs, methods, cam_layer, classes, batch_size)
    count = min(show, inputs.shape[0])
    gallery = {source: [maps[:count].float()] for source, maps in original.items()}
    result: dict = {
        "num_images": int(inputs.shape[0]), "image_size": list(inputs.shape[-2:]), "methods": list(methods),
        "cam_layer": (cam_layer or default_cam_layer(model)) if any(m in CAM_METHODS for m in methods) else None,
        "target_classes": "given" if target_classes is not None else "the trained model's predictions",
        "init": init, "bn_stats": bn_stats, "seed": seed, "topk_fraction": topk_fraction,
        "flag_threshold": flag_threshold, "similarities": list(SIMILARITIES), "sources": list(original),
        "groups": [{"name": g.name, "parameters": g.parameter_names(model)} for g in groups],
    }
    if "cascading" in modes:
        work = copy.deepcopy(model)
        stages = []
        for index, group in enumerate(groups):
            randomise(work, [group], reference=model, **options)
            if bn_stats == "recompute":
                recompute_bn_stats(work, groups[:index + 1], inputs, batch_size=batch_size)
            changed = _maps(work, inputs, methods, cam_layer, classes, batch_size)
            stages.append({"stage": group.name, "randomised": [g.name for g in groups[:index + 1]],
                           "similarity": _compare(original, changed, topk_fraction)})
            for source, maps in changed.items():
                gallery[source].append(maps[:count].float())
        result["cascading"] = stages
    if "independent" in modes:
        stages = []
        for group in groups:
            work = randomise(copy.deepcopy(model), [group], reference=model, **options)
            if bn_stats == "recompute":
                recompute_bn_stats(work, [group], inputs, batch_size=batch_size)
            changed = _maps(work, inputs, methods, cam_layer, classes, batch_size)
            stages.append({"stage": group.name, "randomised": [group.name],
                           "similarity": _compare(original, changed, topk_fraction)})
        result["independent"] = stages
    result["verdict"] = _verdicts(result)
    result["explanation"] = explain_sanity(result)
    shown = display_images if display_images is not None else (images if images.dtype == torch.uint8 else None)
    result["gallery"] = {"stages": ["trained", *(s["stage"] for s in result.get("cascading", []))],
                         "maps": {source: torch.stack(maps) for source, maps in gallery.items()},
                         "images": None if shown is None else torch.as_tensor(shown)[:count]}
    return result


def _predictions(model: nn.Module, inputs: Tensor, batch_size: int) -> Tensor:
    from ltpa.attention.cam_baselines import LogitsOnly
    from ltpa.attention._inputs import model_device, preserve_model_state

    device = model_device(model)
    with preserve_model_state(model), torch.no_grad():
        model.eval()
        return torch.cat([LogitsOnly(model)(inputs[s:s + batch_size].to(device)).argmax(1).cpu()
                          for s in range(0, inputs.shape[0], batch_size)])


def _mean(stage: dict, source: str, name: str) -> float | None:
    return stage["similarity"][source][name]["mean"]


def _verdicts(result: dict) -> dict:
    stages = result.get("cascading")
    if not stages:
        return {}
    verdicts = {}
    threshold = result["flag_threshold"]
    for source in result["sources"]:
        final = stages[-1]
        spearman = _mean(final, source, "spearman")
        below = next((s["stage"] for s in stages if (_mean(s, source, "spearman") or 0.0) < threshold), None)
        verdicts[source] = {
            "flagged": spearman is not None and spearman >= threshold,
            "spearman_all_random": spearman, "ssim_all_random": _mean(final, source, "ssim"),
            "topk_overlap_all_random": _mean(final, source, "topk_overlap"),
            "first_stage_below_threshold": below,
        }
    return verdicts


def _fmt(value: float | None) -> str:
    return "undefined (constant maps)" if value is None else f"{value:.2f}"


def explain_sanity(result: dict) -> str:
    """Plain words for :func:`sanity_check`'s result: per map source, how far its maps move away
    from the trained model's as the parameters are randomised, and the verdict."""
    stages = result.get("cascading") or []
    lines = [f"Model-parameter randomisation (Adebayo et al. 2018) on {result['num_images']} images: parameters "
             f"re-drawn with init={result['init']}, BatchNorm statistics {result['bn_stats']}; similarity of each "
             f"randomised map to the trained model's: Spearman rank correlation (1 = same ranking, ~0 = "
             f"unrelated), SSIM, top-{result['topk_fraction']:.0%} overlap (chance {result['topk_fraction']:.2f})."]
    if not stages:
        lines.append("No cascading stages were run, so there is no verdict (the independent stages are in the JSON).")
        return "\n".join(lines)
    marks = {"head": "head random", "attention": "+ attention parameters", "global": "+ g"}
    trunk = [s for s in stages if s["stage"].startswith("trunk")]
    for source in result["sources"]:
        verdict = result["verdict"][source]
        steps = [f"{marks[s['stage']]} {_fmt(_mean(s, source, 'spearman'))}" for s in stages if s["stage"] in marks]
        if trunk:
            steps.append(f"+ {trunk[0]['stage']} {_fmt(_mean(trunk[0], source, 'spearman'))}")
        text = (f"{source}: Spearman " + ", ".join(steps) + f"; every parameter random: Spearman "
                f"{_fmt(verdict['spearman_all_random'])}, SSIM {_fmt(verdict['ssim_all_random'])}, top-k overlap "
                f"{_fmt(verdict['topk_overlap_all_random'])}.")
        if source.startswith("attention/") and stages[0]["stage"] == "head":
            text += " (The head cannot change attention maps: they are computed before the classifier.)"
        if verdict["flagged"]:
            text += (f" FLAGGED: its maps barely change when every parameter is random (Spearman >= "
                     f"{result['flag_threshold']:g}): this map reflects the input's edges/positions, not what the "
                     f"model learned.")
        elif verdict["spearman_all_random"] is None:
            text += " Verdict: the randomised model's maps are constant, so they carry nothing of the trained ones."
        else:
            text += (f" Verdict: depends on the learned weights; its similarity falls below "
                     f"{result['flag_threshold']:g} once {verdict['first_stage_below_threshold']} is randomised.")
        lines.append(text)
    return "\n".join(lines)


def plot_sanity(result: dict, *, cmap: str = "jet") -> Figure:
    """Maps in a grid, stage by stage: one row per map source and shown image, one column per
    cascading stage (trained first); each map on its own min-max scale (labelled so)."""
    from ltpa.attention.overlays import overlay

    gallery = result["gallery"]
    stages, maps, images = gallery["stages"], gallery["maps"], gallery["images"]
    sources = list(maps)
    shown = next(iter(maps.values())).shape[1]
    offset = 1 if images is not None else 0
    columns = offset + len(stages)
    figure = Figure(figsize=(1.1 * columns + 1.5, 1.2 * len(sources) * shown + 0.8), layout="constrained")
    axes = figure.subplots(len(sources) * shown, columns, squeeze=False)
    for s, source in enumerate(sources):
        for i in range(shown):
            row = s * shown + i
            if images is not None:
                picture = images[i].permute(1, 2, 0).numpy()
                axes[row, 0].imshow(picture)
                axes[row, 0].set_ylabel(f"{source}\nimage {i}", fontsize=6)
            for c, stage in enumerate(stages):
                heat = maps[source][c, i].numpy()
                shown_map = overlay(picture, heat, cmap=cmap, alpha=0.6) if images is not None else heat
                axes[row, offset + c].imshow(shown_map, cmap=None if images is not None else cmap)
                if row == 0:
                    axes[row, offset + c].set_title(stage.replace("trunk.", ""), fontsize=6, rotation=45)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("cascading randomisation, top to bottom (each map on its own min-max scale)", fontsize=8)
    return figure


def sanity_trained(trained, images: Tensor, **kwargs) -> dict:
    """:func:`sanity_check` for a :func:`ltpa.inference.load_trained` result and uint8 images,
    prepared exactly as in training; the uint8 images are shown in the figure."""
    return sanity_check(trained.model, trained.prepare(images), display_images=images, **kwargs)


def write_sanity_report(result: dict, out_dir, *, overwrite: bool = False) -> dict[str, Path]:
    """Write ``sanity.json`` (everything but the gallery), ``sanity.txt`` (the explanation) and
    ``sanity.png`` (:func:`plot_sanity`) into ``out_dir``.

    ``out_dir`` is a folder path (a new or empty folder, or with ``overwrite`` an earlier sanity
    report, whose files alone are replaced; a training run or a folder ltpa did not write is
    refused), or an :class:`ltpa.runs.OutputFolder` of kind ``"sanity"`` the caller checked."""
    from ltpa.attention.overlays import save_figure
    from ltpa.attention.report import _jsonable
    from ltpa.runs.ownership import OutputFolder

    folder = out_dir if isinstance(out_dir, OutputFolder) else OutputFolder(
        out_dir, "sanity", overwrite=overwrite, what="sanity check").check()
    summary = {key: value for key, value in result.items() if key != "gallery"}
    with folder:
        written = {"json": folder.write_json(SANITY_FILE, _jsonable(summary)),
                   "text": folder.write_bytes("sanity.txt", (result["explanation"] + "\n").encode("utf-8"))}
        if result.get("gallery") and result["gallery"]["stages"][1:]:
            written["figure"] = save_figure(plot_sanity(result), folder.record("sanity.png"))
    return written

