"""Training curves (loss, accuracy, learning rate) as one PNG, without pyplot's global state."""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes

__all__ = ["plot_curves"]


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
