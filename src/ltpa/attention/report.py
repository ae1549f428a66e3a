"""Everything about where a model looks, against ground truth, in one call and one folder.

:func:`localise` computes, for the learned attention (each level) and the baselines (Grad-CAM,
Grad-CAM++, LayerCAM, CAM of a VGG-GAP model, centre prior, random), on the same images:

Gradient saliency (Simonyan et al. 2014, :mod:`ltpa.attention.saliency`) is one more baseline
row (method ``"saliency"``). The centre prior is a centred isotropic Gaussian
(:func:`~ltpa.attention.localisation.centre_prior`), the same for every image: it needs no
training data. With ``groups`` (the class folders of a ``masks:`` folder) the pointing game and
the Jaccard scores are also given per class (``per_class``; the calibrated threshold is still
chosen once, on the whole calibration split).

* pointing game (a named variant: ``ltpa``, ``zhang2018`` or ``quantus``) and energy pointing
  game (``raw`` or ``minmax``) against the mask (or box);
* Jaccard of binarised maps against the mask (fixed threshold, a threshold calibrated on a
  disjoint split when one is given, the oracle threshold, per-image upper bound), see
  :mod:`ltpa.attention.segmentation`;
* with boxes, MaxBoxAccV2 and GT-known / top-1 localisation; with masks, PxAP (see
  :mod:`ltpa.attention.metrics.wsol`), thresholds calibrated on the same disjoint split;
* the level x part table, see :mod:`ltpa.attention.parts`, when keypoints are given;
* deletion / insertion AUCs and ROAD, see :mod:`ltpa.attention.faithfulness`;
* the spread diagnostics of the learned maps and their plain-words explanation, see
  :mod:`ltpa.attention.diagnostics`.

:func:`write_localisation_report` writes ``localisation.json`` (everything), ``localisation.csv``
(one row per method/level, one column per metric), ``localisation_per_class.csv`` (with
``groups``: one row per class and method/level), ``diagnostics.txt`` (the explanation),
``parts.png`` and ``faithfulness.png``. :data:`ltpa.attention.metrics.METRICS` defines and cites
every column.
"""
from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ltpa.attention._inputs import in_inference_layout, prepare_images
from ltpa.attention.cam_baselines import CAM_METHODS, default_cam_layer, gap_cam_maps, grad_cam_maps
from ltpa.attention.diagnostics import explain, summarise_maps
from ltpa.attention.faithfulness import ROAD_PERCENTILES, deletion_insertion, plot_faithfulness, road
from ltpa.attention.localisation import (box_to_mask, centre_prior, energy_pointing_game, pointing_game,
                                        pointing_outcomes, random_map, zhang_tolerance)
from ltpa.attention.maps import AttentionMaps, compute_maps
from ltpa.attention.metrics import pointing_rule
from ltpa.attention.metrics.wsol import best_box_iou, box_accuracy_scores, pixel_average_precision, wsol_thresholds
from ltpa.attention.overlays import save_figure
from ltpa.attention.parts import part_table, plot_part_table
from ltpa.attention.saliency import gradient_saliency
from ltpa.attention.segmentation import DEFAULT_THRESHOLDS, segmentation_scores

__all__ = ["METHODS", "DEFAULT_METHODS", "class_targets", "localise", "localise_trained",
           "write_localisation_report"]

METHODS = ("attention", *CAM_METHODS, "cam", "saliency", "centre", "random")
DEFAULT_METHODS = ("attention", *CAM_METHODS, "centre", "random")
CSV_COLUMNS = ("method", "level", "kind", "pointing", "miss_near_object", "miss_border", "miss_elsewhere", "energy",
               "jaccard_fixed", "jaccard_calibrated",
               "calibrated_threshold", "jaccard_oracle", "oracle_threshold", "jaccard_per_image_best_upper_bound",
               "maxboxacc_v2", "boxacc_v2_calibrated", "gt_known_calibrated", "gt_known_oracle",
               "top1_loc_calibrated", "top1_loc_oracle", "pxap", "peak_on_part", "peak_part_fraction",
               "deletion_auc", "deletion_auc_se", "insertion_auc", "insertion_auc_se", "road_morf", "road_lerf",
               "road_combined", "road_combined_se")
