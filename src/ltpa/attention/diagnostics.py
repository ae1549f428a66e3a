"""Is an attention map uniform, collapsed, or stuck on the border? Numbers per level, and words.

Every statistic treats one image's map at one level as a distribution over its ``n = h * w``
positions (softmax maps already are one; sigmoid and CAM maps are scaled to sum to 1):

* ``entropy`` ``H = -sum p log p`` (nats), in ``[0, log n]``; ``normalised_entropy = H / log n``
  in [0, 1] (1 = uniform).
* ``effective_positions = exp(H)``: a map spread evenly over k positions has exactly k; 1 for a
  one-hot map, n for a uniform one. ``effective_fraction`` divides it by n.
* ``max_mass`` (the peak cell's share), ``peak_ratio = max_mass * n`` (how many times the uniform
  share 1/n the peak holds) and ``max_mass_per_pixel = max_mass / stride**2`` (mass per input
  pixel, comparable across levels of different resolution).
* ``top<k>``: mass in the k largest positions; a float k < 1 means a fraction of n (``top10%``).
* ``border_mass``: mass on the outermost ring of positions (``2h + 2w - 4`` of them), against
  ``border_uniform``, the ring's share of positions (what a uniform map puts there).
* ``shared_scale_peak``: where the level's brightest pixel lands on the ``"mass"`` colour scale
  that :func:`~ltpa.attention.attention_grid` shares between all levels of the same image (0 =
  lowest colour, 1 = highest). A level with a small value renders as (nearly) zero there.

Flags per image: ``uniform`` (normalised entropy > ``uniform_threshold``), ``collapsed``
(effective positions <= ``collapse_positions`` or max mass > ``collapse_top1``) and ``border``
(border mass > ``border_threshold`` and more than 1.5 times ``border_uniform``, so that a uniform
8x8 map, which already puts 44% on its ring, is not flagged).

LTPA attention (softmax or sigmoid) is class-agnostic: one map per image, whatever class is
asked about. CAM maps (VGG-GAP) belong to the predicted class.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ltpa.attention._inputs import as_distribution, prepare_images
from ltpa.attention.maps import AttentionMaps, compute_maps

__all__ = ["DEFAULT_TOPK", "map_statistics", "summarise_maps", "diagnose", "explain"]

DEFAULT_TOPK: tuple[float, ...] = (1, 5, 0.1)
_SUMMARY_KEYS = ("entropy", "normalised_entropy", "effective_positions", "effective_fraction",
                 "max_mass", "peak_ratio", "max_mass_per_pixel", "border_mass", "shared_scale_peak")


def _topk_key(k: float) -> str:
    return f"top{k * 100:g}%" if isinstance(k, float) and k < 1 else f"top{int(k)}"


def _topk_count(k: float, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
        raise ValueError(f"topk entries must be counts >= 1 or fractions in (0, 1), got {k!r}.")
    if isinstance(k, float) and k < 1:
        return max(1, math.ceil(k * n))
    if k != int(k):
        raise ValueError(f"a topk count must be a whole number, got {k!r}; use a fraction < 1 for a share of n.")
    return min(int(k), n)


def _border_mask(height: int, width: int) -> Tensor:
    ring = torch.zeros(height, width, dtype=torch.bool)
    ring[0, :] = ring[-1, :] = True
    ring[:, 0] = ring[:, -1] = True
    return ring


def map_statistics(
    maps: Tensor,
    *,
    stride: float = 1.0,
    topk: Sequence[float] = DEFAULT_TOPK,
    uniform_threshold: float = 0.95,
    collapse_positions: float = 2.0,
    collapse_top1: float = 0.9,
    border_threshold: float = 0.5,
) -> dict[str, Tensor]:
    """Per-image spread statistics and flags of one level's maps.

    Args:
        maps: ``(N, 1, h, w)`` or ``(N, h, w)`` non-negative maps at feature resolution.
        stride: input pixels per map position (for ``max_mass_per_pixel``).
        topk: counts (``5``) and/or fractions of n (``0.1``) for the ``top<k>`` masses.
        uniform_threshold, collapse_positions, collapse_top1, border_threshold: flag thresholds,
            see the module docstring.

    Returns:
        ``{name: (N,) tensor}``: float64 statistics (module docstring) and bool flags
        ``uniform``, ``collapsed``, ``border``.

    Raises:
        ValueError: a wrong shape, negative values or a bad ``topk`` entry.
    """
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3 or maps.numel() == 0:
        raise ValueError(f"maps must be (N, 1, h, w) or (N, h, w), got {tuple(maps.shape)}.")
    height, width = maps.shape[-2:]
    n = height * width
    p = as_distribution(maps)  # (N, n) float64, rows sum to 1
    entropy = (-(p * torch.log(p.clamp_min(1e-300))).sum(1)).clamp_min(0.0)
    normalised = entropy / math.log(n) if n > 1 else torch.zeros_like(entropy)
    effective = torch.exp(entropy)
    max_mass = p.max(1).values
    ring = _border_mask(height, width).flatten().to(p.device)
    border_uniform = float(ring.sum()) / n
    border_mass = (p * ring).sum(1)
    stats = {
        "entropy": entropy,
        "normalised_entropy": normalised,
        "effective_positions": effective,
        "effective_fraction": effective / n,
        "max_mass": max_mass,
        "peak_ratio": max_mass * n,
        "max_mass_per_pixel": max_mass / float(stride) ** 2,
        "border_mass": border_mass,
    }
    ordered = p.sort(1, descending=True).values.cumsum(1)
    for k in topk:
        stats[_topk_key(k)] = ordered[:, _topk_count(k, n) - 1]
    stats["uniform"] = normalised > uniform_threshold
    stats["collapsed"] = (effective <= collapse_positions) | (max_mass > collapse_top1)
    stats["border"] = (border_mass > border_threshold) & (border_mass > 1.5 * border_uniform)
    return stats


def _shared_scale_peaks(upsampled: Sequence[Tensor]) -> list[Tensor]:
    """Per level, ``(N,)`` position of its brightest pixel on each image's shared colour scale."""
    flat = [m.detach().double().flatten(1) for m in upsampled]
    low = torch.stack([f.min(1).values for f in flat]).min(0).values
    high = torch.stack([f.max(1).values for f in flat]).max(0).values
    span = (high - low).clamp_min(1e-300)
    return [torch.where(high > low, (f.max(1).values - low) / span, torch.zeros_like(low)) for f in flat]


