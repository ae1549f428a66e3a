"""Does the model need what the map points at? Deletion and insertion curves (Petsiuk et al., RISE, 2018).

For each image and saliency map, pixels are ranked from most to least salient (ties keep
row-major order: a stable sort). At step ``t`` of ``steps`` the top ``round(t / steps * H * W)``
pixels are

* deleted: replaced by the deletion baseline, starting from the intact image; or
* inserted: copied from the image into the insertion baseline, starting from the baseline;

and the model's probability of the *originally predicted* class (or ``target_classes``) is
recorded. The area under each curve (trapezoid rule over the removed/inserted fraction in [0, 1])
summarises it: a faithful map gives a low deletion AUC (the score drops fast) and a high
insertion AUC.

Baselines (in the model's normalised input space): ``"mean"`` is 0 everywhere, i.e. the training
mean colour when images were normalised with the training mean/std (RISE deletes to zero);
``"blur"`` is the image blurred by a Gaussian of ``blur_sigma`` px (default 10% of the short side;
RISE inserts into a blurred image).

ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
ICML 2022) removes pixels without the out-of-distribution artefacts of a constant or
blurred fill: the removed pixels are *imputed* from their neighbours by noisy linear
interpolation (a sparse linear system per image, plus Gaussian noise of std 0.01). ltpa calls
the ``grad-cam`` package's implementation (``pytorch_grad_cam.metrics.road``). For each
percentile ``p`` of :data:`ROAD_PERCENTILES`, MoRF imputes the pixels at or above the map's
``p``-th percentile (the most relevant ``100 - p`` %) and LeRF the least relevant ``100 - p`` %;
the probability of the tracked class is recorded. Lower MoRF and higher LeRF are better; the
summary ``road_combined`` is the mean over percentiles of ``(LeRF - MoRF) / 2`` (grad-cam's
``ROADCombined``, on probabilities). Ties at a percentile change how many pixels are imputed:
a map with large plateaus (a coarse level placed with ``nearest``) removes fewer or more.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn
from tqdm.auto import tqdm

from ltpa.attention._inputs import (check_heat, in_inference_layout, model_device, prepare_images, preserve_model_state,
                                    uses_channels_last)
from ltpa.models.output import AttentionOutput

__all__ = ["BASELINES", "ROAD_PERCENTILES", "blur", "deletion_insertion", "plot_faithfulness", "road"]

BASELINES = ("mean", "blur")
ROAD_PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` float images (edges replicated); a new tensor."""
    if not sigma > 0:
        return images.clone()
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _baseline(kind: str, images: Tensor, sigma: float) -> Tensor:
    if kind not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}.")
    return torch.zeros_like(images) if kind == "mean" else blur(images, sigma)


def _logits(model: nn.Module, batch: Tensor) -> Tensor:
    if uses_channels_last(model):  # inputs in the weights' layout: no conversion in the first conv
        batch = batch.contiguous(memory_format=torch.channels_last)
    out = model(batch)
    return out.logits if isinstance(out, AttentionOutput) else out


def _standard_error(per_image: Tensor) -> float | None:
    """Standard error of the mean of ``(N,)`` per-image scores: sample std / sqrt(N); None for one image."""
    count = per_image.numel()
    return float(per_image.std() / math.sqrt(count)) if count > 1 else None


def _ranks(saliency: Tensor) -> Tensor:
    """``(N, H*W)`` int64 rank of each pixel, 0 = most salient (stable on ties)."""
    flat = saliency.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order).contiguous())
    return ranks