_TABLE_HIDDEN = ("jaccard_per_image_best_upper_bound", "road_morf", "road_lerf", "peak_part_fraction", "miss_border",
                 "miss_elsewhere", "deletion_auc_se", "insertion_auc_se", "road_combined_se")
PER_CLASS_COLUMNS = ("class", "images", "method", "level", "pointing", "jaccard_fixed", "jaccard_calibrated",
                     "calibrated_threshold", "jaccard_oracle", "oracle_threshold")
_WSOL_KEYS = ("maxboxacc_v2", "boxacc_v2_calibrated", "gt_known_calibrated", "gt_known_oracle",
              "top1_loc_calibrated", "top1_loc_oracle")


def _heats(
    model: nn.Module, inputs: Tensor, methods: Sequence[str], *, gap_model: nn.Module | None,
    cam_layer: str | None, target_classes: Tensor | None, seed: int, batch_size: int,
) -> tuple[dict[str, dict], AttentionMaps | None]:
    """``{row name: {"method", "level", "kind", "heat": (N, H, W)}}`` and the learned maps."""
    count, _, height, width = inputs.shape
    rows: dict[str, dict] = {}
    learned = None
    if "attention" in methods:
        learned = compute_maps(model, inputs, batch_size=batch_size)
        agnostic = learned.normalisation in ("softmax", "sigmoid")
        kind = "learned attention, class-agnostic" if agnostic else "learned map, predicted class"
        for level, heat in zip(learned.levels, learned.upsampled):
            rows[f"attention/{level.name}"] = {"method": "attention", "level": level.name, "kind": kind, "heat": heat[:, 0]}
    cams = [m for m in methods if m in CAM_METHODS]
    if cams:
        target = "target_classes" if target_classes is not None else "predicted class"
        for name, maps in grad_cam_maps(model, inputs, methods=cams, layer=cam_layer,
                                        target_classes=target_classes, batch_size=batch_size).items():
            level = maps.levels[0].name
            rows[f"{name}/{level}"] = {"method": name, "level": level, "kind": f"post-hoc, {target}",
                                       "heat": maps.upsampled[0][:, 0]}
    if "cam" in methods:
        if gap_model is None:
            raise ValueError("method 'cam' needs a trained VGG-GAP model: pass gap_model=..., or drop 'cam'.")
        maps = gap_cam_maps(gap_model, inputs, target_classes=target_classes, batch_size=batch_size)
        rows["cam/vgg_gap"] = {"method": "cam", "level": maps.levels[0].name,
                               "kind": "CAM of a separate VGG-GAP model", "heat": maps.upsampled[0][:, 0]}
    if "saliency" in methods:
        target = "target_classes" if target_classes is not None else "predicted class"
        rows["saliency"] = {"method": "saliency", "level": "input",
                            "kind": f"post-hoc, |d score / d input| (Simonyan 2014), {target}",
                            "heat": gradient_saliency(model, inputs, target_classes=target_classes,
                                                      batch_size=batch_size)}
    if "centre" in methods:
        rows["centre"] = {"method": "centre", "level": "", "kind": "baseline: Gaussian centre prior",
                          "heat": centre_prior((height, width), batch_size=count)}
    if "random" in methods:
        generator = torch.Generator().manual_seed(seed)
        rows["random"] = {"method": "random", "level": "", "kind": f"baseline: uniform noise (seed {seed})",
                          "heat": random_map((height, width), generator, batch_size=count)}
    return rows, learned


