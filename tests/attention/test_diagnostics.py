import math

import pytest
import torch

import ltpa
from ltpa.attention import AttentionMaps, diagnose, explain, map_statistics, summarise_maps
from ltpa.models.output import LevelInfo


def test_uniform_map_has_full_entropy_and_is_flagged_uniform():
    stats = map_statistics(torch.full((2, 1, 8, 8), 1 / 64), topk=(1, 0.25))
    assert torch.allclose(stats["entropy"], torch.full((2,), math.log(64), dtype=torch.float64))
    assert torch.allclose(stats["normalised_entropy"], torch.ones(2, dtype=torch.float64))
    assert torch.allclose(stats["effective_positions"], torch.full((2,), 64.0, dtype=torch.float64))
    assert torch.allclose(stats["top25%"], torch.full((2,), 16 / 64, dtype=torch.float64))
    assert stats["uniform"].all() and not stats["collapsed"].any() and not stats["border"].any()
    assert torch.allclose(stats["border_mass"], torch.full((2,), 28 / 64, dtype=torch.float64))


def test_one_hot_map_has_one_effective_position_and_is_collapsed():
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 3, 4] = 1.0
    stats = map_statistics(maps)
    assert stats["entropy"].item() == pytest.approx(0.0, abs=1e-12)
    assert stats["effective_positions"].item() == pytest.approx(1.0)
    assert stats["top1"].item() == pytest.approx(1.0)
    assert stats["collapsed"].item() and not stats["uniform"].item() and not stats["border"].item()


def test_map_on_the_corner_is_flagged_border():
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 0, 0] = maps[0, 0, 7, 7] = 0.5
    stats = map_statistics(maps)
    assert stats["border_mass"].item() == pytest.approx(1.0)
    assert stats["border"].item() and stats["collapsed"].item()
    assert stats["effective_positions"].item() == pytest.approx(2.0)


def test_sigmoid_maps_are_scaled_to_a_distribution_and_zero_maps_are_uniform():
    stats = map_statistics(torch.stack([torch.full((4, 4), 0.3), torch.zeros(4, 4)]))
    assert torch.allclose(stats["normalised_entropy"], torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-negative"):
        map_statistics(-torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="topk"):
        map_statistics(torch.ones(1, 4, 4), topk=(0,))


def _hand_maps():
    fine = torch.full((3, 1, 32, 32), 1 / 1024)  # uniform: renders as ~0 next to a peaked level
    coarse = torch.zeros(3, 1, 8, 8)
    coarse[:, 0, 4, 4] = 1.0
    levels = (LevelInfo("conv7", 8, 1.0, 0.5), LevelInfo("conv13", 8, 4.0, 2.0))
    from ltpa.attention import place_on_image
    up = tuple(place_on_image(m, lv, (32, 32)) for m, lv in zip((fine, coarse), levels))
    return AttentionMaps((fine, coarse), up, levels, torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), "softmax")


def test_summary_and_explanation_name_the_uniform_level_and_its_rendering():
    maps = _hand_maps()
    summary = summarise_maps(maps)
    fine, coarse = summary["levels"]["conv7"], summary["levels"]["conv13"]
    assert fine["flagged"]["uniform"] == 100.0 and coarse["flagged"]["collapsed"] == 100.0
    # on the shared 'mass' scale (0 to the coarse level's brightest upsampled pixel, which keeps
    # the cell's unit mass over its footprint) the uniform level peaks at 1/1024 of that: ~2%
    peak = fine["stats"]["shared_scale_peak"]["mean"]
    assert peak == pytest.approx((1 / 1024) / maps.upsampled[1].max().item()) and peak < 0.05
    assert summary["class_agnostic"]
    text = explain(summary)
    assert "conv7" in text and "1/1024" in text and "nearly uniform" in text
    assert "renders as ~0" in text and "per-map" in text and "class-agnostic" in text
    assert "collapsed onto ~1 position" in text


def test_diagnose_runs_a_model_and_leaves_it_and_the_images_unchanged():
    torch.manual_seed(0)
    model = ltpa.create_model("vgg_att3", num_classes=3, width=0.125).train()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    before = images.clone()
    summary = diagnose(model, images, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert list(summary["levels"]) == ["conv7", "conv10", "conv13"]
    assert summary["levels"]["conv7"]["positions"] == 1024
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(images, before)
    with pytest.raises(ValueError, match="mean"):
        diagnose(model, images)


def test_explain_says_when_a_level_renders_faint_on_the_shared_scale():
    import torch

    from ltpa.attention.diagnostics import explain, summarise_maps
    from ltpa.attention.maps import AttentionMaps
    from ltpa.models.output import LevelInfo

    torch.manual_seed(0)
    n = 8
    sharp = torch.zeros(n, 1, 4, 4)
    sharp[:, 0, 1, 2] = 1.0  # all mass on one cell
    spread = torch.rand(n, 1, 8, 8) ** 4 + 0.01
    spread[:, 0, 3, 3] = 8.0  # a clear peak holding a good part, not all, of the mass
    spread = spread / spread.sum(dim=(2, 3), keepdim=True)
    levels = (LevelInfo("fine", 8, 1.0, 0.5), LevelInfo("coarse", 8, 2.0, 1.0))
    maps = AttentionMaps(maps=(spread, sharp), upsampled=(spread, sharp.repeat_interleave(2, 2).repeat_interleave(2, 3)),
                         levels=levels, logits=torch.zeros(n, 2), predictions=torch.zeros(n, dtype=torch.long),
                         normalisation="softmax")
    text = explain(summarise_maps(maps))
    fine = next(line for line in text.splitlines() if line.startswith("fine"))
    assert "renders faint next to coarse" in fine and "renders as ~0" not in fine


def test_the_shared_scale_is_set_by_mass_per_pixel_not_per_cell():
    """A one-hot coarse map holds more mass per *cell* (1.0) than a fine map spread over a few
    pixels (0.3 at most), but each coarse cell spreads over 16 input pixels: per pixel the fine
    level is brighter, sets the overlays' 'mass' scale, and the coarse one renders faint."""
    from ltpa.attention import place_on_image

    fine = torch.full((4, 1, 32, 32), 0.0)
    fine[:, 0, 10:12, 10:12] = 0.25 - 1e-3  # four pixels of ~0.25 each, the rest spread thinly
    fine = fine + (1 - fine.sum((2, 3), keepdim=True)) / 1024
    coarse = torch.zeros(4, 1, 8, 8)
    coarse[:, 0, 2, 2] = 1.0
    levels = (LevelInfo("conv7", 8, 1.0, 0.5), LevelInfo("conv13", 8, 4.0, 2.0))
    up = tuple(place_on_image(m, lv, (32, 32)) for m, lv in zip((fine, coarse), levels))
    maps = AttentionMaps((fine, coarse), up, levels, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), "softmax")
    summary = summarise_maps(maps)
    assert summary["levels"]["conv13"]["stats"]["max_mass"]["mean"] > summary["levels"]["conv7"]["stats"]["max_mass"]["mean"]
    lines = explain(summary).splitlines()
    coarse_line = next(line for line in lines if line.startswith("conv13"))
    fine_line = next(line for line in lines if line.startswith("conv7"))
    assert "shared with conv7" in coarse_line and "mass per input pixel" in coarse_line
    assert "16 pixel(s) each" in coarse_line
    assert "shared with" not in fine_line  # the level that sets the scale is not called faint
