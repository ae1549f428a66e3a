import pytest
import torch

from ltpa.attention import jaccard_curve, segmentation_scores
from ltpa.attention.segmentation import binarise


def _masks():
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 8:15, 1:4] = True
    return masks


def test_map_equal_to_the_mask_scores_one_at_every_threshold():
    masks = _masks()
    scores = segmentation_scores(masks.float(), masks)
    assert scores["jaccard_fixed"] == pytest.approx(1.0)
    assert scores["jaccard_best"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in scores["jaccard_curve"])


def test_uniform_map_scores_the_mask_area_fraction():
    masks = _masks()
    curve = jaccard_curve(torch.ones(2, 1, 16, 16), masks, thresholds=(0.3, 0.9))
    expected = masks.flatten(1).sum(1).double() / 256
    assert torch.allclose(curve, expected[:, None].expand(2, 2))


def test_best_threshold_is_chosen_on_the_data_and_reported():
    masks = _masks()
    heat = masks.float() + 0.4 * (~masks).float() * (torch.arange(16) < 8).float()[None, :, None]
    scores = segmentation_scores(heat, masks, thresholds=(0.2, 0.5, 0.8), fixed_threshold=0.3)
    assert scores["best_threshold"] == 0.5 and scores["jaccard_best"] == pytest.approx(1.0)
    assert scores["jaccard_fixed"] < 1.0
    assert scores["jaccard_per_image_best_upper_bound"] == pytest.approx(1.0)  # both images perfect at 0.5


def test_per_image_upper_bound_takes_each_images_own_best_threshold():
    masks = _masks()  # 24 and 21 pixels
    heat = torch.zeros(2, 16, 16)
    heat[0][masks[0]] = 0.3
    heat[0, 15, 15] = 1.0  # a stray peak: only a low threshold keeps the object
    heat[1] = 0.6
    heat[1][masks[1]] = 1.0  # bright object on a bright background: only a high threshold works
    scores = segmentation_scores(heat, masks, thresholds=(0.2, 0.5, 0.8), fixed_threshold=0.5)
    # per image and threshold: image 0 [24/25, 0, 0], image 1 [21/256, 21/256, 1]
    assert scores["jaccard_curve"] == pytest.approx([(24 / 25 + 21 / 256) / 2, 21 / 512, 0.5])
    assert scores["best_threshold"] == 0.2
    assert scores["jaccard_best"] == pytest.approx((24 / 25 + 21 / 256) / 2)
    assert scores["jaccard_fixed"] == pytest.approx(21 / 512)
    assert scores["jaccard_per_image_best_upper_bound"] == pytest.approx((24 / 25 + 1.0) / 2)


def test_binarise_is_relative_to_each_maps_max_and_zero_maps_are_empty():
    heat = torch.stack([torch.tensor([[1.0, 0.5]]), torch.tensor([[10.0, 4.0]]), torch.zeros(1, 2)])
    assert binarise(heat, 0.5).tolist() == [[[True, True]], [[True, False]], [[False, False]]]
    with pytest.raises(ValueError):
        binarise(heat, 0.0)
    with pytest.raises(TypeError):
        segmentation_scores(heat, heat.long())


def test_calibrated_threshold_comes_from_the_held_out_split_and_the_oracle_from_the_scored_one():
    masks = _masks()
    # scored images: object 1.0, background 0.6 -> only a threshold above 0.6 separates them
    heat = 0.6 + 0.4 * masks.float()
    # calibration images: object 0.4, background 0 -> 0.2 works there, 0.8 would find nothing
    held = 0.4 * masks.float()
    scores = segmentation_scores(heat, masks, thresholds=(0.2, 0.8), calibration=(held, masks))
    assert scores["oracle_threshold"] == 0.8 and scores["jaccard_oracle"] == pytest.approx(1.0)
    assert scores["calibrated_threshold"] == 0.2 and scores["calibration_images"] == 2
    # at 0.2 every pixel of the scored maps is on: Jaccard = the masks' area fractions
    assert scores["jaccard_calibrated"] == pytest.approx(float((masks.flatten(1).sum(1) / 256.0).mean()))
    assert scores["jaccard_best"] == scores["jaccard_oracle"]  # the old name, kept as an alias
    assert "jaccard_calibrated" not in segmentation_scores(heat, masks, thresholds=(0.2, 0.8))