def _truth(masks: Tensor | None, boxes: Tensor | None, count: int, height: int, width: int,
           what: str) -> tuple[Tensor, Tensor | None]:
    """The region every score uses (masks, else rasterised boxes) and the boxes as given."""
    if masks is None and boxes is None:
        raise ValueError(f"localise needs ground truth{what}: pass masks=(N, H, W) bool or boxes=(N, 4).")
    truth = torch.as_tensor(masks) if masks is not None else box_to_mask(boxes, (height, width))
    if truth.shape != (count, height, width) or truth.dtype != torch.bool:
        raise ValueError(f"masks{what} must be bool ({count}, {height}, {width}) like the images, got "
                         f"{truth.dtype} {tuple(truth.shape)}.")
    return truth, None if boxes is None else torch.as_tensor(boxes)


@in_inference_layout
def localise(
    model: nn.Module,
    images: Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    masks: Tensor | None = None,
    boxes: Tensor | None = None,
    parts: Tensor | None = None,
    part_visible: Tensor | None = None,
    part_names: Sequence[str] | None = None,
    targets: Tensor | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    gap_model: nn.Module | None = None,
    cam_layer: str | None = None,
    target_classes: Tensor | None = None,
    pointing: str = "ltpa",
    tolerance: float | None = None,
    energy: str = "raw",
    calibration_images: Tensor | None = None,
    calibration_masks: Tensor | None = None,
    calibration_boxes: Tensor | None = None,
    calibration_target_classes: Tensor | None = None,
    part_radius: float | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    fixed_threshold: float = 0.5,
    wsol_interval: float = 0.01,
    faithfulness_images: int | None = None,
    steps: int = 16,
    road_percentiles: Sequence[int] | None = ROAD_PERCENTILES,
    seed: int = 0,
    batch_size: int = 64,
    groups: Tensor | None = None,
    group_names: Sequence[str] | None = None,
    notes: Sequence[str] | None = None,
    progress: bool = False,
) -> dict:
    """Every localisation metric per method and level, on one set of images.

    The model's mode, parameters' gradients and the caller's tensors are left unchanged.
    :data:`ltpa.attention.metrics.METRICS` defines and cites every score.

    Args:
        model: a trained ltpa model with attention (e.g. ``load_trained(path).model``).
        images: uint8 ``(N, 3, H, W)`` with ``mean``/``std`` (``trained.config.mean``/``std``),
            or float images already normalised (then no mean/std).
        masks: bool ``(N, H, W)`` object masks; the region of every score. Without masks,
            ``boxes`` ``(N, 4)`` or ``(N, K, 4)`` ``(x0, y0, x1, y1)`` are rasterised (Jaccard is
            then against boxes). Boxes also give MaxBoxAccV2 and GT-known/top-1 Loc; masks give
            PxAP.
        parts: ``(N, P, 2)`` keypoints ``(x, y)`` with ``part_visible`` bool ``(N, P)`` and
            ``part_names`` (P); enables the part table.
        targets: ``(N,)`` true classes; adds the accuracy and top-1 Loc.
        methods: subset of :data:`METHODS`; ``"attention"`` gives one row per level, ``"cam"``
            needs ``gap_model``.
        gap_model: a trained VGG-GAP model on the same data, for ``"cam"``.
        cam_layer: Grad-CAM layer, default :func:`~ltpa.attention.cam_baselines.default_cam_layer`.
        target_classes: ``(N,)`` classes the class-specific maps explain (default the
            prediction); LTPA attention is class-agnostic and ignores it.
        pointing: pointing-game variant, ``"ltpa"``, ``"zhang2018"`` or ``"quantus"`` (see
            :mod:`ltpa.attention.metrics`).
        tolerance: pointing-game tolerance in pixels, replacing the variant's own.
        energy: ``"raw"`` (attention mass) or ``"minmax"`` (Score-CAM's convention).
        calibration_images: images disjoint from ``images`` (same dtype convention), with
            ``calibration_masks``/``calibration_boxes`` of the same kind as the scored ground
            truth; the Jaccard and box thresholds are chosen there and the scored images get
            ``*_calibrated`` scores. ``calibration_target_classes`` are their CAM classes.
        part_radius: keypoint disc radius in px; default 6% of the short side (~2 px at 32).
        thresholds, fixed_threshold: Jaccard threshold grid and fixed threshold.
        wsol_interval: step of the score-map thresholds of the box scores and PxAP.
        faithfulness_images: deletion/insertion/ROAD on the first this many images (``0`` skips
            them, ``None`` uses all; deletion/insertion cost ``2 * (steps - 1)`` forward passes
            per row and image plus 3 per image, ROAD ``2 * len(road_percentiles)`` imputations and
            passes).
        steps: deletion/insertion steps.
        road_percentiles: ROAD's percentiles; ``None`` or empty skips ROAD.
        seed: seed of the random baseline and of ROAD's imputation noise.
        batch_size: images per forward pass.
        groups: ``(N,)`` int64 class (folder) of each image, indexing ``group_names``; adds
            ``per_class`` (pointing and Jaccard per class and row).
        notes: lines about the data (e.g. images left out for want of a mask), kept in the JSON.
        progress: tqdm bars on stderr for the faithfulness curves, the slow part.

    Returns:
        A JSON-ready dict: ``num_images``, ``image_size``, ``region``, ``pointing`` (variant,
        ties, tolerance), ``energy``, ``tolerance``, ``calibration`` (None or the split's size),
        ``accuracy`` (or None), ``rows`` ``{row: {"method", "level", "kind", "pointing",
        "energy", "miss_near_object", "miss_border", "miss_elsewhere", "jaccard_fixed", ...}}`` (the
        CSV; the ``miss_*`` shares say where peaks that miss land, within Zhang et al.'s tolerance
        of the object or not), ``segmentation`` (full curves), ``wsol``
        (per-delta box accuracies) , ``parts`` (table or None), ``faithfulness`` (curves or
        None), ``road`` (curves or None), ``diagnostics`` and ``explanation`` (learned maps;
        None without ``"attention"``), ``per_class`` (None without ``groups``) and ``notes``.

    Raises:
        ValueError: no ground truth, mismatched counts, unknown methods or variants.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}.")
    inputs = prepare_images(images, mean, std)
    count, _, height, width = inputs.shape
    truth, box_truth = _truth(masks, boxes, count, height, width, "")
    region = "mask" if masks is not None else "box"
    rule = pointing_rule(pointing, (height, width), tolerance)
    if parts is not None and part_names is None:
        raise ValueError("parts need part_names (one name per keypoint), e.g. dataset.part_names.")
    calibrated = calibration_images is not None
    if calibrated:
        held_inputs = prepare_images(calibration_images, mean, std)
        if tuple(held_inputs.shape[1:]) != tuple(inputs.shape[1:]):
            raise ValueError(f"calibration images must be {tuple(inputs.shape[1:])} like the images, got "
                             f"{tuple(held_inputs.shape[1:])}.")
        if (calibration_masks is None) != (masks is None) or (calibration_boxes is None) != (boxes is None):
            raise ValueError("the calibration split needs the same kind of ground truth as the scored images "
                             f"(masks: {masks is not None}, boxes: {boxes is not None}).")
        held_truth, held_boxes = _truth(calibration_masks, calibration_boxes, held_inputs.shape[0], height, width,
                                        " of the calibration split")

    rows, learned = _heats(model, inputs, methods, gap_model=gap_model, cam_layer=cam_layer,
                           target_classes=target_classes, seed=seed, batch_size=batch_size)
    held_rows = {}
    if calibrated:
        held_rows, _ = _heats(model, held_inputs, methods, gap_model=gap_model, cam_layer=cam_layer,
                              target_classes=calibration_target_classes, seed=seed + 1, batch_size=batch_size)
    predictions = learned.predictions if learned is not None else None
    if targets is not None and predictions is None:
        predictions = compute_maps(model, inputs, batch_size=batch_size).predictions
    correct = None if targets is None else predictions == torch.as_tensor(targets)
    grid = wsol_thresholds(wsol_interval)
    near = zhang_tolerance((height, width))

    table: dict[str, dict] = {}
    segmentation: dict[str, dict] = {}
    wsol: dict[str, dict] = {}
    for name, row in rows.items():
        heat = row["heat"]
        held = (held_rows[name]["heat"], held_truth) if calibrated else None
        seg = segmentation_scores(heat, truth, thresholds=thresholds, fixed_threshold=fixed_threshold,
                                  calibration=held)
        segmentation[name] = seg
        hits = pointing_game(heat, mask=truth, **rule)
        table[name] = {
            "method": row["method"], "level": row["level"], "kind": row["kind"],
            "pointing": float(hits.float().mean()),
            "energy": float(energy_pointing_game(heat, mask=truth, normalise=energy).nanmean()),
            **_miss_shares(heat, truth, hits, near),
            **{key: seg[key] for key in ("jaccard_fixed", "jaccard_calibrated", "calibrated_threshold",
                                         "jaccard_oracle", "oracle_threshold", "jaccard_best", "best_threshold",
                                         "jaccard_per_image_best_upper_bound") if key in seg},
        }
        if box_truth is not None:
            held_ious = best_box_iou(held_rows[name]["heat"], held_boxes, grid) if calibrated else None
            boxes_scores = box_accuracy_scores(best_box_iou(heat, box_truth, grid), grid, correct=correct,
                                               calibration=held_ious)
            wsol[name] = boxes_scores
            table[name].update({key: boxes_scores[key] for key in _WSOL_KEYS if key in boxes_scores})
        if masks is not None:
            table[name]["pxap"] = pixel_average_precision(heat, truth, interval=wsol_interval)

    per_class = None
    if groups is not None:
        per_class = _per_class(rows, truth, groups, group_names, rule, thresholds=thresholds,
                               fixed_threshold=fixed_threshold,
                               held={name: (row["heat"], held_truth) for name, row in held_rows.items()})

    parts_result = None
    if parts is not None:
        radius = 0.06 * min(height, width) if part_radius is None else part_radius
        parts_result = part_table({name: row["heat"] for name, row in rows.items()}, parts, part_visible,
                                  part_names, radius=radius)
        for name, info in parts_result["levels"].items():
            part, fraction = max(info["peak"].items(), key=lambda item: item[1])
            table[name].update(peak_on_part=part, peak_part_fraction=fraction)

    faithfulness = road_result = None
    used = count if faithfulness_images is None else min(int(faithfulness_images), count)
    if used > 0:
        heats = {name: row["heat"][:used] for name, row in rows.items()}
        classes = None if target_classes is None else torch.as_tensor(target_classes)[:used]
        faithfulness = deletion_insertion(model, inputs[:used], heats, steps=steps, target_classes=classes,
                                          batch_size=max(batch_size, 4 * max(steps - 1, 3)), progress=progress)
        for name, scores in faithfulness["methods"].items():
            table[name].update(deletion_auc=scores["deletion"]["auc"], deletion_auc_se=scores["deletion"]["auc_se"],
                               insertion_auc=scores["insertion"]["auc"], insertion_auc_se=scores["insertion"]["auc_se"])
        if road_percentiles:
            road_result = road(model, inputs[:used], heats, percentiles=road_percentiles, target_classes=classes,
                               seed=seed, batch_size=batch_size, progress=progress)
            for name, scores in road_result["methods"].items():
                keys = ("road_morf", "road_lerf", "road_combined", "road_combined_se")
                table[name].update({key: scores[key] for key in keys})

    diagnostics = summarise_maps(learned) if learned is not None else None
    accuracy = None if correct is None else float(correct.float().mean())
    return _jsonable({
        "num_images": count, "image_size": [height, width], "region": region,
        "pointing": {"variant": pointing, **rule}, "energy": energy, "tolerance": rule["tolerance"],
        "calibration": {"images": int(held_inputs.shape[0])} if calibrated else None,
        "accuracy": accuracy, "methods": list(methods),
        "cam_layer": (cam_layer or default_cam_layer(model)) if any(m in CAM_METHODS for m in methods) else None,
        "rows": table, "segmentation": segmentation, "wsol": wsol or None, "parts": parts_result,
        "faithfulness": faithfulness, "road": road_result, "faithfulness_images": used,
        "diagnostics": diagnostics, "explanation": explain(diagnostics) if diagnostics else None,
        "per_class": per_class, "notes": list(notes or []),
    })


def _miss_shares(heat: Tensor, truth: Tensor, hits: Tensor, near: float) -> dict[str, float]:
    """Where the peaks of the maps that miss under the pointing rule (``~hits``) land, as shares
    of the images: within ``near`` px of the region, on the image border, elsewhere. With the
    rule's hits they cover every image."""
    with warnings.catch_warnings():  # pointing_game has already warned about these regions
        warnings.filterwarnings("ignore", message=r".*ground-truth region\(s\) contain no pixel")
        outcomes = pointing_outcomes(heat, truth, near=near)
    misses = ~hits
    # ltpa's peak on the region while the rule misses: only a rule whose hits do not include
    # ltpa's (none of the shipped ones); counted as near the object
    near_object = misses & (outcomes["hit"] | outcomes["near_object"])
    border = misses & ~near_object & outcomes["border"]
    return {"miss_near_object": float(near_object.float().mean()),
            "miss_border": float(border.float().mean()),
            "miss_elsewhere": float((misses & ~near_object & ~border).float().mean())}


