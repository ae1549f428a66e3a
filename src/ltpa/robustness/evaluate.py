"""Accuracy under white-box attack vs epsilon, for one or several checkpoints on the same images.

The paper (Jetley et al. 2018, Sec. 5) compares VGG and VGG-att under FGSM; this module draws
that figure for any ltpa checkpoints::

    from ltpa.robustness import robustness_curve, plot_robustness

    result = robustness_curve(["runs/vgg/checkpoints/best.json", "runs/att3/checkpoints/best.json"],
                              images, targets, attack="fgsm", eps=parse_eps("1/255,2/255,4/255,8/255"))
    print(format_table(result))
    plot_robustness(result, "robustness.png")

``eps`` is in ``[0, 1]`` pixel units of the un-normalised image (see :mod:`.attacks`), and the
accuracy at ``eps = 0`` is the clean accuracy. Each checkpoint is attacked in eval mode through
its own preprocessing; its train/eval flags, ``requires_grad`` and ``.grad`` are restored after.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..attention._inputs import model_device, preserve_model_state
from ..errors import Option, UserError
from .attacks import ATTACKS, PixelClassifier, fgsm, pgd, pixel_preprocess

__all__ = ["DEFAULT_EPS", "RobustnessCurve", "RobustnessResult", "parse_eps", "attack_accuracy",
           "robustness_curve", "format_table", "run_robustness", "RESULT_FILE", "FIGURE_FILE"]

logger = logging.getLogger(__name__)

DEFAULT_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
RESULT_FILE = "robustness.json"
FIGURE_FILE = "robustness.png"
FORMAT = "ltpa-robustness"
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+)\s*)?$")


@dataclass(frozen=True)
class RobustnessCurve:
    """One checkpoint's accuracy at each epsilon (``eps[0] == 0``: clean accuracy).

    Attributes:
        label: the name in tables and plots.
        checkpoint: path of the checkpoint sidecar.
        model: registered model name.
        preprocessing: ``"zca"`` or ``"mean/std"``.
        eps: epsilons in ``[0, 1]`` pixel units, increasing.
        correct: images still classified correctly at each epsilon.
        num_images: images attacked.
    """

    label: str
    checkpoint: str
    model: str
    preprocessing: str
    eps: tuple[float, ...]
    correct: tuple[int, ...]
    num_images: int

    @property
    def accuracy(self) -> tuple[float, ...]:
        return tuple(c / self.num_images for c in self.correct)

    def to_dict(self) -> dict:
        from ..transfer.probe import wilson_interval

        return {"label": self.label, "checkpoint": self.checkpoint, "model": self.model,
                "preprocessing": self.preprocessing, "num_images": self.num_images,
                "correct": list(self.correct), "accuracy": list(self.accuracy),
                "accuracy_ci95_wilson": [list(wilson_interval(c, self.num_images)) for c in self.correct]}


@dataclass(frozen=True)
class RobustnessResult:
    """Curves of several checkpoints under one attack.

    Attributes:
        attack: ``"fgsm"`` or ``"pgd"``.
        eps: the epsilons (first 0), ``[0, 1]`` pixel units.
        steps, step_size, random_start, seed: the PGD settings (``step_size`` None: ``2.5 * eps / steps``).
        curves: one per checkpoint, in the given order.
        data: the data spec the images came from, if known.
    """

    attack: str
    eps: tuple[float, ...]
    steps: int
    step_size: float | None
    random_start: bool
    seed: int
    curves: tuple[RobustnessCurve, ...]
    data: str | None = None

    def to_dict(self) -> dict:
        settings = {"attack": self.attack, "eps": list(self.eps), "eps_x255": [round(e * 255, 4) for e in self.eps]}
        if self.attack == "pgd":
            settings.update(steps=self.steps, random_start=self.random_start, seed=self.seed,
                            step_size=self.step_size if self.step_size is not None else "2.5*eps/steps")
        return {"format": FORMAT, **settings, "loss": "cross-entropy on the logits, true label",
                "eps_units": "L-inf, [0, 1] pixels of the un-normalised image", "data": self.data,
                "curves": [curve.to_dict() for curve in self.curves]}


def parse_eps(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"1/255,2/255,0.05"`` (or numbers) -> sorted unique epsilons with 0 first.

    Raises:
        ValueError: a value that is not a number or fraction, or outside ``[0, 1]``.
    """
    pieces = text.split(",") if isinstance(text, str) else list(text)
    values = []
    for piece in pieces:
        if isinstance(piece, str):
            match = _NUMBER.match(piece)
            if not match or (match.group(2) is not None and float(match.group(2)) == 0):
                raise ValueError(f"cannot read eps {piece.strip()!r}; write comma-separated numbers or fractions "
                                 f"in [0, 1] pixel units, e.g. 1/255,2/255,4/255,8/255")
            value = float(match.group(1)) / (float(match.group(2)) if match.group(2) else 1.0)
        else:
            value = float(piece)
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"eps {piece!r} is outside [0, 1]; eps is in [0, 1] pixel units (8/255 = 0.0314)")
        values.append(value)
    if not values:
        raise ValueError("no eps given; e.g. 1/255,2/255,4/255,8/255")
    return tuple(sorted({0.0, *values}))


