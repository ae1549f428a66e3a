"""What two changes to ltpa's training step give: the same VGG-att3 step with each former version,
timed against the current one in interleaved rounds of one process.

Usage:
    python benchmarks/step_changes.py [--width 1.0] [--batch 64] [--steps 3] [--rounds 3]
        [--precision auto] [--threads N] [--json out.json]

The changes, both in ``ltpa.models.blocks``:

* ``former aggregation``: the attention levels summed ``a_i l_i`` with a bmm over a (B, C, h*w)
  view of the map. For a channels_last map its gradient came back NCHW, so autograd added it to
  the trunk's channels_last gradient and ran the ReLU backward on mixed strides. Now the bmm
  runs over a (B, h*w, C) view and every gradient stays channels_last.
* ``former dropout mask``: ``rand_like(x) >= p`` (one fp32 draw per value). Now the mask comes
  from 16-bit lanes of int64 random words on the CPU. Only models with dropout show it (the
  paper's full-width models; the demo and the CPU presets train without it).

Each variant patches the current code back to its former version for its own timings only;
the step is forward + backward + SGD in channels_last at the ``auto`` precision (bf16 where
the CPU has native bf16, else fp32), like ``benchmarks/train_throughput.py``'s fast path. Each
variant keeps its best round; the ratios compare those bests.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

import ltpa
import ltpa.models.blocks as blocks
from ltpa.train.precision import describe_environment, resolve_precision


def _former_weighted_sum(local: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return torch.bmm(local.flatten(2), weights.unsqueeze(2)).squeeze(2)


def _former_dropout(self, x: torch.Tensor) -> torch.Tensor:
    if not self.training or self.p == 0:
        return x
    if self.p == 1:
        return x * 0
    keep = torch.rand_like(x, dtype=torch.float32) >= self.p
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


@contextlib.contextmanager
def _patched(owner, name: str, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


VARIANTS = {
    "current": contextlib.nullcontext,
    "former aggregation": lambda: _patched(blocks, "_weighted_sum", _former_weighted_sum),
    "former dropout mask": lambda: _patched(blocks.Dropout, "forward", _former_dropout),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg_att3")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each variant keeps its best")
    parser.add_argument("--precision", default="auto", help="auto, bf16, fp16 (GPU) or fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, True, "auto")
    device = precision.device
    environment = describe_environment(precision)
    print(f"CPU {environment['cpu_model']}, ATen capability {environment['cpu_capability']}; "
          f"precision {precision.name} ({environment['precision_choice']})", flush=True)
    torch.manual_seed(0)
    model = ltpa.create_model(args.model, num_classes=100, width=args.width, input_size=args.size)
    model = model.to(device, memory_format=torch.channels_last).train()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 100, (args.batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = precision.grad_scaler()  # active for fp16 only
    has_dropout = any(isinstance(m, blocks.Dropout) and m.p > 0 for m in model.modules())
    variants = {k: v for k, v in VARIANTS.items() if has_dropout or k != "former dropout mask"}

    def step() -> None:
        with precision.autocast():
            loss = torch.nn.functional.cross_entropy(model(images).logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    best = {name: 0.0 for name in variants}
    for _ in range(max(1, args.rounds)):
        for name, patch in variants.items():
            with patch():
                step()  # warm-up: first call of this variant's kernels
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                best[name] = max(best[name], args.batch * args.steps / (time.perf_counter() - start))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"{args.model} width={args.width} batch={args.batch} size={args.size} on {device} "
          f"({environment['device_name']}, {torch.get_num_threads()} threads); load average {load[0]:.2f}")
    ratios = {name: best["current"] / rate for name, rate in best.items()}
    for name, rate in best.items():
        note = "" if name == "current" else f"  current / this: {ratios[name]:.3f}x"
        print(f"  {name:<22} {rate:8.2f} img/s{note}")
    if not has_dropout:
        print("  (this model has no dropout: the dropout mask variant is not timed)")
    if args.json:
        record = {"args": vars(args), "device": str(device), "torch": torch.__version__, "ltpa": ltpa.__version__,
                  "cpu_capability": environment["cpu_capability"], "precision": precision.name,
                  "environment": environment, "img_per_s": best, "speedup_over_former": ratios,
                  "load_average": load, "threads": torch.get_num_threads()}
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