def _per_class(rows: dict, truth: Tensor, groups: Tensor, group_names: Sequence[str] | None, rule: dict, *,
               thresholds: Sequence[float], fixed_threshold: float, held: dict) -> dict:
    """``{class: {"images", "rows": {row: pointing and Jaccard scores}}}`` of the images of each group."""
    groups = torch.as_tensor(groups, dtype=torch.int64)
    if groups.shape != (truth.shape[0],):
        raise ValueError(f"groups must hold one class index per image ({truth.shape[0]}), got shape "
                         f"{tuple(groups.shape)}.")
    count = int(groups.max()) + 1 if len(groups) else 0
    names = list(group_names) if group_names is not None else [str(g) for g in range(count)]
    if len(names) < count:
        raise ValueError(f"group_names has {len(names)} names for group indices up to {count - 1}; give one per class.")
    result = {}
    for group, name in enumerate(names):
        index = (groups == group).nonzero().flatten()
        if not len(index):
            continue
        table = {}
        for row_name, row in rows.items():
            heat = row["heat"][index]
            seg = segmentation_scores(heat, truth[index], thresholds=thresholds, fixed_threshold=fixed_threshold,
                                      calibration=held.get(row_name))
            table[row_name] = {"method": row["method"], "level": row["level"],
                               "pointing": float(pointing_game(heat, mask=truth[index], **rule).float().mean()),
                               **{key: seg.get(key) for key in PER_CLASS_COLUMNS[5:]}}
        result[name] = {"images": len(index), "rows": table}
    return result


