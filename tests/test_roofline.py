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


@pytest.mark.parametrize("n", [64, 100])
def test_the_onednn_operands_make_the_same_n_cubed_product(n):
    pixels, weight = roofline.conv_gemm_operands(n, torch.float32)
    assert pixels.shape[1] == n and pixels[0, 0].numel() == n and weight.shape == (n, n, 1, 1)
    out = torch.nn.functional.conv2d(pixels, weight)
    assert torch.allclose(out[0].reshape(n, n), weight.flatten(1) @ pixels[0].reshape(n, n), atol=1e-3)


@pytest.mark.parametrize("n, reps", [(0, 5), (-32, 5), (64, 0)])
def test_sizes_and_repetitions_below_one_are_refused(n, reps):
    with pytest.raises(ValueError, match="at least 1"):
        roofline.gemm_rates(torch.float32, "cpu", n=n, reps=reps)


def test_real_rates_are_positive():
    rates = roofline.gemm_rates(torch.float32, "cpu", n=128, reps=1)
    assert "torch.mm" in rates and all(rate > 0 for rate in rates.values())
