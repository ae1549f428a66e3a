"""ltpa's pointing and energy games against Quantus' PointingGame and RelevanceMassAccuracy on the
same maps and masks: equal where the definitions match, and the differences by design pinned."""
import warnings

import numpy as np
import pytest
import torch

from ltpa.attention import energy_pointing_game, pointing_game

quantus = pytest.importorskip("quantus", reason="quantus is a test extra: pip install -e '.[test]'")


def _quantus(metric, heat: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Quantus on precomputed maps: (N, 1, H, W) attributions and segmentations, no model."""
    count, height, width = heat.shape
    a_batch = heat.numpy().astype(np.float64)[:, None]
    s_batch = masks.numpy().astype(np.float64)[:, None]
    x_batch = np.zeros((count, 3, height, width), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(model=None, x_batch=x_batch, y_batch=np.zeros(count, dtype=int), a_batch=a_batch,
                        s_batch=s_batch)
    return np.asarray(scores, dtype=np.float64)


def _maps_and_masks(count=64, size=12, seed=0):
    """Random non-negative maps, many with tied maxima (coarse plateaus and constant maps), and
    random rectangular masks."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (count, size // 3, size // 3), generator=g).double()
    heat = coarse.repeat_interleave(3, 1).repeat_interleave(3, 2)  # 3x3 plateaus: ties
    fine = torch.rand(count // 2, size, size, generator=g, dtype=torch.float64)
    heat[: count // 2] = fine  # half without ties
    heat[-4:] = 1.0  # constant maps: every pixel ties
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for n in range(count):
        y0, x0 = torch.randint(0, size - 2, (2,), generator=g).tolist()
        y1, x1 = y0 + int(torch.randint(1, 6, (1,), generator=g)), x0 + int(torch.randint(1, 6, (1,), generator=g))
        masks[n, y0:y1, x0:x1] = True
    return heat, masks


def test_pointing_game_any_tie_rule_equals_quantus():
    heat, masks = _maps_and_masks()
    ours = pointing_game(heat, mask=masks, ties="any").numpy()
    theirs = _quantus(quantus.PointingGame(normalise=False, abs=False, disable_warnings=True), heat, masks)
    assert ours.tolist() == theirs.astype(bool).tolist()
    # not vacuous: hits and misses both occur, and ltpa's own (centroid) rule differs on some ties
    assert 0 < ours.sum() < len(ours)
    centroid = pointing_game(heat, mask=masks).numpy()
    assert (centroid != ours).any() and (centroid <= ours).all()  # one tied peak hits only if some tie does


def test_energy_game_on_raw_maps_equals_relevance_mass_accuracy():
    heat, masks = _maps_and_masks(seed=1)
    heat[-4:] = torch.rand(4, *heat.shape[1:], dtype=torch.float64)  # no all-constant maps needed here
    ours = energy_pointing_game(heat, mask=masks).numpy()
    theirs = _quantus(quantus.RelevanceMassAccuracy(normalise=False, abs=False, disable_warnings=True), heat, masks)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    assert np.ptp(ours) > 0.1  # different images, different scores
    # Quantus' default max-normalisation divides each map by its max: a ratio, so the same numbers
    default = _quantus(quantus.RelevanceMassAccuracy(disable_warnings=True), heat, masks)
    np.testing.assert_allclose(ours, default, rtol=1e-6)
    # min-max (Score-CAM) is another definition: it drops each map's floor, so scores move
    minmax = energy_pointing_game(heat, mask=masks, normalise="minmax").numpy()
    assert np.abs(minmax - ours).max() > 0.01


def test_differences_by_design_are_pinned():
    """An empty mask: Quantus writes NaN into a bool array (True, a hit) for the pointing game and
    NaN for the mass accuracy; ltpa scores a miss and 0 energy, with a warning."""
    heat = torch.rand(2, 8, 8, dtype=torch.float64)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:5, 2:5] = True  # image 1 has an empty mask
    theirs_pg = _quantus(quantus.PointingGame(normalise=False, disable_warnings=True), heat, masks)
    theirs_rma = _quantus(quantus.RelevanceMassAccuracy(normalise=False, disable_warnings=True), heat, masks)
    with pytest.warns(UserWarning, match="no pixel centre"):
        ours_pg = pointing_game(heat, mask=masks, ties="any")
    with pytest.warns(UserWarning, match="no pixel centre"):
        ours_energy = energy_pointing_game(heat, mask=masks)
    assert bool(theirs_pg[1]) is True and bool(ours_pg[1]) is False
    assert np.isnan(theirs_rma[1]) and float(ours_energy[1]) == 0.0
    # where the mask is not empty the two agree
    assert bool(theirs_pg[0]) == bool(ours_pg[0])
    assert theirs_rma[0] == pytest.approx(float(ours_energy[0]), rel=1e-12)
    # a constant map: Quantus counts every tied maximum, so it hits any non-empty region; ltpa's
    # default rule points at the centre pixel only
    # (Quantus refuses a batch whose values are all equal, so a second, peaked map comes along)
    flat = torch.stack([torch.full((8, 8), 0.5, dtype=torch.float64), heat[0]])
    corner = torch.zeros(2, 8, 8, dtype=torch.bool)
    corner[:, 0, 0] = True
    assert bool(_quantus(quantus.PointingGame(normalise=False, disable_warnings=True), flat, corner)[0])
    assert not bool(pointing_game(flat, mask=corner)[0]) and bool(pointing_game(flat, mask=corner, ties="any")[0])