def class_targets(target: str | int, labels: Tensor | None, count: int, num_classes: int | None = None
                  ) -> Tensor | None:
    """The classes class-specific maps explain: ``"prediction"`` (None: each model's own),
    ``"label"`` (``labels``, the true classes) or a class index for every image.

    Raises:
        ValueError: ``"label"`` without labels, a class index outside ``[0, num_classes)``, or an
            unknown choice.
    """
    if num_classes is not None and isinstance(target, int) and not isinstance(target, bool) and target >= num_classes:
        raise ValueError(f"target {target} is not a class of this model (0 to {num_classes - 1}); give a class "
                         f"index below {num_classes}, 'label' or 'prediction'")
    if target == "prediction":
        return None
    if target == "label":
        if labels is None:
            raise ValueError("target 'label' needs the images' true classes, which this data set does not have; "
                             "use 'prediction' or a class index")
        return torch.as_tensor(labels, dtype=torch.int64)
    if isinstance(target, int) and not isinstance(target, bool) and target >= 0:
        return torch.full((count,), target, dtype=torch.int64)
    raise ValueError(f"target must be 'prediction', 'label' or a class index >= 0, got {target!r}")


def localise_trained(trained, images: Tensor, *, calibration_images: Tensor | None = None, **kwargs) -> dict:
    """:func:`localise` for a :func:`ltpa.inference.load_trained` result and uint8 images (and
    uint8 ``calibration_images``), which are prepared exactly as in training (mean/std or the
    run's ZCA whitening)."""
    held = None if calibration_images is None else trained.prepare(calibration_images)
    return localise(trained.model, trained.prepare(images), calibration_images=held, **kwargs)


