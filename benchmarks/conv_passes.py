"""Where fp32 training time goes: each convolution's forward, input-gradient and weight-gradient
pass against the GEMM rate, measured in one process.

Usage:
    python benchmarks/conv_passes.py [--model vgg_att3] [--width 1.0] [--size 32] [--batch 32]
        [--threads N] [--reps 3] [--layout channels_last|nchw|both] [--json out.json]

The layer shapes come from the model itself (a forward hook on every ``nn.Conv2d``); each
convolution is then timed alone, three ways, as autograd runs it in training
(``aten.convolution`` for the forward, ``aten.convolution_backward`` with only the input or only
the weight gradient asked for, so the two can be told apart). Rates are FLOP counts (2 x MACs) over the best of ``--reps``
timings, next to the best dense 2048^3 GEMM rate of the same process (``ltpa.roofline``, the
roofline ``benchmarks/train_throughput.py`` uses). The totals say which pass keeps training under the
roofline; run it under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` to emulate a CPU
without AVX-512. Training runs the two gradients in one call and adds each conv's bias; both
differences are small next to the convolutions themselves. Only convolutions called as ``nn.Conv2d`` modules are seen: the attention scores' 1x1
convolution with one output channel (``F.conv2d`` on the level's weight) is left out; it is about
1% of a training step.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn

import ltpa
from ltpa.roofline import matmul_roofline
from ltpa.train.precision import describe_environment, resolve_precision


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def conv_layers(model_name: str, width: float, size: int, batch: int) -> list[dict]:
    """Every Conv2d the model runs on a ``batch`` of ``size`` px images, with its input shape."""
    model = ltpa.create_model(model_name, num_classes=100, width=width, input_size=size).eval()
    layers: list[dict] = []

    def record(name):
        def hook(module, inputs, output):
            layers.append({"name": name, "input": tuple(inputs[0].shape), "weight": tuple(module.weight.shape),
                           "output": tuple(output.shape), "stride": module.stride, "padding": module.padding,
                           "dilation": module.dilation, "groups": module.groups})
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.randn(batch, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return layers


def layer_passes(layer: dict, channels_last: bool) -> dict:
    """The three passes of one convolution as callables on random tensors of its shapes:
    ``forward`` returns the output, ``grad_input`` and ``grad_weight`` return
    ``aten.convolution_backward``'s triple with only that gradient asked for. The bias is left
    out (training runs it inside the same kernels; its cost is a sum over the output)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(layer["input"]).contiguous(memory_format=memory_format)
    w = torch.randn(layer["weight"]).contiguous(memory_format=memory_format)
    grad = torch.randn(layer["output"]).contiguous(memory_format=memory_format)
    geometry = (list(layer["stride"]), list(layer["padding"]), list(layer["dilation"]), False, [0, 0],
                layer["groups"])

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(grad, x, w, None, *geometry, mask)

    return {"forward": lambda: torch.ops.aten.convolution(x, w, None, *geometry),
            "grad_input": backward([True, False, False]), "grad_weight": backward([False, True, False])}


def time_layer(layer: dict, channels_last: bool, reps: int, *, first: bool = False) -> dict:
    passes = layer_passes(layer, channels_last)
    out_b, out_c, out_h, out_w = layer["output"]
    in_per_group, kh, kw = layer["weight"][1:]
    flop = 2 * out_b * out_c * out_h * out_w * in_per_group * kh * kw
    row = {"name": layer["name"], "input": layer["input"], "weight": layer["weight"], "gflop": flop / 1e9}
    if first:  # the image needs no gradient: autograd skips this pass in training
        del passes["grad_input"]
        row["grad_input_s"] = 0.0
    for name, fn in passes.items():
        fn()  # oneDNN builds its primitive on the first call
        row[f"{name}_s"] = min(_timed(fn) for _ in range(reps))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg_att3")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--layout", default="both", choices=("channels_last", "nchw", "both"))
    parser.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n roofline GEMM")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    auto = resolve_precision("auto", True, "cpu")
    environment = describe_environment(auto)
    print(f"CPU {environment['cpu_model']}, ATen capability {environment['cpu_capability']}; "
          f"{environment['precision_choice']}; timed here: fp32, {torch.get_num_threads()} threads", flush=True)
    layers = conv_layers(args.model, args.width, args.size, args.batch)
    layouts = {"channels_last": [True], "nchw": [False], "both": [True, False]}[args.layout]
    record = {"args": vars(args), "cpu_capability": environment["cpu_capability"], "precision": auto.name,
              "timed_precision": "fp32", "threads": torch.get_num_threads(), "environment": environment,
              "layouts": {}}
    for channels_last in layouts:
        label = "channels_last" if channels_last else "NCHW"
        gemm, kernels = matmul_roofline(torch.float32, n=args.gemm_size)
        rows = [time_layer(layer, channels_last, args.reps, first=i == 0) for i, layer in enumerate(layers)]
        again, later = matmul_roofline(torch.float32, n=args.gemm_size)  # best of two: one may hit a busy moment
        kernels = {k: max(v, later[k]) for k, v in kernels.items()}
        gemm = max(gemm, again)
        print(f"\n{args.model} width={args.width} batch={args.batch} {args.size}px, {label}; best GEMM "
              f"{args.gemm_size}^3 {gemm:.0f} GFLOP/s (" + ", ".join(f"{k} {v:.0f}" for k, v in kernels.items()) + ")")
        print(f"  {'layer':<34}{'input':>20}  {'fwd':>6} {'d_in':>6} {'d_w':>6}  GFLOP/s")
        for row in rows:
            cells = [f"{row['gflop'] / row[f'{p}_s']:6.0f}" if row[f"{p}_s"] else f"{'-':>6}"
                     for p in ("forward", "grad_input", "grad_weight")]
            print(f"  {row['name']:<34}{str(list(row['input'])):>20}  " + " ".join(cells))
        totals = {p: sum(r[f"{p}_s"] for r in rows) for p in ("forward", "grad_input", "grad_weight")}
        flops = {p: sum(r["gflop"] for r in rows if r[f"{p}_s"]) for p in totals}
        all_s = sum(totals.values())
        print("  total: " + ", ".join(f"{p} {s:.2f} s = {flops[p] / s:.0f} GFLOP/s ({100 * flops[p] / s / gemm:.0f}% "
                                      f"of GEMM, {100 * s / all_s:.0f}% of conv time)" for p, s in totals.items()))
        rate = sum(flops.values()) / all_s
        print(f"  all three passes: {rate:.0f} GFLOP/s = {100 * rate / gemm:.0f}% of GEMM")
        record["layouts"][label] = {"gemm_gflops": gemm, "gemm_kernels": kernels, "layers": rows, "totals_s": totals}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2, default=list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
