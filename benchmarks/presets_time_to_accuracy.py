"""Time to accuracy of the CPU presets: validation accuracy against cumulative wall time.

Usage:
    python benchmarks/presets_time_to_accuracy.py --data cifar100:../shared/data/cifar100-mini
        [--presets cifar100-vgg-att3-cpu cifar100-vgg-noatt-cpu] [--seeds 0 1] [--epochs 6]
        [--set key=value ...] [--out runs/tta] [--json out.json]

Trains each preset x seed one after the other (never two at once) with the real trainer and
reads ``metrics.jsonl``: after every epoch, the cumulative wall time (training + validation) and
the validation top-1, as the CIFAR speed-run literature reports time to accuracy. ``--set``
overrides apply to every run (e.g. ``--set subset_train=5000``; values are parsed as in
``ltpa train --set``). The load average is recorded with each run: on a shared machine the
times are inflated, accuracy is not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ltpa.train import fit
from ltpa.runs.config import apply_overrides
from ltpa.train.precision import describe_environment, resolve_precision
from ltpa.train.presets import get_preset


def run_one(name: str, seed: int, args) -> dict:
    config = get_preset(name)
    overrides = [f"data={args.data}", f"epochs={args.epochs}", f"seed={seed}", *args.set]
    config = apply_overrides(config, overrides)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = fit(config, Path(args.out) / f"{name}-s{seed}", overwrite=True, progress=False)
    wall = time.perf_counter() - start
    epochs = [json.loads(line) for line in result.metrics_path.read_text().splitlines() if line.strip()]
    elapsed, curve = 0.0, []
    for record in epochs:
        elapsed += record["seconds"]
        curve.append({"epoch": record["epoch"], "wall_s": elapsed, "val_acc1": record.get("val_acc1"),
                      "train_loss": record["train_loss"], "img_per_s": record["images_per_s"]})
    return {"preset": name, "seed": seed, "curve": curve, "test_acc1": result.test.get("acc1"),
            "wall_s": wall, "load_start": load, "load_end": os.getloadavg()[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data spec, e.g. cifar100:../shared/data/cifar100-mini")
    parser.add_argument("--presets", nargs="+", default=["cifar100-vgg-att3-cpu", "cifar100-vgg-noatt-cpu"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/time_to_accuracy")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    precision = resolve_precision("auto", True, "auto")
    environment = describe_environment(precision)
    print(f"CPU {environment['cpu_model']}, ATen capability {environment['cpu_capability']}; "
          f"precision {precision.name} ({environment['precision_choice']})", flush=True)
    runs = []
    for name in args.presets:
        for seed in args.seeds:
            run = run_one(name, seed, args)
            runs.append(run)
            points = "  ".join(f"{p['wall_s']:.0f}s:{p['val_acc1']:.1f}%" for p in run["curve"]
                               if p["val_acc1"] is not None)
            print(f"{name:<26} seed {seed}: val top-1 by wall time  {points}  | test {run['test_acc1']:.1f}% "
                  f"(load {run['load_start']:.1f}->{run['load_end']:.1f})", flush=True)
    if args.json:
        record = {"args": vars(args), "cpu_capability": environment["cpu_capability"], "precision": precision.name,
                  "environment": environment, "runs": runs}
        Path(args.json).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