def _jsonable(value):
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def format_table(result: dict) -> str:
    """The main scores of :func:`localise` as an aligned text table (for logs and the CLI); the
    CSV has every column."""
    shown = [c for c in CSV_COLUMNS[3:] if not c.endswith("threshold") and c not in _TABLE_HIDDEN]
    columns = [c for c in shown if any(c in row for row in result["rows"].values())]
    widths = [max(len(c), 8) + 1 for c in columns]
    header = f"{'method/level':<22}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))
    lines = [header]
    for name, row in result["rows"].items():
        cells = []
        for c, w in zip(columns, widths):
            value = row.get(c)
            cells.append(f"{value:>{w}.3f}" if isinstance(value, float) else f"{str(value if value is not None else ''):>{w}}")
        lines.append(f"{name:<22}" + "".join(cells))
    if result.get("per_class"):
        keys = [c for c in ("pointing", "jaccard_fixed", "jaccard_calibrated", "jaccard_oracle")
                if any(row.get(c) is not None for group in result["per_class"].values()
                       for row in group["rows"].values())]
        lines += ["", "per class:", f"{'class':<16}{'images':>7}  {'method/level':<22}" + "".join(f"{k:>19}" for k in keys)]
        for group, info in result["per_class"].items():
            for name, row in info["rows"].items():
                cells = "".join(f"{row[k]:>19.3f}" if row.get(k) is not None else f"{'':>19}" for k in keys)
                lines.append(f"{group:<16}{info['images']:>7}  {name:<22}{cells}")
    return "\n".join(lines)


