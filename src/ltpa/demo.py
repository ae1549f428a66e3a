"""The embedded default job: train VGG-att3 on the synthetic data, then see and score its attention.

``ltpa demo`` (and ``make demo``) runs :func:`run_demo`. It writes into one run folder the
trainer's files (config, metrics, curves, checkpoints) plus::

    attention_overlays.png   test images x levels, with prediction and truth per row
    localisation.json        pointing game and energy per level vs centre and random baselines,
                             the pointing game within Zhang et al.'s tolerance, and where the
                             peaks that miss land (near the object, near a distractor, border)
    summary.txt              the table printed at the end
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .attention import AttentionMaps, compute_maps, save_figure
from .attention.localisation import zhang_tolerance
from .attention.scoring import localisation_scores
from .data.synthetic import SyntheticLocalisation
from .inference import TrainedModel, load_trained, overlay_grid_from_arrays
from ._files import atomic_write_bytes, atomic_write_json
from .train.loop import RunResult, fit
from .train.presets import demo_config

__all__ = ["demo_config", "run_demo", "DemoResult", "score_synthetic_run", "synthetic_run_scores"]

NUM_OVERLAY_IMAGES = 4


@dataclass(frozen=True)
class DemoResult:
    run: RunResult
    localisation: dict
    summary: str
    overlays_path: Path


def synthetic_run_scores(checkpoint: str | Path, *, num_images: int | None = None) -> dict:
    """The scores :func:`score_synthetic_run` writes, computed without writing anything.

    For scoring many checkpoints of one run, e.g. ``benchmarks/demo_recipe.py --per-epoch``.
    """
    return _synthetic_scores(checkpoint, num_images)[0]


def _synthetic_scores(checkpoint: str | Path, num_images: int | None
                      ) -> tuple[dict, TrainedModel, SyntheticLocalisation, AttentionMaps]:
    """Scores, the loaded model, the run's test split and its maps (for the overlays)."""
    trained = load_trained(checkpoint)
    config = trained.config
    test = SyntheticLocalisation(num_images or config.num_test, image_size=config.image_size,
                                 num_classes=config.num_classes, seed=config.data_seed, split="test")
    maps = compute_maps(trained.model, trained.prepare(test.images))
    size = (config.image_size, config.image_size)
    scores = localisation_scores(maps, masks=test.masks, near=zhang_tolerance(size), others=test.distractor_masks)
    scores["accuracy"] = float((maps.predictions == test.targets).float().mean())
    return scores, trained, test, maps


def score_synthetic_run(checkpoint: str | Path, out: Path, *, num_images: int | None = None,
                        mode: str = "mass") -> tuple[dict, Path]:
    """Localisation scores and an overlay grid for a checkpoint trained on the synthetic data.

    Uses the run's own test split (same seed, size and count as in training). Besides the
    pointing game without tolerance it scores the one of Zhang et al. (15 px at 224 px, scaled
    to the image) and sorts each peak into a hit or where its miss lands (near the object, near a
    distractor, on the border, elsewhere): coarse levels tend to peak on the object's edge.
    """
    scores, trained, test, maps = _synthetic_scores(checkpoint, num_images)
    atomic_write_json(out / "localisation.json", scores)
    shown = slice(0, NUM_OVERLAY_IMAGES)
    titles = [f"pred: {trained.class_names[int(p)]}\ntrue: {trained.class_names[int(t)]}"
              for p, t in zip(maps.predictions[shown], test.targets[shown])]
    shown_maps = dataclasses.replace(maps, upsampled=tuple(m[shown] for m in maps.upsampled))
    figure = overlay_grid_from_arrays(test.images[shown], shown_maps, titles, mode=mode)
    overlays = save_figure(figure, out / "attention_overlays.png")
    return scores, overlays


def _trained_on(run_dir: Path) -> str:
    """Where and how a run trained, from its ``environment.json``: ``"cpu (AVX512, bf16)"``,
    ``"cuda (NVIDIA H100, bf16)"``. A resumed run reports its latest session."""
    environment = json.loads((Path(run_dir) / "environment.json").read_text(encoding="utf-8"))
    latest = (environment.get("resumed") or [environment])[-1]
    device = latest.get("device", "?")
    where = latest.get("cpu_capability") if device == "cpu" else latest.get("device_name")
    return f"{device} ({where or 'unknown'}, {latest.get('precision', '?')})"


def format_summary(run: RunResult, scores: dict, overlays: Path) -> str:
    """The table the demo prints: accuracy, per-level pointing game against the baselines, and
    where each level's missed peaks land."""
    within = f"within {scores['near']:.1f} px"
    lines = [
        f"model {run.config.model} {run.config.model_options}, {run.epochs_completed} epochs on "
        f"synthetic {run.config.image_size}x{run.config.image_size}, {run.config.num_classes} classes",
        f"trained on {_trained_on(run.out_dir)}",
        f"test top-1 accuracy: {run.test['acc1']:.1f}%  ({run.test_weights} weights, epoch {run.tested_epoch})",
        "",
        f"{'attention map':<16}{'pointing game':>15}{within:>15}{'energy in object':>18}",
    ]
    rows = [*scores["levels"].items(), *((f"({name})", value) for name, value in scores["baselines"].items())]
    for name, value in rows:
        lines.append(f"{name:<16}{value['pointing']:>15.3f}{value['pointing_near']:>15.3f}{value['energy']:>18.3f}")
    lines += [
        f"({scores['num_images']} test images; pointing game = peak inside the object's mask; {within} = "
        "Zhang et al.'s tolerance, 15 px at 224 px)",
        "",
        f"{'missed peaks':<16}{'near object':>15}{'near distractor':>17}{'on border':>11}{'elsewhere':>11}",
    ]
    for name, value in rows:
        share = value["outcomes"]
        lines.append(f"{name:<16}{share['near_object']:>15.3f}{share['near_other']:>17.3f}"
                     f"{share['border']:>11.3f}{share['elsewhere']:>11.3f}")
    lines += [
        f"(share of test images; near = {within}; a coarse map's peak on the object's edge is near the object;",
        " the baselines' rows show how often a random or central peak lands there)",
        "",
        f"run folder: {run.out_dir}",
        f"  overlays:    {overlays}",
        f"  curves:      {run.curves_path}",
        f"  metrics:     {run.metrics_path}",
        f"  checkpoint:  {run.checkpoint}",
    ]
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo", *, overwrite: bool = False, progress: bool = True,
             **overrides) -> DemoResult:
    """Train, evaluate, score and draw; returns the results and the printed summary."""
    run = fit(demo_config(**overrides), out, overwrite=overwrite, progress=progress)
    scores, overlays = score_synthetic_run(run.checkpoint, run.out_dir)
    summary = format_summary(run, scores, overlays)
    atomic_write_bytes(run.out_dir / "summary.txt", (summary + "\n").encode())
    return DemoResult(run, scores, summary, overlays)