def _describe(values: Tensor) -> dict[str, float]:
    values = values.double()
    return {"mean": float(values.mean()), "median": float(values.median())}


def summarise_maps(
    maps: AttentionMaps,
    *,
    topk: Sequence[float] = DEFAULT_TOPK,
    uniform_threshold: float = 0.95,
    collapse_positions: float = 2.0,
    collapse_top1: float = 0.9,
    border_threshold: float = 0.5,
) -> dict:
    """Data-set summary of :func:`map_statistics` for every level of ``maps``.

    Args:
        maps: from :func:`~ltpa.attention.compute_maps` (or a CAM method, same format).
        topk, uniform_threshold, collapse_positions, collapse_top1, border_threshold: see
            :func:`map_statistics`.

    Returns:
        A JSON-ready dict: ``num_images``, ``normalisation``, ``class_agnostic`` (True for LTPA
        attention), ``note``, ``thresholds``, ``topk`` (the key names) and ``levels``: ``{name:
        {"shape", "positions", "stride", "uniform_mass", "border_positions", "border_uniform",
        "stats": {statistic: {"mean", "median"}}, "flagged": {"uniform"|"collapsed"|"border":
        percent of images}}}``, levels in model order.
    """
    thresholds = {"uniform_threshold": uniform_threshold, "collapse_positions": collapse_positions,
                  "collapse_top1": collapse_top1, "border_threshold": border_threshold}
    peaks = _shared_scale_peaks(maps.upsampled)
    levels: dict[str, dict] = {}
    for level, level_maps, peak in zip(maps.levels, maps.maps, peaks):
        height, width = level_maps.shape[-2:]
        n = height * width
        per_image = map_statistics(level_maps, stride=level.stride, topk=topk, **thresholds)
        per_image["shared_scale_peak"] = peak
        flags = {name: round(100.0 * float(per_image.pop(name).double().mean()), 2)
                 for name in ("uniform", "collapsed", "border")}
        ring = int(_border_mask(height, width).sum())
        levels[level.name] = {
            "shape": [height, width], "positions": n, "stride": level.stride,
            "uniform_mass": 1.0 / n, "border_positions": ring, "border_uniform": ring / n,
            "stats": {name: _describe(values) for name, values in per_image.items()},
            "flagged": flags,
        }
    agnostic = maps.normalisation in ("softmax", "sigmoid")
    return {
        "num_images": int(maps.maps[0].shape[0]),
        "normalisation": maps.normalisation,
        "class_agnostic": agnostic,
        "note": ("LTPA attention is class-agnostic: one map per image whatever the class"
                 if agnostic else "maps of the predicted class"),
        "thresholds": thresholds,
        "topk": [_topk_key(k) for k in topk],
        "levels": levels,
    }


