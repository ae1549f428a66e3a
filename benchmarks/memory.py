"""Training memory of VGG-att2 at CUB sizes: which batch fits where, with which options.

Usage:
    python benchmarks/memory.py [--model vgg_att2] [--sizes 80 224 448] [--batch 32]
        [--width 1.0] [--time-steps 0] [--json out.json]

It first prints the CPU class (ATen capability) and the precision ``auto`` picks here (both also
in the JSON). For every size and option set (fp32 / bf16, checkpointing, gradient accumulation)
it prints the memory that one training step needs:
- activations: bytes of every tensor autograd saves for backward, counted exactly by
  ``torch.autograd.graph.saved_tensors_hooks`` on the meta device (no compute, any size),
  de-duplicated by storage;
- weights + gradients + SGD momentum (fp32);
- on CUDA also the measured peak (``torch.cuda.max_memory_allocated``) and img/s.
``--time-steps N`` also times N real training steps on the current device (CPU: slow at 224+ px;
the bf16 rows run emulated, slower than fp32, on CPUs without native bf16).
Accumulation over k micro-batches keeps the optimizer batch and divides activation memory by k.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import ltpa
from ltpa.profiling import optimizer_static_bytes, saved_activation_bytes
from ltpa.train.precision import describe_environment, resolve_precision

GIB = 2**30


def estimate(args, size: int, *, dtype: torch.dtype, checkpointing: bool, micro_batch: int) -> dict:
    with torch.device("meta"):
        model = ltpa.create_model(args.model, num_classes=200, input_size=size, width=args.width,
                                  checkpointing=checkpointing)
        model = model.to(dtype=dtype, memory_format=torch.channels_last)
        images = torch.empty(micro_batch, 3, size, size, dtype=dtype, requires_grad=False)
        images = images.contiguous(memory_format=torch.channels_last)
    activations = saved_activation_bytes(model, images)
    return {"activations_gib": activations / GIB, "static_gib": optimizer_static_bytes(model) / GIB,
            "total_gib": (activations + optimizer_static_bytes(model)) / GIB}


def timed(args, size: int, *, bf16: bool, checkpointing: bool, micro_batch: int, device) -> dict:
    torch.manual_seed(0)
    model = ltpa.create_model(args.model, num_classes=200, input_size=size, width=args.width,
                              checkpointing=checkpointing).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = args.batch // micro_batch
    images = torch.randn(micro_batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 200, (micro_batch,), device=device)
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(images).logits.float(), targets) / steps
            loss.backward()
        optimizer.step()

    step()  # warm-up: first-call allocations and kernel selection are not timed
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.time_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    result = {"img_per_s": args.batch * args.time_steps / (time.perf_counter() - start)}
    if device.type == "cuda":
        result["measured_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg_att2")
    parser.add_argument("--sizes", type=int, nargs="+", default=[80, 224, 448])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--accumulate", type=int, default=4, help="micro-batches for the accumulation rows")
    parser.add_argument("--time-steps", type=int, default=0, help="also time this many real steps")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    precision = resolve_precision("auto", True, "auto")
    device = precision.device
    environment = describe_environment(precision)
    print(f"CPU {environment['cpu_model']}, ATen capability {environment['cpu_capability']}; "
          f"{environment['precision_choice']}", flush=True)
    variants = [
        ("fp32", torch.float32, False, 1),
        ("bf16", torch.bfloat16, False, 1),
        ("bf16 + checkpointing", torch.bfloat16, True, 1),
        (f"bf16 + accumulate x{args.accumulate}", torch.bfloat16, False, args.accumulate),
        (f"bf16 + checkpointing + accumulate x{args.accumulate}", torch.bfloat16, True, args.accumulate),
    ]
    rows = []
    print(f"{args.model} width={args.width}, batch {args.batch} per optimizer step, channels_last; "
          f"memory in GiB (activations saved for backward + fp32 weights/grads/momentum)")
    print(f"{'size':>5}  {'options':<40}{'activations':>12}{'total':>8}  fits 8 GB?")
    for size in args.sizes:
        for label, dtype, ckpt, accumulate in variants:
            micro = args.batch // accumulate
            row = {"size": size, "options": label, "micro_batch": micro,
                   **estimate(args, size, dtype=dtype, checkpointing=ckpt, micro_batch=micro)}
            if args.time_steps:
                row.update(timed(args, size, bf16=dtype == torch.bfloat16, checkpointing=ckpt,
                                 micro_batch=micro, device=device))
            rows.append(row)
            fits = "yes" if row["total_gib"] * GIB < 8e9 * 0.9 else "no"
            extra = "".join(f"  {k}={v:.2f}" for k, v in row.items() if k in ("img_per_s", "measured_peak_gib"))
            print(f"{size:>5}  {label:<40}{row['activations_gib']:>12.2f}{row['total_gib']:>8.2f}  {fits}{extra}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "device": str(device), "torch": torch.__version__,
                       "cpu_capability": environment["cpu_capability"], "precision": precision.name,
                       "environment": environment, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
