"""How long ``localise`` takes against one training epoch over the same images, same process.

Usage:
    python benchmarks/localise_speed.py [--checkpoint RUN/checkpoints/best.json] [--images 500]
        [--faithfulness-images 100] [--width 0.25] [--batch 64] [--json out.json]

Without ``--checkpoint`` a freshly initialised VGG-att3 (``--width``) on the synthetic test
images is timed: speed does not depend on what the weights learned. It times one training epoch
(forward + backward + SGD, batch ``--batch``) over ``--images`` images, then
``ltpa.attention.localise`` with every method and the deletion/insertion and ROAD curves (as
``ltpa localise`` runs it), and each stage alone: the learned maps, the Grad-CAM family, the
gradient saliency, deletion/insertion, ROAD. The goal is a ratio localise / epoch near 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import ltpa
from ltpa.attention import compute_maps, deletion_insertion, grad_cam_maps, localise, road
from ltpa.attention.report import METHODS
from ltpa.data.synthetic import SyntheticLocalisation
from ltpa.train.precision import describe_environment, resolve_precision

EVERY = tuple(m for m in METHODS if m != "cam")  # "cam" needs a separately trained VGG-GAP model


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--faithfulness-images", type=int, default=100)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    precision = resolve_precision("auto", True, "cpu")
    environment = describe_environment(precision)
    print(f"CPU {environment['cpu_model']}, ATen capability {environment['cpu_capability']}; "
          f"precision {precision.name} ({environment['precision_choice']}); analysis runs in fp32", flush=True)
    data = SyntheticLocalisation(args.images, split="test")
    if args.checkpoint:
        from ltpa.inference import load_trained

        trained = load_trained(args.checkpoint)
        model, inputs = trained.model, trained.prepare(data.images)
    else:
        torch.manual_seed(0)
        model = ltpa.create_model("vgg_att3", num_classes=10, width=args.width)
        inputs = (data.images.float() / 255 - 0.5) / 0.25
    masks = data.masks

    def epoch():
        copy = ltpa.create_model("vgg_att3", num_classes=10, width=args.width).train()  # same size as model
        optimizer = torch.optim.SGD(copy.parameters(), lr=0.01, momentum=0.9)
        for start in range(0, len(inputs), args.batch):
            loss = torch.nn.functional.cross_entropy(copy(inputs[start:start + args.batch]).logits,
                                                     data.targets[start:start + args.batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    faithful = min(args.faithfulness_images, args.images)
    stages = {
        "training epoch": epoch,
        "localise (all methods)": lambda: localise(model, inputs, masks=masks, methods=EVERY,
                                                           faithfulness_images=faithful, batch_size=args.batch),
        "  learned maps": lambda: compute_maps(model, inputs, batch_size=args.batch),
        "  Grad-CAM family": lambda: grad_cam_maps(model, inputs, batch_size=args.batch),
    }
    if faithful:  # one map's curves: the cost per row of the table
        heats = {"attention": compute_maps(model, inputs[:faithful]).upsampled[-1][:, 0]}
        stages["  deletion/insertion (1 map)"] = lambda: deletion_insertion(model, inputs[:faithful], heats)
        stages["  ROAD (1 map)"] = lambda: road(model, inputs[:faithful], heats, batch_size=args.batch)
    load = os.getloadavg()[0]
    times = {name: _timed(fn) for name, fn in stages.items()}
    ratio = times["localise (all methods)"] / times["training epoch"]
    print(f"{args.images} images ({faithful} for the curves), vgg_att3 width {args.width}, "
          f"{torch.get_num_threads()} threads, load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    for name, seconds in times.items():
        print(f"  {name:<34} {seconds:8.1f} s")
    print(f"  localise / training epoch: {ratio:.2f}x")
    if args.json:
        record = {"args": vars(args), "cpu_capability": environment["cpu_capability"], "precision": precision.name,
                  "environment": environment, "seconds": times, "ratio": ratio, "load_average": load}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
