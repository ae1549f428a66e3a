"""The ``ltpa`` command: parse arguments and dispatch to the library, nothing else."""
from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import signal
import sys
from typing import Sequence

__all__ = ["main"]

logger = logging.getLogger("ltpa")


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import create_model, list_models, model_summary

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; `ltpa models` lists them all")
    for name in names:
        model = create_model(name, num_classes=100)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        levels = ", ".join(level.name for level in model.levels) or "-"
        print(f"{name:<14}{params:6.2f}M  maps: {levels:<22} {model_summary(name)}")
    print("(parameters counted with 100 classes)")
    return 0


def _config_from_args(args: argparse.Namespace):
    from .runs.config import TrainConfig, apply_overrides
    from .train.presets import get_preset

    if args.resume and not args.preset:  # continue the saved plan; flags only change it
        from .train.run_plan import saved_config

        config = saved_config(args.out)
    else:
        config = get_preset(args.preset) if args.preset else TrainConfig()
    shortcuts = {"model": args.model, "data": args.data, "epochs": args.epochs, "seed": args.seed,
                 "init": args.init, "transfer": args.transfer, "freeze": args.freeze,
                 "compile": "true" if args.compile else None,
                 "deterministic": "true" if args.deterministic else None,
                 "model_options.weights": args.weights}
    config = apply_overrides(config, [f"{k}={v}" for k, v in shortcuts.items() if v is not None])
    return apply_overrides(config, args.set or [])


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.loop import fit

    config = _config_from_args(args)
    result = fit(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    test = result.test
    print(f"test top-1 {test['acc1']:.2f}%" + (f"  top-5 {test['acc5']:.2f}%" if "acc5" in test else "")
          + f"  ({result.test_weights} weights, epoch {result.tested_epoch}); run folder: {result.out_dir}")
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one report
        _write_report(result.out_dir)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from .train.presets import describe_preset, list_presets

    for name in list_presets():
        print(describe_preset(name))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .runs.ownership import check_output_file, json_report_recogniser
    from .train.evaluation import evaluate_checkpoint, format_report

    if args.out is not None and os.path.isfile(args.out):  # only an earlier eval report, only with --overwrite
        check_output_file(args.out, overwrite=args.overwrite, what="report of `ltpa eval`",
                          recognise=json_report_recogniser("checkpoint", "model", "data", "split", "path"))
    report = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, batch_size=args.batch_size,
                                 out=args.out)
    if args.quiet:  # otherwise the library has logged the same lines
        print(format_report(report))
    print(f"saved: {report['path']}")
    return 0


def _cmd_attend(args: argparse.Namespace) -> int:
    from .inference import attend_files, attend_images, load_trained

    trained = load_trained(args.checkpoint)
    if args.data:
        if args.images:
            raise ValueError("give image files/folders or --data SPEC, not both")
        evaluation = _evaluation_set(args, trained)
        names = [f"{args.data}:{args.split}[{i}]" for i in range(len(evaluation.images))]
        summary = attend_images(trained, evaluation.images, names, args.out, targets=evaluation.targets,
                                mode=args.mode, cmap=args.cmap, overwrite=args.overwrite)
    elif args.images:
        summary = attend_files(trained, args.images, args.out, size=args.size, mode=args.mode,
                               cmap=args.cmap, overwrite=args.overwrite)
    else:
        raise ValueError("nothing to attend: give image files/folders, or --data SPEC for a data set")
    for record in summary["images"]:
        best = record["top5"][0]
        print(f"{record['image']}: {best['class']} ({best['probability']:.1%})")
    print(f"overlays, raw maps (.npy) and predictions.json in {args.out}")
    return 0


def _evaluation_set(args: argparse.Namespace, trained):
    """The images (with ground truth) a command scores, prepared exactly as the run's training was."""
    from .inference import evaluation_set

    return evaluation_set(trained.config, args.data, limit=args.limit, split=args.split)


def _calibration(args: argparse.Namespace, trained, evaluation):
    """``(scored, calibration)`` for ``--calibrate``: none, the run's validation images (``val``),
    or the first N evaluation images (then only the rest are scored)."""
    from .attention.ground_truth import hold_out, load_validation_set

    if args.calibrate is None:
        return evaluation, None
    if args.calibrate == "val":
        return evaluation, load_validation_set(trained.config, args.data)
    held, scored = hold_out(evaluation, args.calibrate)
    return scored, held