@in_inference_layout
def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    saliencies: Mapping[str, Tensor],
    *,
    steps: int = 16,
    deletion_baseline: str = "mean",
    insertion_baseline: str = "blur",
    blur_sigma: float | None = None,
    target_classes: Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> dict:
    """Deletion and insertion curves and their AUCs for every saliency map set.

    Args:
        model: a classifier (ltpa models return :class:`AttentionOutput`; plain logits work too).
            Run in eval mode without gradients; its mode is restored afterwards.
        images: uint8 ``(N, 3, H, W)`` with ``mean``/``std``, or float images already normalised.
            Never modified.
        saliencies: ``{method or level name: (N, H, W) or (N, 1, H, W)}`` maps at image
            resolution (only their order matters).
        steps: number of steps from 0 to all pixels, ``>= 1``; each curve has ``steps + 1``
            points, of which the first and last (the intact image, the whole baseline) are the
            same for every map and scored once per image.
        deletion_baseline, insertion_baseline: ``"mean"`` or ``"blur"`` (module docstring).
        blur_sigma: Gaussian sigma in px for ``"blur"``; default 10% of the short side.
        target_classes: ``(N,)`` classes to track; default the model's prediction on the
            intact images.
        mean, std: the training normalisation, for uint8 images.
        batch_size: forward-pass batch size (images x steps are batched together).
        progress: show a tqdm bar over the images on stderr (these curves take
            ``2 * (steps - 1)`` forward passes per image and map, plus 3 per image).

    Returns:
        ``{"fractions": [steps + 1 floats], "steps", "num_images", "baselines": {...},
        "methods": {name: {"deletion": {"curve": [...], "auc": float, "auc_se": float},
        "insertion": {...}}}}``; curves are mean probabilities, ``auc_se`` is the standard error
        of the AUC over the images, the sample std of the images' AUCs / sqrt(N) (``None`` for
        one image).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}.")
    if not saliencies:
        raise ValueError("saliencies is empty; pass {name: (N, H, W) maps}.")
    inputs = prepare_images(images, mean, std)
    count, _, height, width = inputs.shape
    heats = {}
    for name, heat in saliencies.items():
        maps = check_heat(heat, f"saliencies[{name!r}]")
        if maps.shape != (count, height, width):
            raise ValueError(f"saliencies[{name!r}] must be ({count}, {height}, {width}) like the images, "
                             f"got {tuple(maps.shape)}; use AttentionMaps.upsampled.")
        heats[name] = maps
    sigma = 0.1 * min(height, width) if blur_sigma is None else float(blur_sigma)
    device = model_device(model)
    pixels = height * width
    fractions = torch.arange(steps + 1, dtype=torch.float64) / steps
    counts = torch.round(fractions * pixels).long()  # pixels changed at each step
    inner = counts[1:-1]  # the steps between the intact image and the full baseline
    chunk = max(1, batch_size // max(steps - 1, 3))
    methods = {name: {"deletion": [], "insertion": []} for name in heats}
    with preserve_model_state(model), torch.no_grad():
        model.eval()
        for start in tqdm(range(0, count, chunk), desc="deletion/insertion", unit="batch", disable=not progress,
                          leave=False):
            batch = inputs[start:start + chunk].to(device)
            b = batch.shape[0]
            deleted = _baseline(deletion_baseline, batch, sigma)
            inserted = _baseline(insertion_baseline, batch, sigma)
            # The first and last step of every curve are the intact image or a whole baseline,
            # whatever the map: one forward pass scores them for all maps.
            ends = _logits(model, torch.cat([batch, deleted, inserted]))
            if target_classes is None:
                classes = ends[:b].argmax(1)
            else:
                classes = torch.as_tensor(target_classes, dtype=torch.int64)[start:start + b].to(device)
            intact, all_deleted, all_inserted = (
                p.gather(1, classes[:, None]) for p in ends.float().softmax(1).split(b))
            for name, heat in heats.items():
                ranks = _ranks(heat[start:start + b].to(device))  # (b, H*W)
                chosen = (ranks[:, None, :] < inner.to(device)[None, :, None]).view(b, steps - 1, 1, height, width)
                for kind, base in (("deletion", deleted), ("insertion", inserted)):
                    source, fill = (batch, base) if kind == "deletion" else (base, batch)
                    first, last = (intact, all_deleted) if kind == "deletion" else (all_inserted, intact)
                    middle = first[:, :0]
                    if steps > 1:
                        stacked = torch.where(chosen, fill[:, None], source[:, None])  # (b, S-1, C, H, W)
                        probability = _logits(model, stacked.flatten(0, 1)).float().softmax(1).view(b, steps - 1, -1)
                        middle = probability.gather(2, classes.view(b, 1, 1).expand(b, steps - 1, 1))[..., 0]
                    methods[name][kind].append(torch.cat([first, middle, last], 1).double().cpu())
    result = {}
    for name, curves in methods.items():
        result[name] = {}
        for kind, parts in curves.items():
            per_image = torch.cat(parts)  # (N, S+1)
            mean_curve = per_image.mean(0)
            # The AUC of the mean curve is the mean of the images' AUCs (the trapezoid rule is
            # linear), so their spread gives its standard error: the precision bought by N images.
            aucs = torch.trapezoid(per_image, fractions, dim=1)
            result[name][kind] = {"curve": [float(v) for v in mean_curve],
                                  "auc": float(torch.trapezoid(mean_curve, fractions)),
                                  "auc_se": _standard_error(aucs)}
    return {
        "fractions": [float(f) for f in fractions],
        "steps": steps,
        "num_images": count,
        "baselines": {"deletion": deletion_baseline, "insertion": insertion_baseline, "blur_sigma": sigma},
        "methods": result,
    }


@in_inference_layout
def road(
    model: nn.Module,
    images: Tensor,
    saliencies: Mapping[str, Tensor],
    *,
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    target_classes: Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """ROAD MoRF and LeRF curves for every saliency map set (see the module docstring).

    Args:
        model: a classifier (ltpa models return :class:`AttentionOutput`; plain logits work too).
            Run in eval mode without gradients; its mode is restored afterwards.
        images: uint8 ``(N, 3, H, W)`` with ``mean``/``std``, or float images already normalised.
            Never modified.
        saliencies: ``{name: (N, H, W) or (N, 1, H, W)}`` maps at image resolution.
        percentiles: integers in (0, 100).
        target_classes: ``(N,)`` classes to track; default the prediction on the intact images.
        mean, std: the training normalisation, for uint8 images.
        seed: seed of the imputation noise (the caller's global RNG is left as it was).
        batch_size: images per forward pass.
        progress: show a tqdm bar over the images on stderr.

    Returns:
        ``{"percentiles", "removed_fractions", "num_images", "methods": {name: {"morf": [mean
        probability per percentile], "lerf": [...], "road_morf", "road_lerf",
        "road_combined", "road_morf_se", "road_lerf_se", "road_combined_se"}}}``; each
        ``_se`` is the standard error of that score over the images (sample std / sqrt(N) of the
        per-image scores; None for one image).
    """
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    grid = [int(p) for p in percentiles]
    if not grid or any(isinstance(p, bool) or not 0 < int(p) < 100 or p != int(p) for p in percentiles):
        raise ValueError(f"percentiles must be whole numbers in (0, 100), got {list(percentiles)!r}.")
    if not saliencies:
        raise ValueError("saliencies is empty; pass {name: (N, H, W) maps}.")
    inputs = prepare_images(images, mean, std)
    count, _, height, width = inputs.shape
    heats = {}
    for name, heat in saliencies.items():
        maps = check_heat(heat, f"saliencies[{name!r}]")
        if maps.shape != (count, height, width):
            raise ValueError(f"saliencies[{name!r}] must be ({count}, {height}, {width}) like the images, "
                             f"got {tuple(maps.shape)}; use AttentionMaps.upsampled.")
        heats[name] = maps.double().cpu()
    device = model_device(model)
    imputer = NoisyLinearImputer()
    removers = {kind: [cls(p, imputer) for p in grid]
                for kind, cls in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst))}
    per_image = {name: {"morf": [], "lerf": []} for name in heats}
    with preserve_model_state(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        model.eval()
        torch.manual_seed(seed)
        if target_classes is None:
            tracked = torch.cat([_logits(model, chunk.to(device)).argmax(1).cpu() for chunk in inputs.split(batch_size)])
        else:
            tracked = torch.as_tensor(target_classes, dtype=torch.int64)
        for index in tqdm(range(count), desc="ROAD", unit="image", disable=not progress, leave=False):
            image, target = inputs[index].cpu(), int(tracked[index])
            # grad-cam's removal and noisy linear imputation, one image and map at a time; the
            # forward passes of every map, percentile and order of the image are batched.
            with warnings.catch_warnings():
                # grad-cam's imputer hands torch tensors to np.argwhere (NumPy 2 deprecation)
                warnings.filterwarnings("ignore", message="__array_wrap__", category=DeprecationWarning)
                imputed = torch.stack([remove(image, heat[index]).float() for heat in heats.values()
                                       for kind in ("morf", "lerf") for remove in removers[kind]])
            probability = torch.cat([_logits(model, chunk.to(device)).float().softmax(1)[:, target].cpu()
                                     for chunk in imputed.split(batch_size)]).double()
            for name, scores in zip(heats, probability.view(len(heats), 2, len(grid))):
                per_image[name]["morf"].append(scores[0])
                per_image[name]["lerf"].append(scores[1])
    methods = {}
    for name, kinds in per_image.items():
        morf_images, lerf_images = torch.stack(kinds["morf"]), torch.stack(kinds["lerf"])  # (N, P)
        morf, lerf = morf_images.mean(0).numpy(), lerf_images.mean(0).numpy()
        # Each summary is a mean over images of a per-image score (the means commute), so the
        # spread of those scores gives its standard error, as auc_se does for the curves.
        per_image_scores = {"road_morf": morf_images.mean(1), "road_lerf": lerf_images.mean(1),
                            "road_combined": ((lerf_images - morf_images) / 2).mean(1)}
        methods[name] = {"morf": [float(v) for v in morf], "lerf": [float(v) for v in lerf],
                         "road_morf": float(morf.mean()), "road_lerf": float(lerf.mean()),
                         "road_combined": float(((lerf - morf) / 2).mean())}
        methods[name].update({f"{key}_se": _standard_error(scores) for key, scores in per_image_scores.items()})
    return {"percentiles": grid, "removed_fractions": [(100 - p) / 100 for p in grid], "num_images": count,
            "methods": methods}


def plot_faithfulness(result: dict) -> Figure:
    """Deletion and insertion curves of :func:`deletion_insertion`'s result, AUCs in the legend."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    axes = figure.subplots(1, 2)
    fractions = np.asarray(result["fractions"])
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for name, scores in result["methods"].items():
            ax.plot(fractions, scores[kind]["curve"], label=f"{name} (AUC {scores[kind]['auc']:.3f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        ax.set_ylabel("probability of the predicted class")
        ax.set_title(f"{kind} (baseline: {result['baselines'][kind]})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    return figure