def _per_class_csv(result: dict) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PER_CLASS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for group, info in result["per_class"].items():
        for row in info["rows"].values():
            writer.writerow({"class": group, "images": info["images"],
                             **{key: ("" if row.get(key) is None else row[key]) for key in PER_CLASS_COLUMNS[2:]}})
    return buffer.getvalue().encode("utf-8")


def write_localisation_report(result: dict, out_dir, *, overwrite: bool = False) -> dict[str, Path]:
    """Write :func:`localise`'s result into ``out_dir`` (files replaced atomically).

    Args:
        result: from :func:`localise`.
        out_dir: a folder path, or an :class:`ltpa.runs.OutputFolder` of kind ``"localise"`` the
            caller already checked (``ltpa localise`` checks it before the slow part). A path is
            checked here: a new or empty folder, or an earlier localisation report with
            ``overwrite``; a training run or a folder ltpa did not write is refused.
        overwrite: with a path, replace an earlier localisation report there (only its files).

    Returns:
        ``{"json", "csv", "diagnostics", "parts", "faithfulness"}`` paths of the files written
        (the last three only when the result has them).
    """
    from ltpa.runs.ownership import OutputFolder

    folder = out_dir if isinstance(out_dir, OutputFolder) else OutputFolder(
        out_dir, "localise", overwrite=overwrite, what="localisation report").check()
    with folder:
        written = {"json": folder.write_json("localisation.json", _jsonable(result))}
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in result["rows"].values():
            writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in CSV_COLUMNS})
        written["csv"] = folder.write_bytes("localisation.csv", buffer.getvalue().encode("utf-8"))
        if result.get("per_class"):
            written["per_class_csv"] = folder.write_bytes("localisation_per_class.csv", _per_class_csv(result))
        if result.get("explanation"):
            written["diagnostics"] = folder.write_bytes("diagnostics.txt",
                                                        (result["explanation"] + "\n").encode("utf-8"))
        if result.get("parts"):
            written["parts"] = save_figure(plot_part_table(result["parts"]), folder.record("parts.png"))
        if result.get("faithfulness"):
            written["faithfulness"] = save_figure(plot_faithfulness(result["faithfulness"]),
                                                  folder.record("faithfulness.png"))
    return written
