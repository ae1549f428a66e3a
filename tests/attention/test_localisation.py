"""Pointing games and baselines on hand-made maps with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltpa.attention.localisation import (
    box_to_mask,
    centre_prior,
    POINTING_OUTCOMES,
    energy_pointing_game,
    pointing_game,
    pointing_outcomes,
    random_map,
    zhang_tolerance,
)
from ltpa.attention.metrics import METRICS, metrics_markdown, pointing_rule


def _peaked(size: tuple[int, int], row: int, column: int, batch: int = 1) -> torch.Tensor:
    heat = torch.full((batch, *size), 0.1)
    heat[:, row, column] = 1.0
    return heat


def test_box_to_mask_uses_pixel_centres():
    mask = box_to_mask((2, 3, 5, 4), (6, 8))
    assert mask.dtype == torch.bool and mask.shape == (6, 8)
    assert torch.nonzero(mask).tolist() == [[3, 2], [3, 3], [3, 4]]
    # Centres 1.5 and 2.5 lie in [1.4, 2.6); centre 0.5 is on the (closed) left edge, 2.5 on the
    # (open) right edge.
    assert torch.nonzero(box_to_mask((1.4, 0, 2.6, 1), (1, 4)))[:, 1].tolist() == [1, 2]
    assert torch.nonzero(box_to_mask((0.5, 0, 2.5, 1), (1, 4)))[:, 1].tolist() == [0, 1]


def test_box_to_mask_batches_and_clips_to_the_image():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0], [-3.0, -3.0, 100.0, 100.0]])
    masks = box_to_mask(boxes, (5, 6))
    assert masks.shape == (2, 5, 6)
    assert masks[0].sum() == 8 and masks[1].all()


@pytest.mark.parametrize(
    "box", [(3, 0, 1, 2), (0, 0, float("nan"), 1), (0, 0, 1), [[0, 0, 1, 1, 1]]]
)
def test_box_to_mask_rejects_bad_boxes(box):
    with pytest.raises(ValueError):
        box_to_mask(box, (4, 4))


def test_peak_inside_the_box_hits_and_outside_misses():
    box = (4, 4, 8, 8)
    assert pointing_game(_peaked((16, 16), 5, 6), box=box).tolist() == [True]
    assert pointing_game(_peaked((16, 16), 12, 6), box=box).tolist() == [False]


def test_pointing_game_is_batched_with_one_box_per_map():
    heat = torch.cat([_peaked((16, 16), 1, 1), _peaked((16, 16), 10, 10)])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0]])
    assert pointing_game(heat, box=boxes).tolist() == [True, False]
    assert pointing_game(heat[:, None], box=boxes[0]).tolist() == [True, False]  # (B, 1, H, W)
    assert pointing_game(heat.numpy(), box=boxes.numpy()).tolist() == [True, False]


def test_tolerance_rescues_a_peak_just_outside():
    box = (4, 4, 8, 8)  # pixels 4..7
    heat = _peaked((16, 16), 5, 9)  # two columns right of the last box column
    assert pointing_game(heat, box=box, tolerance=1).tolist() == [False]
    assert pointing_game(heat, box=box, tolerance=2).tolist() == [True]
    # Tolerance is a Euclidean radius: a peak two pixels off diagonally is sqrt(8) away.
    corner = _peaked((16, 16), 9, 9)
    assert pointing_game(corner, box=box, tolerance=2).tolist() == [False]
    assert pointing_game(corner, box=box, tolerance=math.sqrt(8)).tolist() == [True]


def test_pointing_game_resolves_ties_towards_their_centroid():
    corner = torch.zeros(8, 8, dtype=torch.bool)
    corner[0, 0] = True
    flat = torch.ones(2, 8, 8)  # every pixel ties: the peak is at the centre, not at (0, 0)
    assert pointing_game(flat, mask=corner).tolist() == [False, False]
    centre = torch.zeros(8, 8, dtype=torch.bool)
    centre[3:5, 3:5] = True
    assert pointing_game(flat, mask=centre).tolist() == [True, True]
    plateau = torch.zeros(1, 8, 8)
    plateau[0, 4:7, 2:5] = 1.0  # a 3x3 upsampled cell: its centre, not its top-left pixel, is the peak
    cell_centre = torch.zeros(8, 8, dtype=torch.bool)
    cell_centre[5, 3] = True
    assert pointing_game(plateau, mask=cell_centre).tolist() == [True]


def test_pointing_game_leaves_inputs_unchanged():
    heat, mask = _peaked((8, 8), 2, 2), torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 6, 6] = True
    before = heat.clone(), mask.clone()
    pointing_game(heat, mask=mask, tolerance=3)
    assert torch.equal(heat, before[0]) and torch.equal(mask, before[1])


def test_pointing_game_rejects_bad_arguments():
    heat = _peaked((8, 8), 2, 2)
    with pytest.raises(ValueError, match="exactly one"):
        pointing_game(heat)
    with pytest.raises(ValueError, match="exactly one"):
        pointing_game(heat, box=(0, 0, 1, 1), mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(heat, box=(0, 0, 1, 1), tolerance=-1)
    with pytest.raises(TypeError, match="bool"):
        pointing_game(heat, mask=torch.ones(8, 8))
    with pytest.raises(ValueError, match="mask"):
        pointing_game(heat, mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="2 boxes or masks for 1 maps"):
        pointing_game(heat, box=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="heat"):
        pointing_game(torch.zeros(8, 8), box=(0, 0, 1, 1))


def test_empty_region_warns_and_misses():
    with pytest.warns(UserWarning, match="no pixel centre"):
        hits = pointing_game(_peaked((8, 8), 2, 2), box=(2.6, 2.6, 2.9, 2.9))
    assert hits.tolist() == [False]


def test_uniform_map_energy_equals_area_fraction():
    heat = torch.ones(2, 16, 16)
    energy = energy_pointing_game(heat, box=torch.tensor([[0, 0, 8, 4], [2, 2, 14, 14]]))
    torch.testing.assert_close(energy, torch.tensor([32 / 256, 144 / 256], dtype=torch.float64))


def test_map_inside_the_mask_has_energy_one_and_outside_zero():
    mask = box_to_mask((4, 4, 12, 12), (16, 16))
    heat = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0)) * mask
    assert energy_pointing_game(heat, mask=mask).item() == pytest.approx(1.0)
    assert energy_pointing_game(heat, mask=~mask).item() == 0.0
    assert energy_pointing_game(heat.numpy(), box=(4, 4, 12, 12)).item() == pytest.approx(1.0)


def test_energy_rejects_negative_maps_and_marks_zero_maps_nan():
    with pytest.raises(ValueError, match="clamp"):
        energy_pointing_game(torch.full((1, 4, 4), -0.1), box=(0, 0, 2, 2))
    with pytest.warns(UserWarning, match="all zero"):
        energy = energy_pointing_game(torch.zeros(2, 4, 4), box=(0, 0, 2, 2))
    assert torch.isnan(energy).all()


def test_random_map_is_reproducible_and_scores_chance():
    first = random_map((16, 16), torch.Generator().manual_seed(0), batch_size=2000)
    again = random_map((16, 16), torch.Generator().manual_seed(0), batch_size=2000)
    other = random_map((16, 16), torch.Generator().manual_seed(1), batch_size=2000)
    assert first.shape == (2000, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert 0.0 <= first.min() and first.max() < 1.0
    hit_rate = pointing_game(first, box=(0, 0, 8, 8)).double().mean().item()
    assert hit_rate == pytest.approx(0.25, abs=0.04)
    with pytest.raises(TypeError, match="Generator"):
        random_map((4, 4), 0)


def test_centre_prior_is_a_normalised_centred_gaussian():
    prior = centre_prior((21, 21), sigma_fraction=4 / 21, batch_size=3)
    assert prior.shape == (3, 21, 21) and prior.dtype == torch.float32
    torch.testing.assert_close(prior.sum((1, 2)), torch.ones(3))
    assert prior[0].argmax().item() == 10 * 21 + 10
    assert (prior[0, 10, 14] / prior[0, 10, 10]).item() == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert torch.equal(prior[0], prior[0].flip(0)) and torch.equal(prior[0], prior[0].T)


def test_centre_prior_on_even_and_non_square_images():
    prior = centre_prior((16, 24))
    assert prior.shape == (1, 16, 24)
    assert np.unravel_index(prior[0].argmax().item(), (16, 24)) == (7, 11)
    assert pointing_game(prior, box=(8, 4, 16, 12)).tolist() == [True]
    with pytest.raises(ValueError, match="sigma_fraction"):
        centre_prior((8, 8), sigma_fraction=0)


def test_any_tie_rule_hits_when_some_tied_maximum_is_inside():
    heat = torch.zeros(1, 8, 8)
    heat[0, 0, 0] = heat[0, 7, 7] = 1.0  # two separate maxima; their centroid is between them
    corner = torch.zeros(1, 8, 8, dtype=torch.bool)
    corner[0, 7, 7] = True
    assert pointing_game(heat, mask=corner, ties="any").tolist() == [True]
    assert pointing_game(heat, mask=corner).tolist() == [False]  # ltpa: the first of the two, (0, 0)
    # with a tolerance, any tied maximum within reach counts
    near = torch.zeros(1, 8, 8, dtype=torch.bool)
    near[0, 5, 7] = True
    assert pointing_game(heat, mask=near, ties="any", tolerance=2).tolist() == [True]
    assert pointing_game(heat, mask=near, ties="any", tolerance=1.9).tolist() == [False]
    with pytest.raises(ValueError, match="ties"):
        pointing_game(heat, mask=near, ties="all")


def test_zhang_tolerance_is_15_px_at_224_scaled_to_the_image():
    assert zhang_tolerance((224, 224)) == 15.0
    assert zhang_tolerance((32, 32)) == pytest.approx(15 * 32 / 224)
    assert zhang_tolerance((80, 120)) == pytest.approx(15 * 80 / 224)
    assert pointing_rule("zhang2018", (32, 32)) == {"ties": "centroid", "tolerance": pytest.approx(2.142857)}
    assert pointing_rule("quantus", (32, 32)) == {"ties": "any", "tolerance": 0.0}
    assert pointing_rule("ltpa", (32, 32), tolerance=3) == {"ties": "centroid", "tolerance": 3.0}
    with pytest.raises(ValueError, match="zhang2018"):
        pointing_rule("zhang", (32, 32))
    # a peak 2 px outside the box: a miss with no tolerance, a hit with Zhang's 2.14 px at 32 px
    heat = _peaked((32, 32), 10, 14)
    box = (4, 4, 12, 12)  # columns 4..11: the peak's column 14 is 3 px from the box's last column 11
    assert pointing_game(heat, box=box, **pointing_rule("zhang2018", (32, 32))).tolist() == [False]
    heat = _peaked((32, 32), 10, 13)
    assert pointing_game(heat, box=box, **pointing_rule("zhang2018", (32, 32))).tolist() == [True]
    assert pointing_game(heat, box=box).tolist() == [False]


def test_several_boxes_per_image_count_a_peak_inside_any_of_them():
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [6.0, 6.0, 8.0, 8.0]],
                          [[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]]])  # image 1: one box and padding
    masks = box_to_mask(boxes, (8, 8))
    assert masks.shape == (2, 8, 8) and masks.sum().item() == 8 + 4
    heat = torch.stack([_peaked((8, 8), 7, 7)[0], _peaked((8, 8), 7, 7)[0]])
    assert pointing_game(heat, box=boxes).tolist() == [True, False]
    energy = energy_pointing_game(heat, box=boxes)
    assert energy[0] > energy[1] > 0


def test_minmax_energy_drops_the_floor_of_the_map():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, :2] = True  # 2 of 16 pixels
    heat = torch.full((1, 4, 4), 0.5)
    heat[0, 0, 0] = 1.5  # one bright pixel in the region, the rest a floor of 0.5
    raw = energy_pointing_game(heat, mask=mask)
    assert raw.item() == pytest.approx((1.5 + 0.5) / (1.5 + 15 * 0.5))
    assert energy_pointing_game(heat, mask=mask, normalise="minmax").item() == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="constant"):
        assert torch.isnan(energy_pointing_game(torch.ones(1, 4, 4), mask=mask, normalise="minmax")).all()
    with pytest.raises(ValueError, match="normalise"):
        energy_pointing_game(heat, mask=mask, normalise="max")


def test_every_metric_is_named_defined_and_cited():
    assert len({m.name for m in METRICS}) == len(METRICS)
    table = metrics_markdown()
    for info in METRICS:
        assert info.definition and info.reference and info.default
        assert info.name in table
    assert "MaxBoxAccV2" in table and "Choe" in table and "Quantus" in table


def test_pointing_outcomes_say_where_each_peak_lands():
    mask = box_to_mask((4, 4, 8, 8), (16, 16))  # object: pixels 4..7
    other = box_to_mask((11, 11, 13, 13), (16, 16))  # a distractor: pixels 11..12
    peaks = [(5, 5), (5, 9), (10, 12), (0, 15), (1, 1), (14, 1), (15, 8)]
    heat = torch.cat([_peaked((16, 16), r, c) for r, c in peaks])
    outcomes = pointing_outcomes(heat, mask, near=2, others=other.expand(7, 16, 16))
    assert list(outcomes) == list(POINTING_OUTCOMES)
    landed = [next(name for name, hits in outcomes.items() if hits[i]) for i in range(len(peaks))]
    assert landed == ["hit", "near_object", "near_other", "border", "elsewhere", "elsewhere", "border"]
    assert torch.stack(list(outcomes.values())).sum(0).tolist() == [1] * len(peaks)  # exactly one each
    # hits and near-object peaks are the pointing game without and within the tolerance
    assert outcomes["hit"].tolist() == pointing_game(heat, mask=mask).tolist()
    within = pointing_game(heat, mask=mask, tolerance=2)
    assert (outcomes["hit"] | outcomes["near_object"]).tolist() == within.tolist()
    # no distractors: that peak is elsewhere; a wider border takes the peak at (1, 1) and (14, 1)
    assert pointing_outcomes(heat, mask, near=2)["elsewhere"].tolist() == [False, False, True, False, True, True, False]
    assert pointing_outcomes(heat, mask, near=2, border=2)["border"].tolist() == [False, False, False, True, True, True,
                                                                                   True]
    # (B, 1, H, W) regions, as data sets store masks, give the same outcomes
    channelled = pointing_outcomes(heat, mask.expand(7, 1, 16, 16), near=2, others=other.expand(7, 1, 16, 16))
    assert all(torch.equal(channelled[name], outcomes[name]) for name in outcomes)
    # a near-object peak that also lies near a distractor counts as near the object (checked first)
    both = pointing_outcomes(_peaked((16, 16), 9, 9), mask, near=3, others=other)
    assert both["near_object"].tolist() == [True] and not both["near_other"].any()


def test_pointing_outcomes_reject_bad_arguments():
    heat, mask = _peaked((8, 8), 2, 2), box_to_mask((0, 0, 4, 4), (8, 8))
    for near in (-1, math.inf, True, "2"):
        with pytest.raises(ValueError, match="near"):
            pointing_outcomes(heat, mask, near=near)
    for border in (-1, 1.5, True):
        with pytest.raises(ValueError, match="border"):
            pointing_outcomes(heat, mask, near=1, border=border)
    with pytest.raises(ValueError, match="others"):
        pointing_outcomes(heat, mask, near=1, others=mask.float())
    with pytest.raises(ValueError, match="others"):
        pointing_outcomes(heat, mask, near=1, others=mask[:4])
    with pytest.raises(ValueError, match="others"):
        pointing_outcomes(heat, mask, near=1, others=mask.expand(3, 8, 8))
