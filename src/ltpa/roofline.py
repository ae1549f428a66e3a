"""The matmul roofline of this machine: the best dense GEMM rate it reaches, and by which kernel.

Throughput benchmarks divide a model's FLOP rate by this figure. On a CPU, fp32 ``torch.mm`` goes
to the BLAS PyTorch was built with (MKL in the official wheels) while convolutions go to oneDNN,
and the two need not reach the same rate: on this project's AMD EPYC, fp32 ``torch.mm`` ran at
194-196 GFLOP/s natively and 186-194 under AVX2 emulation, oneDNN's 1x1 convolution at 408-418 and
217-228 (``benchmarks/train_throughput.py`` prints both; README, "Performance"). A roofline taken
from ``torch.mm`` alone put fp32 convolutions above the machine's peak. The roofline is therefore
the best of both: ``torch.mm`` and a 1x1 convolution over ``n`` pixels, which is the same
``n x n x n`` product run by oneDNN.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor
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


def conv_gemm_operands(n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(pixels, weight)`` whose 1x1 convolution is an ``n x n x n`` product: ``n`` input
    channels at ``n`` pixels (one row, channels-last) and ``n`` output channels."""
    pixels = torch.randn(1, n, 1, n).to(dtype).contiguous(memory_format=torch.channels_last)
    return pixels, torch.randn(n, n, 1, 1).to(dtype)


def gemm_rates(dtype: torch.dtype, device: torch.device | str = "cpu", *, n: int = 2048,
               reps: int = 5) -> dict[str, float]:
    """GFLOP/s of one dense ``n x n x n`` product (2 n^3 FLOPs) per kernel, best of ``reps``.

    Args:
        dtype: element type of both operands (``torch.float32``, ``torch.bfloat16``, ...).
        device: where to run; on a CPU the oneDNN convolution is timed too.
        n: the product's size.
        reps: timed repetitions after one warm-up; the fastest counts.

    Returns:
        ``{"torch.mm": GFLOP/s}``, plus ``"oneDNN 1x1 conv"`` on a CPU with oneDNN.

    Raises:
        ValueError: ``n`` or ``reps`` below 1.
    """
    if n < 1 or reps < 1:
        raise ValueError(f"n and reps must be at least 1 (got n={n}, reps={reps}); "
                         "e.g. n=2048, reps=5")
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    flops = 2 * n**3
    rates = {"torch.mm": flops / _best_seconds(lambda: torch.mm(a, b), device, reps) / 1e9}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        pixels, weight = conv_gemm_operands(n, dtype)
        rates["oneDNN 1x1 conv"] = flops / _best_seconds(lambda: F.conv2d(pixels, weight), device, reps) / 1e9
    return rates


def matmul_roofline(dtype: torch.dtype, device: torch.device | str = "cpu", *, n: int = 2048,
                    reps: int = 5) -> tuple[float, dict[str, float]]:
    """The best rate of :func:`gemm_rates` (same arguments) and all of them:
    ``(best GFLOP/s, {kernel: GFLOP/s})``."""
    rates = gemm_rates(dtype, device, n=n, reps=reps)
    return max(rates.values()), rates
