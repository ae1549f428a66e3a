"""The matmul roofline takes the best of the GEMM kernels this process can run."""
import pytest
import torch

from ltpa import roofline


def test_gemm_rates_time_torch_mm_and_onednn_with_the_flops_of_one_product(monkeypatch):
    seconds = iter([0.25, 0.5])  # torch.mm's best, then the 1x1 convolution's

    def fake_best(fn, device, reps):
        fn()  # the kernel still runs: a broken call would raise here
        return next(seconds)

    monkeypatch.setattr(roofline, "_best_seconds", fake_best)
    rates = roofline.gemm_rates(torch.float32, "cpu", n=64, reps=1)
    flops = 2 * 64**3
    assert rates["torch.mm"] == pytest.approx(flops / 0.25 / 1e9)
    if torch.backends.mkldnn.is_available():
        assert rates["oneDNN 1x1 conv"] == pytest.approx(flops / 0.5 / 1e9)


def test_matmul_roofline_is_the_best_kernel(monkeypatch):
    monkeypatch.setattr(roofline, "gemm_rates", lambda *a, **k: {"torch.mm": 180.0, "oneDNN 1x1 conv": 390.0})
    best, rates = roofline.matmul_roofline(torch.float32)
    assert best == 390.0 and rates == {"torch.mm": 180.0, "oneDNN 1x1 conv": 390.0}


def test_the_onednn_kernel_computes_the_same_product():
    # the 1x1 convolution timed as a GEMM must be one: n output channels x n inputs over n pixels
    n = 64
    a = torch.randn(n, n)
    pixels = torch.randn(1, n, 32, n // 32).contiguous(memory_format=torch.channels_last)
    assert pixels[0, 0].numel() == n  # n pixels: the product is n x n x n, 2 n^3 FLOPs
    out = torch.nn.functional.conv2d(pixels, a[:, :, None, None])
    assert torch.allclose(out[0].reshape(n, n), a @ pixels[0].reshape(n, n), atol=1e-4)


@pytest.mark.parametrize("n", [0, 48, -32])
def test_a_size_the_convolution_cannot_take_is_refused(n):
    with pytest.raises(ValueError, match="multiple of 32"):
        roofline.gemm_rates(torch.float32, "cpu", n=n)


def test_real_rates_are_positive():
    rates = roofline.gemm_rates(torch.float32, "cpu", n=128, reps=1)
    assert "torch.mm" in rates and all(rate > 0 for rate in rates.values())
