"""Evaluation: loss and top-k accuracy over a split (summed exactly across ranks), per-sample
predictions for the final test report (per-class accuracy, confusion matrix), and
:func:`evaluate_checkpoint` behind ``ltpa eval``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._files import atomic_write_bytes, atomic_write_json
from ..runs.checkpoints import CheckpointError
from ..runs.preprocess import Preprocessing
from ..runs.run import Run
from ..runs.config import TrainConfig
from .data_setup import BatchLoader, build_data
from .distributed import DistInfo, all_reduce_sum, gather_objects
from .meters import accuracy_ks, topk_correct
from .precision import Precision, resolve_precision
from ..runs.layout import CLASSES_FILE
from ..errors import Option, UserError

__all__ = ["evaluate", "Predictions", "predict", "classification_report", "write_report",
           "format_report", "evaluate_checkpoint", "build_model", "SPLITS"]

logger = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")
_SINGLE = DistInfo()


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, precision: Precision, *,
             num_classes: int, dist: DistInfo | None = None) -> dict[str, float]:
    """Mean cross-entropy and top-1 (top-5 with >= 5 classes) accuracy over every sample.

    With several ranks each sees its shard of ``loader`` and the sums (loss, hits, count) are
    all-reduced, so the result counts every sample exactly once. Pass the bare model (not the
    DDP wrapper): shards may differ in size by one batch. The model runs in eval mode; its
    previous mode is restored afterwards.

    Returns:
        ``loss``, ``acc1`` (%), optionally ``acc5`` (%), ``samples``; ``{}`` for an empty split.
    """
    dist = dist or _SINGLE
    was_training = model.training
    model.eval()
    ks = accuracy_ks(num_classes)
    device = precision.device
    sums = torch.zeros(2 + len(ks), dtype=torch.float64, device=device)  # loss, count, hits...
    try:
        for images, targets in loader:
            with precision.autocast():
                logits = model(images).logits.float()  # (B, K)
            sums[0] += F.cross_entropy(logits, targets, reduction="sum").double()
            sums[1] += len(targets)
            sums[2:] += topk_correct(logits, targets, ks).double()
    finally:
        model.train(was_training)
    all_reduce_sum(sums, dist)  # float64 holds counts exactly up to 2**53
    seen = int(sums[1].item())
    if seen == 0:
        return {}
    out = {"loss": sums[0].item() / seen}
    for k, hits in zip(ks, sums[2:].tolist()):
        out[f"acc{k}"] = 100.0 * int(hits) / seen
    out["samples"] = seen
    return out


@dataclass(frozen=True)
class Predictions:
    """Per-sample results over a whole split, in the split's order, on the CPU.

    Attributes:
        targets: ``(N,)`` int64.
        top: ``(N, k)`` int64 class indices by descending logit (k = 5, or K when K < 5).
        losses: ``(N,)`` float64 cross-entropy per sample.
    """

    targets: Tensor
    top: Tensor
    losses: Tensor


@torch.no_grad()
def predict(model: nn.Module, loader: BatchLoader, precision: Precision, *,
            dist: DistInfo | None = None) -> Predictions:
    """Top-k predictions and per-sample losses of every sample in ``loader``'s split.

    With several ranks, the interleaved evaluation shards (``rank::world_size``) are gathered
    and put back in the split's order on every rank. Mode is restored as in :func:`evaluate`.
    """
    dist = dist or _SINGLE
    was_training = model.training
    model.eval()
    targets, tops, losses = [], [], []
    try:
        for images, batch_targets in loader:
            with precision.autocast():
                logits = model(images).logits.float()  # (B, K)
            k = min(5, logits.shape[1])
            targets.append(batch_targets.cpu())
            tops.append(logits.topk(k, dim=1).indices.cpu())
            losses.append(F.cross_entropy(logits, batch_targets, reduction="none").double().cpu())
    finally:
        model.train(was_training)
    local = (_cat(targets, torch.int64), _cat(tops, torch.int64, 2), _cat(losses, torch.float64))
    shards = gather_objects(local, dist)
    total = sum(len(s[0]) for s in shards)
    out = []
    for part in range(3):
        first = shards[0][part]
        merged = first.new_empty((total, *first.shape[1:]))
        for rank, shard in enumerate(shards):
            merged[rank::dist.world_size] = shard[part]
        out.append(merged)
    return Predictions(*out)


def _cat(parts: list[Tensor], dtype: torch.dtype, ndim: int = 1) -> Tensor:
    return torch.cat(parts) if parts else torch.empty((0,) * ndim, dtype=dtype)


def classification_report(predictions: Predictions, class_names: tuple[str, ...] | list[str]
                          ) -> dict[str, Any]:
    """Loss, top-1/top-5 accuracy and error, per-class accuracy and the confusion matrix.

    Accuracies and errors are percentages. ``confusion_matrix[i][j]`` counts samples of true
    class ``i`` predicted as ``j`` (``sklearn.metrics.confusion_matrix``). A class without
    samples has accuracy None.
    """
    from sklearn.metrics import confusion_matrix

    num_classes = len(class_names)
    n = len(predictions.targets)
    if n == 0:
        raise ValueError("cannot report on an empty split (0 samples)")
    targets = predictions.targets.numpy()
    top1 = predictions.top[:, 0].numpy()
    matrix = confusion_matrix(targets, top1, labels=list(range(num_classes)))
    report: dict[str, Any] = {"samples": n, "loss": float(predictions.losses.mean())}
    for k in accuracy_ks(num_classes):
        hits = int((predictions.top[:, :k] == predictions.targets[:, None]).any(dim=1).sum())
        report[f"acc{k}"] = 100.0 * hits / n
        report[f"top{k}_error"] = 100.0 - report[f"acc{k}"]
    per_class = []
    for index, name in enumerate(class_names):
        count = int(matrix[index].sum())
        per_class.append({"index": index, "class": name, "samples": count,
                          "acc1": 100.0 * int(matrix[index, index]) / count if count else None})
    report["per_class"] = per_class
    report["mean_per_class_acc1"] = _mean([c["acc1"] for c in per_class if c["acc1"] is not None])
    report["class_names"] = list(class_names)
    report["confusion_matrix"] = matrix.tolist()
    return report


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def write_report(report: dict[str, Any], out_dir: str | os.PathLike, *, prefix: str = "test",
                 title: str = "") -> dict[str, Path]:
    """Save ``report`` as ``{prefix}_report.json``, the confusion matrix as
    ``confusion_matrix.csv`` (header row: predicted class names) and ``confusion_matrix.png``
    (rows normalised to the true class's count), all atomically. Returns the paths."""
    from .plots import plot_confusion

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": atomic_write_json(out_dir / f"{prefix}_report.json", report)}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["true \\ predicted", *report["class_names"]])
    for name, row in zip(report["class_names"], report["confusion_matrix"]):
        writer.writerow([name, *row])
    stem = "confusion_matrix" if prefix == "test" else f"{prefix}_confusion_matrix"
    paths["csv"] = atomic_write_bytes(out_dir / f"{stem}.csv", buffer.getvalue().encode("utf-8"))
    paths["png"] = plot_confusion(report["confusion_matrix"], report["class_names"],
                                  out_dir / f"{stem}.png", title=title)
    return paths


def format_report(report: dict[str, Any], *, worst: int = 5) -> str:
    """A few lines for a terminal: errors, and the classes with the lowest accuracy."""
    lines = [f"{report['samples']} images: top-1 error {report['top1_error']:.2f}%"
             + (f", top-5 error {report['top5_error']:.2f}%" if "top5_error" in report else "")
             + f", loss {report['loss']:.4f}"]
    ranked = sorted((c for c in report["per_class"] if c["acc1"] is not None),
                    key=lambda c: c["acc1"])
    if ranked:
        lines.append("lowest per-class accuracy: " + ", ".join(
            f"{c['class']} {c['acc1']:.1f}% ({c['samples']})" for c in ranked[:worst]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- ltpa eval


def build_model(config: TrainConfig) -> nn.Module:
    """The model a config describes (``create_model`` with its options and image size)."""
    from ltpa.models import create_model

    options = {"input_size": config.image_size, **config.model_options}
    return create_model(config.model, num_classes=config.num_classes, **options)


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_spec: str | None = None, *,
                        split: str = "test", batch_size: int = 256, device: str = "auto",
                        precision: str = "fp32", out: str | os.PathLike | None = None
                        ) -> dict[str, Any]:
    """Evaluate a trained checkpoint on a split and save the report as JSON.

    Inputs are prepared exactly as in training: the run's own image size, mean/std, or the ZCA
    whitening saved in the run folder (``RUN/zca.safetensors``).

    Args:
        checkpoint: a checkpoint ``.json``/``.safetensors``/stem, or a run folder (its latest
            epoch checkpoint).
        data_spec: the data to evaluate on, e.g. ``"cifar100:/data"``; None = the run's own
            (same subset, same validation carve-out). Must have the run's number of classes.
        split: ``"test"``, ``"val"`` (the run's validation carve-out) or ``"train"``.
        batch_size: images per forward pass.
        device, precision: as in :class:`TrainConfig` (fp32 by default, for exact numbers).
        out: JSON file to write; default ``RUN/eval/<checkpoint>_<split>.json`` beside the
            run's ``checkpoints/`` folder (the checkpoint's folder when it is not in a run).

    Returns:
        The :func:`classification_report` dict plus ``checkpoint``, ``epoch``, ``data``,
        ``split``, ``model`` and ``path`` (the JSON written).

    Raises:
        ValueError: bad split, a data set with another number of classes, missing ZCA file.
        CheckpointError: unreadable or mismatched checkpoint.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be an integer >= 1, got {batch_size!r}; ", Option("batch_size", 256))
    run = Run.open(checkpoint)  # the one rebuild path: a run folder or any checkpoint
    if run.checkpoint is None:
        raise CheckpointError(f"run {run.folder} has no checkpoint yet (it stopped before its first one); "
                              f"continue the run to make one")
    ckpt, config = run.loaded, run.config
    run_dir = run.folder or run.checkpoint.parent
    path = Path(out) if out is not None else run_dir / "eval" / f"{ckpt.path.stem}_{split}.json"
    _check_report_path(path)
    if data_spec is not None and data_spec != config.data:
        config = dataclasses.replace(config, data=data_spec, subset_test=0)
    epoch = ckpt.epoch
    model = run.load_model()
    numerics = resolve_precision(precision, "auto", device)
    model.to(numerics.device, memory_format=numerics.memory_format)
    data = build_data(config)
    if data.num_classes != config.num_classes:
        raise ValueError(f"data {config.data!r} has {data.num_classes} classes but the checkpoint's "
                         f"model predicts {config.num_classes}; evaluate on data with the same classes")
    preprocess = Preprocessing.from_config(config, run_dir, device=numerics.device)
    images = {"test": data.test_images, "val": data.val_images, "train": data.train_images}[split]
    targets = {"test": data.test_targets, "val": data.val_targets, "train": data.train_targets}[split]
    if len(targets) == 0:
        raise ValueError(f"the {split} split of {config.data!r} is empty ({data.describe()}, "
                         f"val_fraction={config.val_fraction}); choose another split")
    warnings = _class_name_warnings(run_dir, config.data, data.class_names)
    loader = BatchLoader(images, targets, batch_size=batch_size, mean=config.mean,
                         std=config.std, device=numerics.device,
                         memory_format=numerics.memory_format, whiten=preprocess.zca, name=split)
    report = classification_report(predict(model, loader, numerics), data.class_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(run.checkpoint), "epoch": epoch, "model": config.model,
              "data": config.data, "split": split, **report, "warnings": warnings, "path": str(path)}
    atomic_write_json(path, report)
    logger.info("%s on %s/%s: %s", ckpt.path.name, config.data, split, format_report(report))
    return report


def _check_report_path(path: Path) -> None:
    """Refuse, before any work, a report path that cannot be written as a file."""
    if path.is_dir():
        raise UserError(f"{path} is a folder; ", Option("out", path / "eval.json"), " (a JSON file path)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"cannot write {path}: {parent} is not writable (read-only folder "
                                "or file system); write elsewhere (", Option("out", "PATH"), ")")
            return


def _class_name_warnings(run_dir: Path, data: str, class_names: tuple[str, ...]) -> list[str]:
    """A warning (logged and returned) when the run's classes.json names other classes than
    the data: the numbers would pair class k of the model with class k of the data."""
    trained_path = run_dir / CLASSES_FILE
    if not trained_path.is_file():
        return []
    try:
        trained = [str(name) for name in json.loads(trained_path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return [f"could not read the run's class names from {trained_path}; the data's class "
                f"names could not be checked"]
    if list(trained) == list(class_names):
        return []
    differing = [k for k, (a, b) in enumerate(zip(trained, class_names)) if a != b]
    pairs = ", ".join(f"{trained[k]!r} vs {class_names[k]!r}" for k in differing[:3])
    message = (f"the model was trained on other classes than {data!r} has: {len(differing)} of "
               f"{len(class_names)} names differ by index (model vs data: {pairs}"
               f"{', ...' if len(differing) > 3 else ''}; model classes from {trained_path}). "
               f"Accuracy pairs class k of the model with class k of the data, so it is only "
               f"meaningful if they are the same classes")
    logger.warning("%s", message)
    return [message]