def _cmd_localise(args: argparse.Namespace) -> int:
    from .attention.faithfulness import ROAD_PERCENTILES
    from .attention.report import class_targets, format_table, localise_trained, write_localisation_report
    from .inference import load_trained
    from .runs.ownership import OutputFolder

    trained = load_trained(args.checkpoint)
    evaluation = _evaluation_set(args, trained)
    if evaluation.masks is None and evaluation.boxes is None:
        raise ValueError(f"{args.data or trained.config.data!r} has no boxes or masks to score against; "
                         "use synthetic, cub:PATH or masks:PATH")
    methods, gap_model = tuple(args.methods), None
    if args.gap_checkpoint:
        gap = load_trained(args.gap_checkpoint)
        if (gap.config.image_size, gap.config.mean, gap.config.std) != (
                trained.config.image_size, trained.config.mean, trained.config.std) or gap.config.zca:
            raise ValueError("--gap-checkpoint must be trained on the same data and preprocessing "
                             "(image size, mean/std, no ZCA) as the checkpoint")
        gap_model, methods = gap.model, methods + ("cam",)
    evaluation, calibration = _calibration(args, trained, evaluation)
    classes = trained.config.num_classes
    targets = class_targets(args.target, evaluation.targets, len(evaluation.images), classes)
    held_targets = None if calibration is None else class_targets(args.target, calibration.targets,
                                                                  len(calibration.images), classes)
    out = OutputFolder(args.out, "localise", overwrite=args.overwrite, what="localisation report").check()
    result = localise_trained(
        trained, evaluation.images, **evaluation.ground_truth(), methods=methods, gap_model=gap_model,
        pointing=args.pointing, tolerance=args.tolerance, energy=args.energy, target_classes=targets,
        calibration_images=None if calibration is None else calibration.images,
        calibration_masks=None if calibration is None else calibration.masks,
        calibration_boxes=None if calibration is None else calibration.boxes,
        calibration_target_classes=held_targets, faithfulness_images=args.faithfulness_images, steps=args.steps,
        road_percentiles=None if args.no_road else ROAD_PERCENTILES, progress=sys.stderr.isatty())
    paths = write_localisation_report(result, out)
    if calibration is not None:
        print(f"thresholds calibrated on {calibration.description}")
    print(f"{evaluation.description}; checkpoint {trained.checkpoint}")
    print(format_table(result))
    print("files: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_sanity(args: argparse.Namespace) -> int:
    from .attention.report import class_targets
    from .attention.sanity import check_options, sanity_trained, write_sanity_report
    from .inference import load_trained
    from .runs.ownership import OutputFolder

    trained = load_trained(args.checkpoint)
    evaluation = _evaluation_set(args, trained)
    targets = class_targets(args.target, evaluation.targets, len(evaluation.images), trained.config.num_classes)
    check_options(len(evaluation.images), methods=args.methods, modes=args.modes, init=args.init,
                  bn_stats=args.bn_stats)
    out = OutputFolder(args.out, "sanity", overwrite=args.overwrite, what="sanity check").check()
    result = sanity_trained(trained, evaluation.images, methods=tuple(args.methods), modes=tuple(args.modes),
                            init=args.init, bn_stats=args.bn_stats, seed=args.seed, target_classes=targets)
    paths = write_sanity_report(result, out)
    print(f"{evaluation.description}; checkpoint {trained.checkpoint}")
    print(result["explanation"])
    print("files: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from .attention.diagnostics import diagnose, explain
    from .inference import load_trained

    trained = load_trained(args.checkpoint)
    evaluation = _evaluation_set(args, trained)
    summary = diagnose(trained.model, trained.prepare(evaluation.images))
    print(f"{evaluation.description}; checkpoint {trained.checkpoint}")
    print(explain(summary))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .data.sources import describe, load_data

    print(describe(load_data(args.spec, download=args.download)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    path = build_report(args.run, args.out, data=args.data, attention_images=args.images)
    print(f"report: {path}")
    return 0


def _write_report(out_dir) -> None:
    """The report at the end of `ltpa train` / `ltpa demo`: a failure is a warning, never a failed run."""
    from .report import build_report

    try:
        print(f"report: {build_report(out_dir)}")
    except (ValueError, TypeError, OSError) as err:
        logger.warning("the run finished, but its report was not written: %s (retry with `ltpa report %s`)",
                       err, out_dir)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    result = run_demo(args.out, overwrite=args.overwrite, progress=not args.no_progress, **overrides)
    print(result.summary)
    _write_report(result.run.out_dir)
    return 0


def _cmd_robustness(args: argparse.Namespace) -> int:
    from .robustness import format_table, run_robustness

    result = run_robustness(args.checkpoints, args.out, data=args.data, split=args.split, limit=args.limit,
                            attack=args.attack, eps=args.eps, steps=args.steps, step_size=args.step_size,
                            random_start=not args.no_random_start, seed=args.seed, batch_size=args.batch_size,
                            overwrite=args.overwrite)
    print(format_table(result))
    print(f"curve and numbers: {os.path.join(args.out, 'robustness.png')}, "
          f"{os.path.join(args.out, 'robustness.json')}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from .transfer.probe import default_cache_dir, run_probe

    exclude = [name.strip() for name in (args.exclude_classes or "").split(",") if name.strip()]
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    result = run_probe(args.checkpoint, args.data, args.out, overwrite=args.overwrite, features=args.features,
                       train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                       split_seed=args.split_seed, exclude_classes=exclude, resize_mode=args.resize,
                       cache_dir=cache)
    print(result.summary())
    if args.out:
        print(f"saved: {os.path.join(args.out, 'probe.json')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ltpa", description="Learn to Pay Attention: train attention CNNs, see and measure their attention.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'vgg_att*'")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("presets", help="list the training recipes (--preset NAME)")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("train", help="train a model; writes a run folder")
    p.add_argument("--preset", help="start from a recipe (see `ltpa presets`); flags and --set override it")
    p.add_argument("--model", help="model name (see `ltpa models`), default vgg_att3")
    p.add_argument("--data", help="data spec (see `ltpa data`), default synthetic")
    p.add_argument("--init", help="checkpoint to start from (ltpa, or a foreign PyTorch state dict)")
    p.add_argument("--transfer", help="comma-separated patterns or a preset of what --init loads "
                   "(trunk, trunk+global, trunk+global+attention, all-but-head; default all-but-head)")
    p.add_argument("--freeze", help="comma-separated patterns of parameters to freeze, e.g. trunk.conv1-7")
    p.add_argument("--weights", help="timm_att: local ImageNet weights of the backbone (no download)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (with --seed: bit-identical reruns on CPU)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config field, e.g. --set lr=0.05 --set model_options.width=0.25")
    p.add_argument("--out", required=True, help="run folder")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    group.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 error and per-class accuracy of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None, help="data spec (default: the run's own)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--batch-size", type=_count(1), default=256)
    p.add_argument("--out", default=None, help="JSON file (default RUN/eval/<checkpoint>_<split>.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier eval report at --out")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("attend", help="predict and draw per-level attention for images")
    p.add_argument("checkpoint", help="checkpoint .json/.safetensors (e.g. RUN/checkpoints/best.json)")
    p.add_argument("images", nargs="*", help="image files and/or folders")
    p.add_argument("--data", default=None, help="or a data set: synthetic, cub:PATH, cifar100:PATH, ...")
    p.add_argument("--split", default="test", choices=("test", "train"))
    p.add_argument("--limit", type=_count(1), default=16, help="with --data: the first N images (default 16)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=_count(1), default=None, help="side of the square images (default: the training size; the run's resize mode applies)")
    p.add_argument("--mode", default="mass", choices=("mass", "shared", "per-map"),
                   help="colour scale of the overlays (default mass: raw attention, one scale for all levels)")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier output of this command in --out (only the files ltpa wrote there)")
    p.set_defaults(func=_cmd_attend)

    def evaluation_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("checkpoint", help="checkpoint .json/.safetensors (e.g. RUN/checkpoints/best.json)")
        p.add_argument("--data", default=None,
                       help="images with ground truth: synthetic, cub:PATH, masks:PATH (default: the run's data)")
        p.add_argument("--split", default="test", choices=("test", "train"))
        p.add_argument("--limit", type=_count(1), default=500, help="use the first N images (default 500)")

    p = sub.add_parser("localise", help="score attention against ground truth, with CAM-family baselines")
    evaluation_options(p)
    p.add_argument("--out", required=True, help="report folder (JSON, CSV, figures)")
    p.add_argument("--methods", nargs="+", default=["attention", "gradcam", "gradcam++", "layercam", "centre", "random"],
                   help="attention gradcam gradcam++ layercam saliency (Simonyan 2014 gradient) centre "
                        "(Gaussian prior) random")
    p.add_argument("--pointing", default="ltpa", choices=("ltpa", "zhang2018", "quantus"),
                   help="pointing-game rule: ltpa (one peak, ties to their centroid; default), zhang2018 (15 px "
                        "tolerance at 224 px, scaled), quantus (a hit if any tied maximum is inside)")
    p.add_argument("--tolerance", type=_non_negative_float, default=None,
                   help="pointing-game tolerance in pixels, replacing the rule's own")
    p.add_argument("--energy", default="raw", choices=("raw", "minmax"),
                   help="energy pointing game on the raw map (default) or min-max normalised (Score-CAM)")
    p.add_argument("--calibrate", type=_calibrate_choice, default=None, metavar="val|N",
                   help="choose the Jaccard and box thresholds on held-out images: val (the run's validation "
                        "images) or N (the first N evaluation images, not scored); default none (oracle only)")
    p.add_argument("--target", type=_target_choice, default="prediction", metavar="prediction|label|N",
                   help="class the Grad-CAM family explains: the prediction (default), the true label, or class N")
    p.add_argument("--no-road", action="store_true", help="skip ROAD (noisy-linear-imputation faithfulness)")
    p.add_argument("--gap-checkpoint", default=None,
                   help="a VGG-GAP checkpoint on the same data: adds its CAM as a baseline")
    p.add_argument("--faithfulness-images", type=_count(0), default=100,
                   help="images for the deletion/insertion curves (0 = skip)")
    p.add_argument("--steps", type=_count(1), default=16, help="deletion/insertion steps")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier output of this command in --out (only the files ltpa wrote there)")
    p.set_defaults(func=_cmd_localise)

    p = sub.add_parser("sanity", help="do the maps depend on the learned weights? model-parameter randomisation "
                                      "(Adebayo et al. 2018) of every level and Grad-CAM")
    evaluation_options(p)
    p.set_defaults(limit=16)
    p.add_argument("--out", required=True, help="report folder (sanity.json, sanity.txt, sanity.png)")
    p.add_argument("--methods", nargs="+", default=["attention", "gradcam"], choices=("attention", "gradcam",
                   "gradcam++", "layercam"), help="maps to check (default: attention gradcam)")
    p.add_argument("--modes", nargs="+", default=["cascading", "independent"], choices=("cascading", "independent"))
    p.add_argument("--init", default="reset", choices=("reset", "shuffle"),
                   help="random values: each layer's reset_parameters (default) or its trained values shuffled")
    p.add_argument("--bn-stats", default="recompute", choices=("recompute", "reset", "keep"),
                   help="BatchNorm running statistics of randomised layers: re-estimated on the images (default), "
                        "reset to 0/1, or kept")
    p.add_argument("--target", type=_target_choice, default="prediction", metavar="prediction|label|N",
                   help="class Grad-CAM explains at every stage (default: the trained model's prediction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier output of this command in --out (only the files ltpa wrote there)")
    p.set_defaults(func=_cmd_sanity)

    p = sub.add_parser("diagnose", help="explain in plain words what each attention level does")
    evaluation_options(p)
    p.set_defaults(func=_cmd_diagnose)

    p = sub.add_parser("data", help="show what a data spec resolves to (images, classes, annotations)")
    p.add_argument("spec", help="e.g. synthetic, cifar100:/data/cifar, cub:/data/CUB_200_2011,classes=1-10")
    p.add_argument("--download", action="store_true", help="fetch missing official files (needs internet)")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("report", help="one self-contained HTML file of a run folder: curves, metrics, attention")
    p.add_argument("run", help="run folder (--out of ltpa train / ltpa demo); a run still training works too")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN/report.html)")
    p.add_argument("--data", default=None,
                   help="data spec of the test images for the attention maps (default: the run's own)")
    p.add_argument("--images", type=_count(1), default=8,
                   help="images in the attention viewer, half correct and half wrong (default 8)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="train VGG-att3 on the built-in synthetic data and score its attention")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--epochs", type=_count(1), default=None)
    p.add_argument("--overwrite", action="store_true", help="replace a previous demo run in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("robustness", help="accuracy under white-box FGSM/PGD vs epsilon; several checkpoints, one plot")
    p.add_argument("checkpoints", nargs="+", help="checkpoint .json/.safetensors files, e.g. a VGG and a VGG-att run")
    p.add_argument("--data", default=None, help="labelled data spec (default: the checkpoints' own data)")
    p.add_argument("--split", default="test", choices=("test", "train"))
    p.add_argument("--limit", type=_count(1), default=1000, help="attack the first N images (default 1000)")
    p.add_argument("--attack", default="fgsm", choices=("fgsm", "pgd"))
    p.add_argument("--eps", default="1/255,2/255,4/255,8/255",
                   help="L-inf budgets in [0, 1] pixels of the un-normalised image (fractions allowed); "
                        "eps 0 (clean accuracy) is always added")
    p.add_argument("--steps", type=_count(1), default=10, help="PGD steps (default 10)")
    p.add_argument("--step-size", type=_non_negative_float, default=None,
                   help="PGD step in pixel units (default 2.5*eps/steps)")
    p.add_argument("--no-random-start", action="store_true", help="PGD starts from the clean image")
    p.add_argument("--seed", type=int, default=0, help="seed of PGD's random start")
    p.add_argument("--batch-size", type=_count(1), default=128)
    p.add_argument("--out", required=True, help="folder for robustness.json and robustness.png")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier robustness result in --out")
    p.set_defaults(func=_cmd_robustness)

    p = sub.add_parser("probe", help="linear probe on frozen features: cross-domain transfer")
    p.add_argument("checkpoint", help="checkpoint .json/.safetensors (e.g. RUN/checkpoints/best.json)")
    p.add_argument("--data", required=True, help="labelled data: folder:PATH, cub:PATH, synthetic, cifar100:PATH ...")
    p.add_argument("--features", default=None,
                   help="attention (concatenated g_a; default for attention models), penultimate (default for "
                        "the others) or level:NAME (one level's g_a)")
    p.add_argument("--train-per-class", type=_count(1), default=None,
                   help="pool both splits and draw N training images per class (Caltech-101: 30)")
    p.add_argument("--test-per-class", type=_count(1), default=None,
                   help="with --train-per-class: at most N test images per class (default: all the rest)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the per-class split")
    p.add_argument("--exclude-classes", default=None,
                   help="comma-separated classes to drop, e.g. BACKGROUND_Google for Caltech-101")
    p.add_argument("--resize", default="resize_crop", choices=("resize_crop", "squash"),
                   help="how images reach the model's input size (default resize_crop)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default $LTPA_CACHE_DIR/probe, else ~/.cache/ltpa/probe)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    p.add_argument("--out", default=None, help="folder for probe.json (optional)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier probe.json in --out")
    p.set_defaults(func=_cmd_probe)
    return parser


def _describe(err: Exception) -> str:
    """One line for the user; OS errors name the path and what the system said, a
    :class:`ltpa.errors.UserError` gives its fix as flags (``--set lr=0.01``, ``--overwrite``)."""
    from .errors import Remedied

    if isinstance(err, Remedied):
        text = err.render(cli=True)
    elif isinstance(err, OSError) and err.strerror:
        text = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
        if err.errno in (errno.ENOSPC, errno.EDQUOT) and err.filename:
            text += " (the disk is full: free some space and run the command again)"
    elif isinstance(err, OSError) and err.filename:
        text = f"{err}: {err.filename}"
    else:
        text = str(err)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, like every other ltpa error (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer(text: str, minimum: int, expected: str) -> int:
    """``text`` as an integer >= ``minimum``, else an argparse error saying ``expected``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        return _integer(text, minimum, f"an integer >= {minimum}")

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _word_or_integer(words: tuple[str, ...], minimum: int, expected: str):
    """An argparse type: one of ``words`` or an integer >= ``minimum``; errors say ``expected``."""
    def parse(text: str) -> str | int:
        return text if text in words else _integer(text, minimum, expected)

    return parse


# --calibrate val|N (held-out images) and --target prediction|label|N (a class index)
_calibrate_choice = _word_or_integer(("val",), 1, "'val' or a number of images >= 1")
_target_choice = _word_or_integer(("prediction", "label"), 0, "prediction, label or a class index >= 0")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2 (set LTPA_DEBUG=1 for the traceback)."""
    args = build_parser().parse_args(argv)
    console = logging.StreamHandler(sys.stderr)
    # On the handler, not the logger: the trainer raises the "ltpa" logger to INFO for train.log.
    console.setLevel(logging.WARNING if args.quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[console])
    from .train.loop import TrainingDiverged, TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as err:  # SIGTERM/SIGINT: a checkpoint was saved, 143/130
        saved = f"saved {err.checkpoint}" if err.checkpoint else "no checkpoint could be saved"
        print(f"ltpa {args.command}: stopped by {signal.Signals(err.signum).name}: {saved}; continue "
              f"with: ltpa train --resume --out {err.out_dir}", file=sys.stderr)
        return err.exit_code
    except (ValueError, TypeError, OSError, TrainingDiverged) as err:
        if os.environ.get("LTPA_DEBUG"):
            raise
        print(f"ltpa {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 1 if isinstance(err, TrainingDiverged) else 2
    except KeyboardInterrupt:
        print("ltpa: interrupted; the last complete checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
