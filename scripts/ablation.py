"""The ablation the paper lacks: is it the attention, or the higher-resolution trunk?

Trains VGG (the plain ``vgg_bn_drop`` baseline), VGG-noatt (VGG-att3's enlarged trunk, no
attention), VGG-att1, VGG-att2 and VGG-att3 with one CPU-scale recipe, several seeds each, and
writes a table of mean +- std (sample standard deviation over seeds) of:

* test top-1 accuracy on the classification data (default the CIFAR-100 sample: 50 train and
  10 test images per class);
* localisation on the synthetic data (:mod:`ltpa.data.synthetic`; same recipe, trained there):
  the pointing game of the best attention level (``-`` for models without attention) and of
  Grad-CAM at the model's default layer (every model has one, so all five rows compare).

Usage::

    python scripts/ablation.py --out runs/ablation [--data cifar100:PATH] [--seeds 3]
        [--width 0.125] [--epochs 6] [--synthetic-epochs 6] [--tiny]

``--tiny`` runs everything end to end in seconds (1 epoch, few images, 2 seeds): a check of
the pipeline, not a result. Writes ``ablation.json`` (every run and the summary) and
``ablation.md`` (the table) in ``--out``; each training run is a run folder below it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

MODELS = ("vgg", "vgg_noatt", "vgg_att1", "vgg_att2", "vgg_att3")
DEFAULT_DATA = "cifar100:../shared/data/cifar100-mini"


def recipe(args: argparse.Namespace, model: str, seed: int, *, synthetic: bool):
    """The one recipe every model gets: SGD, lr ``args.lr`` x0.2 at 3/4 of the epochs, a short
    warm-up, flips and 4-px crops, no validation split (the final weights are tested). As in
    the demo's CPU recipe (:func:`ltpa.train.presets.demo_config`), dropout is off (a few
    epochs on a few thousand images only learn slower with it) and the attention vector keeps
    PyTorch's default init."""
    from ltpa.runs.config import TrainConfig

    epochs = args.synthetic_epochs if synthetic else args.epochs
    options = {"width": args.width, "dropout": False}
    if model != "vgg":
        options["input_size"] = args.image_size
    if model.startswith("vgg_att"):
        options["compat_init"] = "default"
    common = dict(model=model, model_options=options, image_size=args.image_size, epochs=epochs,
                  batch_size=args.batch_size, lr=args.lr, lr_step_epochs=0,
                  lr_milestones=(max(1, (3 * epochs) // 4),) if epochs > 1 else (), lr_gamma=0.2,
                  warmup_epochs=0.5 if epochs > 1 else 0.0, val_fraction=0.0, test_weights="final",
                  seed=seed, data_seed=0, tensorboard=False, cpu_threads=args.threads, keep_last=1,
                  stuck_warmup_epochs=max(epochs + 1, 5), limit_train_batches=2 if args.tiny else 0)
    if synthetic:
        return TrainConfig(data="synthetic", num_classes=10, num_train=args.synthetic_train,
                           num_test=args.synthetic_test, crop_padding=0, **common)
    return TrainConfig(data=args.data, num_classes=args.num_classes, subset_train=args.subset_train,
                       subset_test=args.subset_test, **common)


def localisation(run, args: argparse.Namespace) -> dict:
    """Pointing game on the synthetic test split: best attention level and Grad-CAM."""
    from ltpa.attention.report import localise
    from ltpa.data.synthetic import SyntheticLocalisation

    config = run.config
    test = SyntheticLocalisation(config.num_test, image_size=config.image_size, num_classes=config.num_classes,
                                 seed=config.data_seed, split="test")
    model = run.model.float().cpu()
    attended = bool(getattr(model, "levels", ()))
    methods = ("attention", "gradcam") if attended else ("gradcam",)
    result = localise(model, test.images, mean=config.mean, std=config.std, masks=test.masks, methods=methods,
                      faithfulness_images=0, road_percentiles=None, batch_size=args.batch_size)
    rows = result["rows"]
    levels = {row["level"]: row["pointing"] for row in rows.values() if row["method"] == "attention"}
    best = max(levels, key=levels.get) if levels else None
    gradcam = next(row["pointing"] for row in rows.values() if row["method"] == "gradcam")
    return {"pointing_attention": levels[best] if best else None, "best_level": best,
            "pointing_levels": levels, "pointing_gradcam": gradcam, "accuracy": result["accuracy"]}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict]) -> dict:
    """``{model: {metric: {"mean", "std", "n"}}}`` over seeds."""
    summary = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        summary[model] = {}
        for key in ("test_acc1", "pointing_attention", "pointing_gradcam", "parameters_m"):
            mean, std = _mean_std([r[key] for r in mine])
            summary[model][key] = {"mean": mean, "std": std, "n": sum(r[key] is not None for r in mine)}
        levels = [r["best_level"] for r in mine if r["best_level"]]
        summary[model]["best_levels"] = levels
    return summary