def diagnose(
    model: nn.Module,
    images: Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 64,
    **options,
) -> dict:
    """Run ``model`` on ``images`` and summarise how every level's attention is spread.

    The model runs in eval mode without gradients; its mode and the images are left unchanged.

    Args:
        model: an ltpa model with attention maps (e.g. ``load_trained(path).model``).
        images: uint8 ``(N, 3, H, W)`` with ``mean``/``std``, or float images already normalised.
        mean, std: the training normalisation (``trained.config.mean``/``std``) for uint8 images.
        batch_size: images per forward pass.
        **options: thresholds and ``topk`` of :func:`summarise_maps`.

    Returns:
        The summary of :func:`summarise_maps`; pass it to :func:`explain` for words.
    """
    inputs = prepare_images(images, mean, std)
    return summarise_maps(compute_maps(model, inputs, batch_size=batch_size), **options)


def _verdict(info: dict) -> str:
    stats, flagged = info["stats"], info["flagged"]
    effective = stats["effective_positions"]["median"]
    if flagged["uniform"] >= 50:
        return (f"the map is nearly uniform in {flagged['uniform']:.0f}% of images: it spreads its "
                "mass almost evenly and points nowhere in particular")
    if flagged["collapsed"] >= 50 and flagged["border"] >= 50:
        return (f"collapsed onto ~{effective:.0f} border position(s) in {flagged['border']:.0f}% of "
                "images: a known failure, the attention sits on padding artefacts, not on content")
    if flagged["collapsed"] >= 50:
        return (f"collapsed onto ~{effective:.0f} position(s) in {flagged['collapsed']:.0f}% of "
                "images: nearly one-hot")
    if flagged["border"] >= 50:
        return (f"{stats['border_mass']['mean']:.0%} of the mass on the outermost ring "
                f"(uniform: {info['border_uniform']:.0%}) in most images: it looks at the border")
    if effective / info["positions"] > 0.3:
        return (f"broad: spread over ~{effective:.0f} positions in the median image "
                f"({effective / info['positions']:.0%} of the map), yet not uniform (normalised entropy "
                f"{stats['normalised_entropy']['mean']:.2f}, uniform in {flagged['uniform']:.0f}% of images)")
    return (f"focused: concentrated on ~{effective:.0f} positions in the median image "
            f"({effective / info['positions']:.1%} of the map), neither uniform nor collapsed")


