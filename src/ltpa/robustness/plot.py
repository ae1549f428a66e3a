"""The paper's robustness figure: accuracy vs epsilon, one line per checkpoint, as a PNG."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["plot_robustness"]


def plot_robustness(result, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw accuracy (%) against epsilon (in 1/255 units) with 95% Wilson intervals, written atomically.

    Args:
        result: a :class:`~ltpa.robustness.evaluate.RobustnessResult`.
        path: the PNG to write (replaced atomically; its folder must exist).
        title: default names the attack and the number of images.

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.figure import Figure

    from ..attention import save_figure
    from ..transfer.probe import wilson_interval

    figure = Figure(figsize=(6.4, 4.4))
    axes = figure.add_subplot()
    xs = [e * 255 for e in result.eps]
    for curve in result.curves:
        ys = [100 * a for a in curve.accuracy]
        bounds = [wilson_interval(c, curve.num_images) for c in curve.correct]
        line, = axes.plot(xs, ys, marker="o", label=f"{curve.label}: {ys[0]:.1f}% clean")
        axes.fill_between(xs, [100 * lo for lo, _ in bounds], [100 * hi for _, hi in bounds],
                          color=line.get_color(), alpha=0.15, linewidth=0)
    axes.set_xlabel("epsilon (L-inf, in 1/255 of the pixel range)")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_xticks(xs)
    axes.set_xticklabels([f"{x:g}" for x in xs])
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if title is None:
        attack = result.attack.upper() + (f"-{result.steps}" if result.attack == "pgd" else "")
        title = f"white-box {attack} on {result.curves[0].num_images} images (shaded: 95% Wilson interval)"
    axes.set_title(title, fontsize="medium")
    figure.tight_layout()
    return save_figure(figure, path)