def _cell(stats: dict, scale: float = 1.0, digits: int = 1) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def markdown(summary: dict, meta: dict) -> str:
    """The table: one row per model, mean ± std over seeds."""
    lines = [f"Ablation on {meta['data']} ({meta['seeds']} seeds; width {meta['width']}, {meta['image_size']} px, "
             f"{meta['epochs']} epochs; localisation: synthetic data, {meta['synthetic_epochs']} epochs)", "",
             "| model | params (M) | test top-1 (%) | pointing, best attention level (%) | pointing, Grad-CAM (%) |",
             "|---|---|---|---|---|"]
    for model, stats in summary.items():
        lines.append(f"| {model} | {stats['parameters_m']['mean']:.3f} | {_cell(stats['test_acc1'])} | "
                     f"{_cell(stats['pointing_attention'], 100)} | {_cell(stats['pointing_gradcam'], 100)} |")
    return "\n".join(lines) + "\n"


def run_ablation(args: argparse.Namespace) -> dict:
    from ltpa.train import fit

    out = Path(args.out)
    runs: list[dict] = []
    started = time.perf_counter()
    for seed in range(args.seeds):
        for model in args.models:
            tic = time.perf_counter()
            cls = fit(recipe(args, model, seed, synthetic=False), out / f"{model}_s{seed}_cls",
                      overwrite=args.overwrite, progress=False)
            syn = fit(recipe(args, model, seed, synthetic=True), out / f"{model}_s{seed}_synthetic",
                      overwrite=args.overwrite, progress=False)
            record = {"model": model, "seed": seed, "test_acc1": cls.test["acc1"],
                      "synthetic_test_acc1": syn.test["acc1"],
                      "parameters_m": sum(p.numel() for p in cls.model.parameters()) / 1e6,
                      **localisation(syn, args), "seconds": time.perf_counter() - tic}
            runs.append(record)
            print(f"{model} seed {seed}: test top-1 {record['test_acc1']:.1f}%, pointing attention "
                  f"{record['pointing_attention'] if record['pointing_attention'] is not None else '-'}, "
                  f"Grad-CAM {record['pointing_gradcam']:.3f} ({record['seconds']:.0f} s)", flush=True)
    meta = {key: getattr(args, key) for key in ("data", "seeds", "width", "image_size", "epochs", "synthetic_epochs",
                                                 "batch_size", "lr", "subset_train", "subset_test",
                                                 "synthetic_train", "synthetic_test", "tiny")}
    meta.update(models=list(args.models), wall_seconds=time.perf_counter() - started,
                torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                command=" ".join(["python", "scripts/ablation.py", *args.argv]))
    summary = summarise(runs)
    result = {"meta": meta, "summary": summary, "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = markdown(summary, meta)
    (out / "ablation.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"wall time {meta['wall_seconds']:.0f} s; files: {out / 'ablation.json'}, {out / 'ablation.md'}")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs, ablation.json and ablation.md")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"classification data spec (default {DEFAULT_DATA})")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", type=int, default=3, help="seeds per model (>= 2 for a std; default 3)")
    p.add_argument("--width", type=float, default=0.125, help="channel width factor (default 1/8)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=6, help="epochs on the classification data")
    p.add_argument("--synthetic-epochs", type=int, default=6, help="epochs on the synthetic data")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--subset-train", type=int, default=0, help="> 0: class-stratified train subset")
    p.add_argument("--subset-test", type=int, default=0)
    p.add_argument("--synthetic-train", type=int, default=2000)
    p.add_argument("--synthetic-test", type=int, default=500)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (default 1: fastest on a shared 2-core CPU; 0: torch's default)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier runs in --out")
    p.add_argument("--tiny", action="store_true", help="seconds end to end: a pipeline check, not a result")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: give 1 or more (3 or more for a meaningful std)")
    if args.tiny:
        args.seeds, args.width, args.epochs, args.synthetic_epochs = min(args.seeds, 2), 0.0625, 1, 1
        args.batch_size, args.synthetic_train, args.synthetic_test = 16, 64, 32
        args.subset_train, args.subset_test = args.subset_train or 200, args.subset_test or 100
    return args


def main(argv: list[str] | None = None) -> dict:
    return run_ablation(parse_args(argv))


if __name__ == "__main__":
    main()
