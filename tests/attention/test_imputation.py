"""ROAD's noisy linear imputation, batched: the same system grad-cam solves one image at a time."""
import warnings

import pytest
import torch

from ltpa.attention.imputation import noisy_linear_imputation


def test_batched_imputation_equals_grad_cams_sparse_solve_without_noise():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    torch.manual_seed(0)
    images = torch.randn(5, 3, 12, 16)
    removed = torch.tensor([0.1, 0.5, 0.9, 1.0, 0.3])  # one image with every pixel removed
    keep = torch.rand(5, 12, 16) >= removed[:, None, None]
    ours = noisy_linear_imputation(images, keep, noise=0.0, tolerance=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # grad-cam's NumPy 2 deprecation
        theirs = torch.stack([NoisyLinearImputer(noise=0.0)(images[i], keep[i].float()) for i in range(5)])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert torch.equal(ours[keep[:, None].expand_as(ours)], images[keep[:, None].expand_as(images)])


def test_noise_only_on_imputed_pixels_and_drawn_from_the_generator():
    images = torch.rand(2, 3, 8, 8)
    keep = torch.rand(2, 8, 8) > 0.5
    draws = [noisy_linear_imputation(images, keep, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    plain = noisy_linear_imputation(images, keep, noise=0.0)
    difference = (draws[0] - plain)[~keep[:, None].expand_as(plain)]
    assert torch.equal(draws[0][keep[:, None].expand_as(plain)], images[keep[:, None].expand_as(images)])
    assert 0.005 < float(difference.std()) < 0.02  # std 0.01


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="keep"):
        noisy_linear_imputation(torch.zeros(2, 3, 8, 8), torch.ones(2, 8, 9, dtype=torch.bool))
