"""End-to-end throughput of a real training epoch against the model-only training step.

Both are measured in the same process, on the same model, precision and memory format:

* epoch: ``ltpa.train.train_one_epoch`` over a ``BatchLoader`` (shuffle, flip + padded crop on
  the device, normalisation, loss checks, scheduler), i.e. what ``ltpa train`` runs;
* model only: the same forward/backward/SGD step on batches taken from that loader beforehand
  and kept on the device, so no data work is timed.

The ratio epoch / model-only says what the data pipeline and bookkeeping cost (target: >= 0.9).

Usage:
    python benchmarks/epoch_throughput.py [--data synthetic | cifar100:/path] [--model vgg_att3]
        [--width 1.0] [--images 4096] [--batch 128] [--precision auto] [--device auto]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
from torch.nn import functional as F

from ltpa.train import TrainConfig, build_data
from ltpa.train.data_setup import BatchLoader, channel_mean_std
from ltpa.train.evaluation import build_model
from ltpa.train.loop import train_one_epoch
from ltpa.train.precision import describe_environment, resolve_precision
from ltpa.train.run_setup import make_lr_lambda


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--model", default="vgg_att3")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=4096, help="train images per epoch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels-last", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs (after one warm-up)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    channels_last = {"true": True, "false": False}.get(args.channels_last.lower(), "auto")
    config = TrainConfig(model=args.model, model_options={"width": args.width}, data=args.data,
                         num_classes=100 if args.data.startswith("cifar100") else 10,
                         num_train=args.images, num_test=16, subset_train=args.images,
                         val_fraction=0.0, batch_size=args.batch, precision=args.precision,
                         device=args.device, channels_last=channels_last)
    precision = resolve_precision(config.precision, config.channels_last, config.device)
    environment = describe_environment(precision)
    print(f"CPU {environment['cpu_model']}, ATen capability {environment['cpu_capability']}; "
          f"precision {precision.name} ({environment['precision_choice']})", flush=True)
    data = build_data(config)
    mean, std = channel_mean_std(data.train_images)
    loader = BatchLoader(data.train_images, data.train_targets, batch_size=args.batch, mean=mean,
                         std=std, device=precision.device, shuffle=True, drop_last=True,
                         augment=True, hflip=True, crop_padding=4, seed=0,
                         memory_format=precision.memory_format, name="train")
    torch.manual_seed(0)
    model = build_model(config).to(precision.device, memory_format=precision.memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_lr_lambda(config, len(loader)))
    scaler = precision.grad_scaler()

    def epoch(index: int) -> float:
        loader.set_epoch(index)
        _sync(precision.device)
        start = time.perf_counter()
        stats = train_one_epoch(model, loader, optimizer, scheduler, scaler, precision,
                                epoch=index, log_every=50, progress=False)
        _sync(precision.device)
        return stats["samples"] / (time.perf_counter() - start)

    loader.set_epoch(0)
    batches = list(loader)  # the same augmented, normalised batches, prepared in advance

    def model_only() -> float:
        model.train()
        _sync(precision.device)
        start = time.perf_counter()
        for images, targets in batches:
            with precision.autocast():
                loss = F.cross_entropy(model(images).logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        _sync(precision.device)
        return sum(len(t) for _, t in batches) / (time.perf_counter() - start)

    epoch(0)  # warm-up: kernels, allocator, autotuning
    model_only()
    # interleave, so slow drifts of a shared machine hit both alike
    epochs, steps = [], []
    for i in range(args.repeats):
        epochs.append(epoch(i + 1))
        steps.append(model_only())
    result = {
        "epoch_images_per_s": max(epochs), "model_only_images_per_s": max(steps),
        "ratio": max(epochs) / max(steps), "all_epoch": epochs, "all_model_only": steps,
        "batches_per_epoch": len(loader), "args": vars(args), "precision": precision.describe(),
        "cpu_capability": environment["cpu_capability"], "precision_name": precision.name,
        "environment": environment, "python": platform.python_version(),
    }
    print(f"{precision.describe()}  {args.model} width {args.width}  data {args.data}  "
          f"{len(loader)} batches of {args.batch}")
    print(f"training epoch (data pipeline + augmentation + step): {result['epoch_images_per_s']:9.1f} img/s")
    print(f"model-only training step, same batches:               {result['model_only_images_per_s']:9.1f} img/s")
    print(f"ratio epoch / model-only: {result['ratio']:.3f}  (target >= 0.90)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
