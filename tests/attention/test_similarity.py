"""The sanity-check similarities: SSIM equals scikit-image's, Spearman equals scipy's, top-k overlap
by hand."""
import numpy as np
import pytest
import torch
from scipy import stats

from ltpa.attention.localisation import minmax
from ltpa.attention.metrics.similarity import similarities, spearman, ssim, topk_overlap

skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image comes with the test extras (quantus)")


def _pair(seed=0, shape=(4, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    first = torch.rand(shape, generator=g, dtype=torch.float64)
    second = first + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)
    return first, second


@pytest.mark.parametrize("shape", [(4, 32, 32), (2, 8, 11), (2, 5, 6)])
def test_ssim_equals_scikit_image(shape):
    first, second = _pair(shape=shape)
    win = min(7, min(shape[1:]) if min(shape[1:]) % 2 else min(shape[1:]) - 1)
    reference = [skimage_metrics.structural_similarity(minmax(first[i:i + 1])[0].numpy(),
                                                       minmax(second[i:i + 1])[0].numpy(), data_range=1.0,
                                                       win_size=win) for i in range(shape[0])]
    np.testing.assert_allclose(ssim(first, second), reference, rtol=1e-10)
    assert ssim(first, first) == pytest.approx(np.ones(shape[0]))


def test_spearman_equals_scipy_with_ties_and_is_nan_for_a_constant_map():
    first, second = _pair(seed=1)
    first = (first * 4).floor()  # many ties
    reference = [stats.spearmanr(first[i].flatten(), second[i].flatten()).statistic for i in range(4)]
    np.testing.assert_allclose(spearman(first, second), reference, rtol=1e-12)
    assert spearman(first, -first) == pytest.approx(-np.ones(4))
    flat = torch.ones(1, 8, 8)
    assert np.isnan(spearman(flat, torch.rand(1, 8, 8))[0])


def test_topk_overlap_by_hand():
    first = torch.arange(16.0).view(1, 4, 4)  # top 4 (25%): pixels 12..15
    second = torch.arange(16.0).flip(0).view(1, 4, 4).clone()
    second[0, 3, 3] = 100.0  # second's top 4: pixel 15 and pixels 0..2
    assert topk_overlap(first, second, fraction=0.25).tolist() == [0.25]
    assert topk_overlap(first, first, fraction=0.25).tolist() == [1.0]
    assert topk_overlap(first, second, fraction=1.0).tolist() == [1.0]
    with pytest.raises(ValueError, match="fraction"):
        topk_overlap(first, second, fraction=0)


def test_similarities_check_shapes_and_leave_inputs_unchanged():
    first, second = _pair()
    before = first.clone()
    result = similarities(first, second)
    assert set(result) == {"spearman", "ssim", "topk_overlap"} and all(v.shape == (4,) for v in result.values())
    assert torch.equal(first, before)
    with pytest.raises(ValueError, match="same shape"):
        spearman(first, second[:, :16])
