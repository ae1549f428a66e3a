"""The matmul roofline of this machine: the best dense GEMM rate it reaches, and by which kernel.

Throughput benchmarks divide a model's FLOP rate by this figure. On a CPU, ``torch.mm`` goes to
the BLAS PyTorch was built with (MKL), while convolutions go to oneDNN; the two need not use the
same vector units. On this project's AMD EPYC, MKL's fp32 GEMM ran at the same rate with or
without AVX-512 while oneDNN's ran about twice as fast with it (``benchmarks/train_throughput.py``
prints both), so a roofline taken from ``torch.mm`` alone put convolutions above the machine's
peak. The roofline is therefore the best of both: ``torch.mm`` and a 1x1 convolution over ``n``
pixels, which is the same ``n x n x n`` product run by oneDNN.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

__all__ = ["gemm_rates", "matmul_roofline"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    fn()  # warm-up: the library picks and builds its kernel
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def gemm_rates(dtype: torch.dtype, device: torch.device | str = "cpu", *, n: int = 2048,
               reps: int = 5) -> dict[str, float]:
    """GFLOP/s of one dense ``n x n x n`` product (2 n^3 FLOPs), best of ``reps``, per kernel.

    Keys: ``"torch.mm"`` always; on a CPU also ``"oneDNN 1x1 conv"`` (a channels-last 1x1
    convolution of ``n`` input and ``n`` output channels over ``n`` pixels), when oneDNN is
    available. ``n`` must be a multiple of 32 for the convolution.
    """
    device = torch.device(device)
    if n <= 0 or n % 32:
        raise ValueError(f"n must be a positive multiple of 32, got {n}")
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    flops = 2 * n**3
    rates = {"torch.mm": flops / _best_seconds(lambda: torch.mm(a, b), device, reps) / 1e9}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        pixels = torch.randn(1, n, 32, n // 32).to(dtype).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(n, n, 1, 1).to(dtype)
        rates["oneDNN 1x1 conv"] = flops / _best_seconds(lambda: F.conv2d(pixels, weight), device, reps) / 1e9
    return rates


def matmul_roofline(dtype: torch.dtype, device: torch.device | str = "cpu", *, n: int = 2048,
                    reps: int = 5) -> tuple[float, dict[str, float]]:
    """The best GEMM rate of :func:`gemm_rates` and all of them: ``(best, {kernel: GFLOP/s})``."""
    rates = gemm_rates(dtype, device, n=n, reps=reps)
    return max(rates.values()), rates
