"""Training throughput of VGG-att against this CPU's (or GPU's) matmul roofline, same process.

Usage:
    python benchmarks/train_throughput.py [--model vgg_att3] [--batch 64] [--size 32]
        [--width 1.0] [--steps 5] [--warmup 2] [--repeats 1] [--precision auto] [--threads N]
        [--compile] [--json out.json]

Prints the CPU class (ATen capability) and the precision first. Then, all in one process:

* the roofline: the best dense GEMM GFLOP/s (square, best of a few) in fp32 and, when the fast
  path uses it, in bf16, of ``torch.mm`` (BLAS) and, on a CPU, of oneDNN's 1x1 convolution
  (``ltpa.roofline``: MKL may not use the vector units oneDNN uses); both are printed;
* the FLOPs of one training image (forward + backward, counted by
  ``torch.utils.flop_counter``: 22.7 GFLOP for full-width VGG-att3 at 32x32);
* img/s of each path and its roofline share = img/s x GFLOP/image / GEMM GFLOP/s of its dtype:
  ``fp32 NCHW eager`` (the peer: what the popular PyTorch port runs, the same layers in plain
  eager fp32 NCHW), ``fp32 channels_last``, the fast path (channels_last with the precision
  ``auto`` picks, as ``ltpa train`` does: bf16 autocast on GPUs and on CPUs with native bf16,
  fp32 elsewhere, since emulated bf16 is slower than fp32) and, with ``--compile``, the fast path
  under ``torch.compile`` (inductor);
* the peer ratio: fast path / peer.

``--repeats`` interleaves the paths (and the GEMM) that many times and keeps each one's best,
which is what a shared machine allows; the load average is printed with the result.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import ltpa
from ltpa.roofline import gemm_rates
from ltpa.train.precision import describe_environment, resolve_precision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(args, device):
    torch.manual_seed(0)
    return ltpa.create_model(args.model, num_classes=100, width=args.width, input_size=args.size).to(device)


def gflop_per_image(args, device) -> float:
    """Forward + backward FLOPs of one training image, counted on a batch of 2."""
    model = _model(args, device).train()
    images = torch.randn(2, 3, args.size, args.size, device=device)
    targets = torch.randint(0, 100, (2,), device=device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(images).logits, targets).backward()
    return counter.get_total_flops() / 2 / 1e9


class Path:
    """One way of running the training step: memory format, precision, compiled or not."""

    def __init__(self, args, device, *, name: str, channels_last: bool, precision, compiled: bool = False):
        self.name, self.precision = name, precision
        self.model = _model(args, device)
        self.images = torch.randn(args.batch, 3, args.size, args.size, device=device)
        self.targets = torch.randint(0, 100, (args.batch,), device=device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.scaler = precision.grad_scaler()
        self.forward = torch.compile(self.model) if compiled else self.model
        self.model.train()

    def step(self) -> None:
        with self.precision.autocast():
            loss = torch.nn.functional.cross_entropy(self.forward(self.images).logits.float(), self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def time(self, steps: int, warmup: int, device) -> float:
        for _ in range(warmup):
            self.step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(device)
        return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg_att3")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; each path keeps its best")
    parser.add_argument("--precision", default="auto", help="of the fast path: auto, bf16, fp16 (GPU), fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n roofline GEMM")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, True, "auto")
    device = precision.device
    environment = describe_environment(precision)
    print(f"CPU {environment['cpu_model']}, ATen capability {environment['cpu_capability']}; "
          f"fast path precision {precision.name} ({environment['precision_choice']})", flush=True)
    fp32 = resolve_precision("fp32", False, str(device))
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision.name)
    dtypes = {"fp32": torch.float32, **({precision.name: low} if low is not None else {})}
    kernels: dict[str, dict[str, float]] = {}  # per dtype, the best rate each GEMM kernel reached

    def measure_roofline() -> None:
        for name, dtype in dtypes.items():
            rates = gemm_rates(dtype, device, n=args.gemm_size)
            best = kernels.setdefault(name, {})
            for kernel, rate in rates.items():
                best[kernel] = max(best.get(kernel, 0.0), rate)

    measure_roofline()
    flops = gflop_per_image(args, device)
    paths = [Path(args, device, name="fp32 NCHW eager (peer)", channels_last=False, precision=fp32),
             Path(args, device, name="fp32 channels_last", channels_last=True, precision=fp32)]
    if precision.name != "fp32":
        paths.append(Path(args, device, name=f"{precision.name} channels_last", channels_last=True,
                          precision=precision))
    if args.compile:
        paths.append(Path(args, device, name=f"{precision.name} channels_last compiled", channels_last=True,
                          precision=precision, compiled=True))
    best = {p.name: float("inf") for p in paths}
    for round_ in range(max(1, args.repeats)):
        for p in paths:
            warmup = args.warmup if round_ == 0 else 0
            best[p.name] = min(best[p.name], p.time(args.steps, warmup, device))
        # the roofline again after each round, best kept: on a shared machine a single GEMM
        # timing caught in a busy moment would inflate every share
        measure_roofline()
    roofline = {name: max(rates.values()) for name, rates in kernels.items()}
    rows = []
    for p in paths:
        img_s = args.batch * args.steps / best[p.name]
        rows.append({"path": p.name, "precision": p.precision.name, "img_per_s": img_s, "seconds": best[p.name],
                     "roofline_share": img_s * flops / roofline[p.precision.name]})
    if device.type == "cuda":
        rows[-1]["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    fast = max((r for r in rows[1:] if r["precision"] == precision.name), key=lambda r: r["img_per_s"])
    ratio = fast["img_per_s"] / rows[0]["img_per_s"]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"{args.model} width={args.width} batch={args.batch} size={args.size} on {device} "
          f"({environment['device_name']}, {torch.get_num_threads()} threads), "
          f"{flops:.3f} GFLOP per training image; load average {load[0]:.2f}")
    print("  roofline (best GEMM " + f"{args.gemm_size}^3): " + ", ".join(
        f"{k} {v:.0f} GFLOP/s (" + ", ".join(f"{kernel} {rate:.0f}" for kernel, rate in kernels[k].items()) + ")"
        for k, v in roofline.items()))
    for row in rows:
        extra = f"  peak {row['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in row else ""
        print(f"  {row['path']:<32} {row['img_per_s']:8.1f} img/s  {100 * row['roofline_share']:5.1f}% of "
              f"{row['precision']} roofline{extra}")
    print(f"  peer ratio ({fast['path']} / fp32 NCHW eager): {ratio:.2f}x")
    print(f"  process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        record = {"args": vars(args), "device": str(device), "torch": torch.__version__,
                  "python": sys.version.split()[0], "ltpa": ltpa.__version__,
                  "cpu_capability": environment["cpu_capability"], "precision": precision.name,
                  "environment": environment, "gemm_gflops": roofline, "gemm_kernels": kernels,
                  "gflop_per_image": flops,
                  "results": rows, "speedup": ratio, "fast_path": fast["path"], "load_average": load,
                  "threads": torch.get_num_threads()}
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
