"""Training curves (loss, accuracy, learning rate) and confusion matrices as PNGs, without
pyplot's global state."""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._files import atomic_write_bytes

__all__ = ["plot_curves", "plot_confusion"]


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(record["epoch"])
            ys.append(value)
    return xs, ys


def plot_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str = "") -> Path:
    """Draw loss, accuracy and learning rate per epoch and write them atomically to ``path``.

    Args:
        records: the per-epoch dicts of ``metrics.jsonl`` (keys ``epoch``, ``lr``,
            ``train_loss``, ``val_loss``, ``train_acc1``, ``val_acc1``; missing or non-finite
            values are skipped).
        path: PNG file to write (replaced atomically).
        title: figure title, e.g. the model name.

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    for ax, keys, label in (
        (loss_ax, ("train_loss", "val_loss"), "cross-entropy loss"),
        (acc_ax, ("train_acc1", "val_acc1"), "top-1 accuracy (%)"),
        (lr_ax, ("lr",), "learning rate"),
    ):
        for key in keys:
            xs, ys = _series(records, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3,
                        label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(keys) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend()
    _, lrs = _series(records, "lr")
    if lrs and min(lrs) > 0 and max(lrs) / min(lrs) > 20:
        lr_ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str],
                   path: str | os.PathLike, *, title: str = "") -> Path:
    """Draw a confusion matrix, each row divided by its true class's count, and write it
    atomically to ``path`` (PNG).

    Args:
        matrix: ``K x K`` counts, rows true classes, columns predictions.
        class_names: ``K`` names; shown as tick labels for up to 40 classes.
        path: PNG file to write.
        title: figure title.

    Returns:
        ``path`` as a Path.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(class_names)
    side = min(4 + 0.25 * k, 20)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="share of the true class")
    if k <= 40:
        ax.set_xticks(range(k), labels=list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(range(k), labels=list(class_names), fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())
