"""The report's pictures: matplotlib figures turned into ``data:`` URIs, so the HTML holds them.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state). Text that
comes from data (class names) has its ``$`` escaped, so that matplotlib draws it literally
instead of reading it as mathtext.
"""
from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["figure_uri", "file_uri", "curves_figure", "confusion_figure", "plain_text"]

_MIME = {"png": "image/png", "svg": "image/svg+xml"}
MAX_LABELLED_CLASSES = 120


def plain_text(text: object) -> str:
    """``text`` as a string matplotlib draws as written (no mathtext)."""
    return str(text).replace("$", r"\$")


def figure_uri(figure: Figure, *, fmt: str = "png", dpi: float = 90) -> str:
    """``data:image/...;base64,...`` of ``figure`` saved as PNG or SVG."""
    if fmt not in _MIME:
        raise ValueError(f"fmt must be one of {sorted(_MIME)}, got {fmt!r}")
    buffer = io.BytesIO()
    # No metadata: the SVG would otherwise carry a date, and both a software tag.
    metadata = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    figure.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return f"data:{_MIME[fmt]};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_uri(path: Path) -> str:
    """``data:image/png;base64,...`` of a PNG file (e.g. ``parts.png`` of ``ltpa localise``)."""
    if path.suffix.lower() != ".png":
        raise ValueError(f"only PNG files are embedded, got {str(path)!r}")
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(record["epoch"])
            ys.append(float(value))
    return xs, ys


def curves_figure(records: Sequence[dict[str, Any]], *, title: str = "", tested_epoch: int | None = None) -> Figure:
    """Loss, top-1 accuracy and learning rate per epoch from ``metrics.jsonl`` records.

    ``tested_epoch`` draws a dashed line at the epoch whose weights were tested.
    """
    figure = Figure(figsize=(11, 3.2), layout="constrained")
    panels = figure.subplots(1, 3)
    for ax, keys, label in (
        (panels[0], ("train_loss", "val_loss"), "cross-entropy loss"),
        (panels[1], ("train_acc1", "val_acc1", "val_acc5"), "accuracy (%)"),
        (panels[2], ("lr",), "learning rate (epoch start)"),
    ):
        for key in keys:
            xs, ys = _series(records, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key.replace("_", " "))
        if tested_epoch is not None:
            ax.axvline(tested_epoch, color="grey", linestyle="--", linewidth=1, label=f"tested (epoch {tested_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and (len(keys) > 1 or tested_epoch is not None):
            ax.legend(fontsize=8)
    _, lrs = _series(records, "lr")
    if lrs and min(lrs) > 0 and max(lrs) / min(lrs) > 20:
        panels[2].set_yscale("log")
    if title:
        figure.suptitle(plain_text(title), fontsize=10)
    return figure


def confusion_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> Figure:
    """The confusion matrix as a heat map, each row divided by its true class's count.

    Rows are true classes, columns predictions, both labelled with the class names (up to
    :data:`MAX_LABELLED_CLASSES`; beyond that the axes show indices).
    """
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix must be K x K with K = {len(class_names)} class names, "
                         f"got shape {counts.shape}")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(class_names)
    side = float(np.clip(3.0 + 0.16 * k, 4.0, 18.0))
    figure = Figure(figsize=(side + 1.6, side), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(share, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    if k <= MAX_LABELLED_CLASSES:
        size = 8 if k <= 20 else max(3.5, 8 - k / 20)
        labels = [plain_text(n) for n in class_names]
        ax.set_xticks(range(k), labels=labels, rotation=90, fontsize=size)
        ax.set_yticks(range(k), labels=labels, fontsize=size)
    if k <= 12:
        for (i, j), value in np.ndenumerate(counts):
            if value:
                ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=8,
                        color="black" if share[i, j] > 0.5 else "white")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return figure
