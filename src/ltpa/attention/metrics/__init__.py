"""Every localisation and faithfulness score ltpa reports, named, defined and cited in one table.

:data:`METRICS` lists them (name, the key in ``localisation.json``/``.csv``, definition,
reference, ltpa's default); :func:`metrics_markdown` prints the table the README shows. The
functions live beside their kin: pointing and energy games in
:mod:`ltpa.attention.localisation`, Jaccard in :mod:`ltpa.attention.segmentation`, the WSOL box
and pixel scores in :mod:`ltpa.attention.metrics.wsol`, deletion/insertion and ROAD in
:mod:`ltpa.attention.faithfulness`, the sanity-check similarities in
:mod:`ltpa.attention.metrics.similarity`.

Pointing-game variants (``localise(pointing=...)``, ``ltpa localise --pointing``):

* ``ltpa`` (default): one peak per map, ties to the tied pixel nearest their centroid, no
  tolerance;
* ``zhang2018``: the same peak, a hit within 15 px at 224 px scaled to the image
  (:func:`~ltpa.attention.localisation.zhang_tolerance`);
* ``quantus``: a hit if any tied maximum is inside the region, no tolerance (Quantus'
  ``PointingGame``).

Every variant counts a peak inside *any* of several objects as a hit (boxes ``(N, K, 4)`` or the
union mask).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ltpa.attention.localisation import zhang_tolerance

__all__ = ["METRICS", "MetricInfo", "POINTING_VARIANTS", "metrics_markdown", "pointing_rule"]

POINTING_VARIANTS = ("ltpa", "zhang2018", "quantus")


def pointing_rule(variant: str, image_size: Sequence[int], tolerance: float | None = None) -> dict:
    """``{"ties", "tolerance"}`` keyword arguments of :func:`~ltpa.attention.pointing_game` for a
    named variant at ``image_size``; an explicit ``tolerance`` (px) replaces the variant's own.

    Raises:
        ValueError: an unknown variant.
    """
    if variant not in POINTING_VARIANTS:
        raise ValueError(f"unknown pointing-game variant {variant!r}; choose one of {list(POINTING_VARIANTS)}.")
    own = zhang_tolerance(image_size) if variant == "zhang2018" else 0.0
    return {"ties": "any" if variant == "quantus" else "centroid",
            "tolerance": own if tolerance is None else float(tolerance)}


@dataclass(frozen=True)
class MetricInfo:
    """One row of the metric table."""

    name: str
    key: str  # the column of localisation.csv / key of localisation.json's rows
    definition: str
    reference: str
    default: str


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo(
        "Pointing game", "pointing",
        "Share of images whose map peak (ties: the tied pixel nearest their centroid) lies in the "
        "object mask/box, or in any of several boxes.",
        "Zhang et al., Excitation Backprop, ECCV 2016 Sec. 5.1 / IJCV 2018",
        "variant `ltpa`, tolerance 0"),
    MetricInfo(
        "Pointing game, Zhang 2018 tolerance", "pointing",
        "As above, a hit within 15 px at 224 px scaled to the image (15·min(H, W)/224 px: 2.1 px at "
        "32 px, 5.4 px at 80 px).",
        "Zhang et al., IJCV 2018 (ECCV 2016 Sec. 5.1)", "`--pointing zhang2018`"),
    MetricInfo(
        "Pointing game, Quantus rule", "pointing",
        "A hit if *any* tied maximum lies in the region; an empty region counts as a hit in Quantus "
        "(NaN in a bool array), a miss in ltpa.",
        "Quantus `PointingGame` (Hedström et al., JMLR 2023)", "`--pointing quantus`"),
    MetricInfo(
        "Where missed peaks land", "miss_near_object, miss_border, miss_elsewhere",
        "Shares of images whose map misses under the chosen pointing rule, by where its peak (ltpa's "
        "tie rule) lies: within the Zhang 2018 tolerance of the region (a coarse map's cell on the "
        "object's edge), on the image's outermost row or column, or elsewhere; with the pointing "
        "game they sum to 1.",
        "ltpa's diagnostic; tolerance of Zhang et al., IJCV 2018", "always, beside the pointing game"),
    MetricInfo(
        "Energy pointing game", "energy",
        "Σ map·region / Σ map on the raw map (attention mass on the object); = Quantus "
        "`RelevanceMassAccuracy` for non-negative maps (empty region: 0 here, NaN there).",
        "Wang et al., Score-CAM, CVPR-W 2020 Sec. 4.3; Arras et al., Inf. Fusion 2022", "raw"),
    MetricInfo(
        "Energy pointing game, min-max", "energy",
        "The same on each map min-max normalised to [0, 1], Score-CAM's convention (published "
        "energies).", "Wang et al., Score-CAM, CVPR-W 2020 Sec. 4.3", "`--energy minmax`"),
    MetricInfo(
        "Jaccard, fixed threshold", "jaccard_fixed",
        "Mean IoU of {map ≥ t·max} with the mask.", "Jetley et al., ICLR 2018 Sec. 5.2", "t = 0.5"),
    MetricInfo(
        "Jaccard, calibrated", "jaccard_calibrated",
        "Mean IoU on the scored images at the grid threshold (0.05…0.95 of each map's max) that is "
        "best on a disjoint calibration split.",
        "Jetley et al. Sec. 5.2; calibration as Choe et al., CVPR 2020",
        "calibration: `--calibrate val` or `N` (none by default)"),
    MetricInfo(
        "Jaccard, oracle", "jaccard_oracle",
        "The same, threshold chosen on the scored images themselves (optimistic).",
        "Jetley et al. Sec. 5.2", "reported, labelled oracle"),
    MetricInfo(
        "MaxBoxAccV2", "maxboxacc_v2",
        "Mean over δ ∈ {0.3, 0.5, 0.7} of the best (over score thresholds τ = 0, 0.01, …, 0.99 of "
        "the min-max map) share of images where a box around some contour of {map ≥ τ} has "
        "IoU ≥ δ with a ground-truth box.",
        "Choe et al., CVPR 2020 (`clovaai/wsolevaluation` evaluation.py)", "boxes from every contour"),
    MetricInfo(
        "BoxAccV2, calibrated", "boxacc_v2_calibrated",
        "The same with each δ's τ chosen on the calibration split.", "Choe et al., CVPR 2020",
        "with a calibration split"),
    MetricInfo(
        "GT-known Loc", "gt_known_calibrated, gt_known_oracle",
        "Share of images with a box of IoU ≥ 0.5 at one τ (calibrated, or the oracle τ).",
        "Choe et al., CVPR 2020", "calibrated when a split is given"),
    MetricInfo(
        "Top-1 Loc", "top1_loc_calibrated, top1_loc_oracle",
        "Share of images classified correctly *and* with a box of IoU ≥ 0.5 at that τ.",
        "Choe et al., CVPR 2020", "with class labels"),
    MetricInfo(
        "PxAP", "pxap",
        "Area under the precision–recall curve of all pixels pooled (min-max maps, τ step 0.01) "
        "against masks.", "Choe et al., CVPR 2020", "data with masks"),
    MetricInfo(
        "Deletion / insertion AUC", "deletion_auc, insertion_auc, deletion_auc_se, insertion_auc_se",
        "Probability of the class as the most salient pixels are replaced by the mean (deletion) or "
        "copied into a blurred image (insertion), area under the curve; `_se`: its standard error "
        "over the images (sample std / √N), per row (the rows share their images).",
        "Petsiuk et al., RISE, BMVC 2018 (causal metrics)", "16 steps, mean / blur"),
    MetricInfo(
        "ROAD", "road_morf, road_lerf, road_combined, road_combined_se",
        "Probability of the class after noisy linear imputation of the most (MoRF) / least (LeRF) "
        "relevant 10…90 % of pixels; combined = mean (LeRF − MoRF)/2; `_se`: its standard error "
        "over the images (sample std / √N of the per-image combined scores).",
        "Rong et al., ROAD, ICML 2022 (grad-cam's implementation)", "percentiles 10…90"),
)


def metrics_markdown() -> str:
    """The metric table as Markdown (name, definition, reference, default)."""
    lines = ["| metric (key) | definition | reference | ltpa default |", "|---|---|---|---|"]
    for info in METRICS:
        lines.append(f"| {info.name} (`{info.key}`) | {info.definition} | {info.reference} | {info.default} |")
    return "\n".join(lines)
