"""Training throughput of VGG-att: ltpa's fast path against plain eager fp32 NCHW, same process.

Usage:
    python benchmarks/train_throughput.py [--model vgg_att3] [--batch 64] [--size 32]
        [--width 1.0] [--steps 5] [--warmup 2] [--precision auto] [--json out.json]

Prints the CPU class (ATen capability) and the precision first, then img/s for each path and
the ratio; writes JSON with both, the device and library versions. The fast path is channels_last
with the precision ``auto`` picks (as ``ltpa train`` does): bf16 autocast on GPUs and on CPUs
with native bf16, fp32 on other CPUs (emulated bf16 is slower than fp32 there); ``--precision
bf16`` forces it.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

import ltpa
from ltpa.train.precision import describe_environment, resolve_precision


def _step_fn(model, optimizer, images, targets, *, precision):
    scaler = precision.grad_scaler()

    def step():
        with precision.autocast():
            loss = torch.nn.functional.cross_entropy(model(images).logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def measure(args, *, fast: bool, precision) -> dict:
    device = precision.device
    torch.manual_seed(0)
    model = ltpa.create_model(args.model, num_classes=100, width=args.width, input_size=args.size).to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    targets = torch.randint(0, 100, (args.batch,), device=device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    numerics = precision if fast else resolve_precision("fp32", False, str(device))
    step = _step_fn(model.train(), optimizer, images, targets, precision=numerics)
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"path": f"{precision.name}+channels_last" if fast else "fp32 NCHW eager",
              "img_per_s": args.batch * args.steps / seconds, "seconds": seconds}
    if device.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg_att3")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="of the fast path: auto, bf16, fp16 (GPU), fp32")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    precision = resolve_precision(args.precision, True, "auto")
    device = precision.device
    environment = describe_environment(precision)
    print(f"CPU {environment['cpu_model']}, ATen capability {environment['cpu_capability']}; "
          f"fast path precision {precision.name} ({environment['precision_choice']})", flush=True)
    rows = [measure(args, fast=False, precision=precision), measure(args, fast=True, precision=precision)]
    ratio = rows[1]["img_per_s"] / rows[0]["img_per_s"]
    print(f"{args.model} width={args.width} batch={args.batch} size={args.size} on {device} "
          f"({environment['device_name']}, {torch.get_num_threads()} threads)")
    for row in rows:
        extra = f"  peak {row['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in row else ""
        print(f"  {row['path']:<20} {row['img_per_s']:8.1f} img/s{extra}")
    print(f"  speed-up (fast / fp32): {ratio:.2f}x")
    print(f"  process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        record = {"args": vars(args), "device": str(device), "torch": torch.__version__,
                  "python": sys.version.split()[0], "ltpa": ltpa.__version__,
                  "cpu_capability": environment["cpu_capability"], "precision": precision.name,
                  "environment": environment, "results": rows, "speedup": ratio}
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