def _check_inputs(images: Tensor, targets: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise TypeError(f"images must be a uint8 (N, 3, H, W) tensor, got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    if not isinstance(targets, Tensor) or targets.shape != images.shape[:1]:
        raise ValueError(f"targets must be a (N,) tensor with one class per image ({images.shape[0]}), got "
                         f"{tuple(getattr(targets, 'shape', ()))}")
    if len(images) == 0:
        raise ValueError("no images to attack; check the data spec and the number of images (limit)")


def attack_accuracy(trained, images: Tensor, targets: Tensor, *, attack: str = "fgsm",
                    eps: Sequence[float] = DEFAULT_EPS, steps: int = 10, step_size: float | None = None,
                    random_start: bool = True, seed: int = 0, batch_size: int = 128,
                    label: str | None = None) -> RobustnessCurve:
    """Attack one checkpoint at every epsilon and count the images it still classifies correctly.

    Args:
        trained: a :class:`ltpa.inference.TrainedModel`; runs on its model's device.
        images: uint8 ``(N, 3, H, W)`` at the model's input size; not modified.
        targets: ``(N,)`` true classes.
        attack: ``"fgsm"`` or ``"pgd"``.
        eps: epsilons in ``[0, 1]`` pixel units; 0 is added (clean accuracy).
        steps, step_size, random_start: PGD settings (see :func:`.attacks.pgd`).
        seed: seeds PGD's random start, afresh for each epsilon.
        batch_size: images per forward/backward pass.
        label: the curve's name (default: model name and run folder).

    Returns:
        A :class:`RobustnessCurve`.

    Raises:
        ValueError: unknown attack, bad epsilon, targets outside the model's classes.
        TypeError: images not uint8 ``(N, 3, H, W)``.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    eps = parse_eps(eps)
    _check_inputs(images, targets)
    num_classes = trained.config.num_classes
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise ValueError(f"targets must be classes of the model (0..{num_classes - 1}), got "
                         f"{int(targets.min())}..{int(targets.max())}; evaluate on the data the checkpoint was "
                         f"trained for")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = trained.model
    device = model_device(model)
    classifier = PixelClassifier(model, pixel_preprocess(trained))
    correct = [0] * len(eps)
    with preserve_model_state(model):
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)  # gradients w.r.t. the image only; .grad stays untouched
        for index, epsilon in enumerate(eps):
            generator = torch.Generator(device=device).manual_seed(seed)
            for start in range(0, len(images), batch_size):
                pixels = images[start:start + batch_size].to(device).float() / 255.0
                labels = targets[start:start + batch_size].to(device=device, dtype=torch.int64)
                if epsilon > 0 and attack == "fgsm":
                    pixels = fgsm(classifier, pixels, labels, epsilon)
                elif epsilon > 0:
                    pixels = pgd(classifier, pixels, labels, epsilon, steps=steps, step_size=step_size,
                                 random_start=random_start, generator=generator)
                with torch.no_grad():
                    correct[index] += int((classifier(pixels).argmax(1) == labels).sum())
            logger.info("%s eps=%.4g (%.2f/255): accuracy %.2f%%", label or trained.config.model, epsilon,
                        epsilon * 255, 100 * correct[index] / len(images))
    return RobustnessCurve(label or _label(trained), str(trained.checkpoint), trained.config.model,
                           "zca" if trained.whiten is not None else "mean/std", eps, tuple(correct), len(images))


def _label(trained) -> str:
    path = Path(trained.checkpoint)
    run = path.parent.parent.name if path.parent.name == "checkpoints" else path.parent.name
    return f"{trained.config.model} ({run}/{path.stem})" if run else f"{trained.config.model} ({path.stem})"


def _load(checkpoints: Sequence) -> list:
    from ..inference import TrainedModel, load_trained

    if isinstance(checkpoints, (str, Path, TrainedModel)):
        checkpoints = [checkpoints]
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    return [c if isinstance(c, TrainedModel) else load_trained(c) for c in checkpoints]


def robustness_curve(checkpoints: Sequence, images: Tensor, targets: Tensor, *, attack: str = "fgsm",
                     eps: Sequence[float] | str = DEFAULT_EPS, steps: int = 10, step_size: float | None = None,
                     random_start: bool = True, seed: int = 0, batch_size: int = 128,
                     labels: Sequence[str] | None = None, data: str | None = None) -> RobustnessResult:
    """:func:`attack_accuracy` for several checkpoints on the same uint8 images.

    Args:
        checkpoints: checkpoint paths and/or :class:`~ltpa.inference.TrainedModel` objects, all
            taking ``images``' size.
        images, targets: uint8 ``(N, 3, H, W)`` and ``(N,)``.
        labels: one name per checkpoint (default: model name and run folder).
        data: the spec the images came from, recorded in the result.
        attack, eps, steps, step_size, random_start, seed, batch_size: see :func:`attack_accuracy`.

    Returns:
        A :class:`RobustnessResult`.
    """
    models = _load(checkpoints)
    if labels is not None and len(labels) != len(models):
        raise ValueError(f"labels must have one name per checkpoint ({len(models)}), got {len(labels)}")
    eps = parse_eps(eps)
    curves = tuple(attack_accuracy(m, images, targets, attack=attack, eps=eps, steps=steps, step_size=step_size,
                                   random_start=random_start, seed=seed, batch_size=batch_size,
                                   label=labels[i] if labels else None) for i, m in enumerate(models))
    return RobustnessResult(attack, eps, steps, step_size, random_start, seed, curves, data)


def format_table(result: RobustnessResult) -> str:
    """Accuracy (%) per checkpoint (rows) and epsilon (columns, in 1/255 units)."""
    head = ["checkpoint"] + [("clean" if e == 0 else f"{e * 255:g}/255") for e in result.eps]
    rows = [[c.label] + [f"{100 * a:.1f}" for a in c.accuracy] for c in result.curves]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    title = f"{result.attack.upper()} accuracy (%) on {result.curves[0].num_images} images"
    if result.attack == "pgd":
        title += f", {result.steps} steps" + (", random start" if result.random_start else "")
    lines = [title, "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines += ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines)


def run_robustness(checkpoints: Sequence, out: str | Path, *, data: str | None = None, split: str = "test",
                   limit: int | None = 1000, attack: str = "fgsm", eps: Sequence[float] | str = DEFAULT_EPS,
                   steps: int = 10, step_size: float | None = None, random_start: bool = True, seed: int = 0,
                   batch_size: int = 128, overwrite: bool = False) -> RobustnessResult:
    """``ltpa robustness``: load the checkpoints and the data, attack, write ``robustness.json`` and
    ``robustness.png`` into ``out``.

    Each checkpoint sees the same images (the first ``limit`` of ``split``), decoded at its own
    input size with its own resize mode (as its training run saw them). Every input is checked before anything is written; an ``out`` that is not empty
    is refused unless ``overwrite`` and it holds an earlier ``robustness.json``, and then only the
    files that run recorded are replaced.

    Args:
        checkpoints: checkpoint paths (or TrainedModel objects).
        out: the output folder.
        data: a data spec with labels (default: the checkpoints' own training data, which must
            then be the same for all).
        split: ``"test"`` or ``"train"``.
        limit: attack the first ``limit`` images (None: all).
        attack, eps, steps, step_size, random_start, seed, batch_size: see :func:`attack_accuracy`.
        overwrite: replace an earlier result in ``out``.

    Raises:
        ValueError: bad settings, checkpoints for different data without ``data``, data without
            labels, or an output folder that may not be written.
    """
    from ..attention.ground_truth import load_evaluation_set
    from ..runs.ownership import OutputFolder
    from .plot import plot_robustness

    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    eps = parse_eps(eps)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (or None for the whole split), got {limit}")
    models = _load(checkpoints)
    folder = OutputFolder(out, "robustness", overwrite=overwrite, what="robustness curves").check()
    first = models[0].config
    if data is None:
        sources = sorted({m.config.data for m in models})
        if len(sources) > 1:
            raise UserError(f"the checkpoints were trained on different data ({', '.join(sources)}); ",
                            Option("data", "SPEC"), " to attack all of them on the same images")
        data = first.data
    defaults = {"num_classes": first.num_classes, "seed": first.data_seed, "num_test": first.num_test}
    if split == "test":
        defaults["num_train"] = 1  # synthetic: the test stream does not depend on it; skips generating 5,000 images
    sets = {}  # the same images for every checkpoint, decoded as each run saw them (size, resize mode)
    for trained in models:
        view = (trained.config.image_size, trained.config.resize_mode)
        if view not in sets:
            sets[view] = load_evaluation_set(data, image_size=view[0], resize_mode=view[1], limit=limit,
                                             split=split, synthetic_defaults=defaults)
            if sets[view].targets is None:
                raise ValueError(f"{data!r} has no class labels to attack against; use a classification data set")
    views = [sets[(m.config.image_size, m.config.resize_mode)] for m in models]
    curves = tuple(attack_accuracy(m, view.images, view.targets, attack=attack, eps=eps, steps=steps,
                                   step_size=step_size, random_start=random_start, seed=seed, batch_size=batch_size)
                   for m, view in zip(models, views))
    result = RobustnessResult(attack, eps, steps, step_size, random_start, seed, curves, f"{data} ({split})")
    with folder:  # only the files of an earlier result (its manifest) are replaced, after these are written
        plot_robustness(result, folder.record(FIGURE_FILE))
        folder.write_json(RESULT_FILE, {**result.to_dict(), "files": [RESULT_FILE, FIGURE_FILE]})
    return result