def explain(summary: dict) -> str:
    """Plain words for a :func:`summarise_maps` / :func:`diagnose` summary, one paragraph per level.

    Answers "why does this level look empty in the overlay?" with numbers: the uniform share
    1/n, how far the peak rises above it, how many positions (and input pixels) the mass
    effectively covers, and where the level's brightest pixel lands on the colour scale shared
    with the other levels (mass per input pixel). Two different causes are told apart: a faint
    map (near-uniform, or spread over many more input pixels than the level that sets the shared
    scale) and a tiny one (a bright peak covering only a few input pixels).
    """
    levels = summary["levels"]
    if not levels:
        return "no attention levels to explain."
    # The overlays' 'mass' scale is mass per input pixel (AttentionMaps.upsampled), shared by the
    # levels of an image: the level that reaches its top most often sets it.
    brightest = max(levels, key=lambda name: levels[name]["stats"]["shared_scale_peak"]["mean"])
    top_key = summary["topk"][-1] if summary["topk"] else None
    coarsest = max(levels, key=lambda name: levels[name]["stride"])
    coarse = levels[coarsest]["stride"]
    lines = [f"{summary['num_images']} images, {summary['normalisation']} maps; {summary['note']}."]
    for name, info in levels.items():
        stats, n = info["stats"], info["positions"]
        height, width = info["shape"]
        stride = info["stride"]
        image_pixels = height * width * stride**2
        effective = stats["effective_positions"]
        footprint = effective["median"] * stride**2  # input pixels the mass effectively covers
        text = (f"{name} ({height}x{width}, stride {stride:g}): {summary['normalisation']} over {n} positions, "
                f"uniform share 1/{n} = {1 / n:.2g}; max mass mean {stats['max_mass']['mean']:.3g} "
                f"(median {stats['max_mass']['median']:.3g}) = {stats['peak_ratio']['mean']:.0f}x uniform; "
                f"effective positions mean {effective['mean']:.1f}, median {effective['median']:.1f} "
                f"({stats['effective_fraction']['mean']:.0%} of the map, normalised entropy "
                f"{stats['normalised_entropy']['mean']:.2f}), i.e. ~{footprint:.0f} input pixels "
                f"({footprint / image_pixels:.1%} of the image)")
        if top_key is not None:
            text += f"; the {top_key[3:]} most attended positions hold {stats[top_key]['mean']:.0%} of the mass"
        text += (f"; border ring {stats['border_mass']['mean']:.0%} of the mass "
                 f"(uniform {info['border_uniform']:.0%}). Verdict: {_verdict(info)}.")
        peak = stats["shared_scale_peak"]["mean"]
        other = levels[brightest]
        other_footprint = other["stats"]["effective_positions"]["median"] * other["stride"] ** 2
        spread = (f"its mass covers ~{footprint:.0f} input pixels in the median image (~{effective['median']:.0f} "
                  f"positions of {stride**2:g} pixel(s) each) where {brightest}'s covers ~{other_footprint:.0f}")
        if name != brightest and peak < 0.25:
            text += (f" On the 'mass' colour scale (mass per input pixel, shared with {brightest}) its brightest "
                     f"pixel reaches only {peak:.0%} of the scale, so it renders as ~0 everywhere: its peak holds "
                     f"{stats['max_mass_per_pixel']['mean']:.3g} mass per input pixel vs "
                     f"{other['stats']['max_mass_per_pixel']['mean']:.3g} for {brightest}.")
            if info["flagged"]["uniform"] >= 50:
                text += " Here the map really is spread out: near-uniform attention, not a rendering artefact."
            else:
                text += f" This is spread, not absence: {spread}."
            text += " Use --mode per-map (each map on its own scale) to see its shape."
        elif name != brightest and peak < 0.5:
            text += (f" On the 'mass' colour scale (mass per input pixel, shared with {brightest}) its brightest "
                     f"pixel reaches {peak:.0%} of the scale on average, so it renders faint next to {brightest}: "
                     f"{spread}. Use --mode per-map to see its shape.")
        elif footprint / image_pixels < 0.01 and info["flagged"]["uniform"] < 50:
            text += (f" In the overlay it is not zero but tiny: its brightest pixel reaches {peak:.0%} of the "
                     f"shared 'mass' colour scale, yet half of the images have their mass on ~{footprint:.0f} "
                     f"input pixel(s), a dot that is easy to miss next to {coarsest} whose cells cover "
                     f"{coarse:g}x{coarse:g} pixels each; the map is genuinely that sharp "
                     "(per-map scaling will not widen it; zoom in or plot the raw map).")
        lines.append(text)
    return "\n".join(lines)
