import math

import pytest
import torch
from matplotlib.figure import Figure

from ltpa.attention import part_assignments, part_table, plot_part_table
from ltpa.data.synthetic import SyntheticLocalisation


def _peaked_on(points: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size, size) maps with a narrow Gaussian on each (x, y) point."""
    ys = torch.arange(size).double() + 0.5
    xs = torch.arange(size).double() + 0.5
    d2 = (ys[None, :, None] - points[:, None, None, 1]) ** 2 + (xs[None, None, :] - points[:, None, None, 0]) ** 2
    return torch.exp(-d2 / 0.5)


def test_maps_peaked_on_the_head_give_head_100_percent():
    data = SyntheticLocalisation(6, image_size=32, num_classes=2, seed=1, split="test")
    heat = _peaked_on(data.parts[:, 0].double(), 32)
    table = part_table({"conv7": heat, "centre": torch.ones(6, 32, 32)}, data.parts, data.part_visible,
                       data.part_names, radius=1.0)
    level = table["levels"]["conv7"]
    assert level["peak"] == {"head": 1.0, "tail": 0.0, "none": 0.0}
    assert level["mass"]["head"] == 1.0
    assert level["consistency"]["peak"]["max_fraction"] == 1.0
    assert level["consistency"]["peak"]["one_minus_normalised_entropy"] == pytest.approx(1.0)
    assert table["parts"] == ["head", "tail", "none"]
    assert isinstance(plot_part_table(table), Figure)


def test_peak_far_from_every_visible_keypoint_is_none_and_invisible_parts_are_ignored():
    parts = torch.tensor([[[4.5, 4.5], [12.5, 12.5]]])
    heat = torch.zeros(1, 16, 16)
    heat[0, 4, 4] = 1.0  # exactly on part 0
    assert part_assignments(heat, parts, radius=1.0)["peak"].tolist() == [0]
    hidden = torch.tensor([[False, True]])
    out = part_assignments(heat, parts, hidden, radius=1.0)
    assert out["peak"].tolist() == [2] and out["most_mass"].tolist() == [2]
    assert out["mass"].tolist() == [[0.0, 0.0]]


def test_mass_within_radius_is_the_share_of_the_map():
    parts = torch.tensor([[[2.5, 2.5]]])
    heat = torch.ones(1, 8, 8)
    out = part_assignments(heat, parts, radius=1.0)  # the pixel and its 4 neighbours
    assert out["mass"].item() == pytest.approx(5 / 64)
    with pytest.raises(ValueError):
        part_assignments(heat, parts, radius=-1)
    assert not math.isnan(out["mass"].item())


def test_peak_of_an_upsampled_cell_is_its_middle_not_its_top_left_pixel():
    from ltpa.attention import place_on_image
    from ltpa.models.output import LevelInfo

    coarse = torch.full((1, 1, 4, 4), 0.01)
    coarse[0, 0, 2, 3] = 0.9  # the cell centred at (x, y) = (14, 10) with stride 4, offset 2
    heat = place_on_image(coarse, LevelInfo("conv13", 8, 4.0, 2.0), (16, 16), mode="nearest")
    # The cell is a 4x4 plateau (rows 8-11, columns 12-15). Its tie centroid snaps to pixel
    # (9, 13), centre (13.5, 9.5), 0.71 px from the cell centre; the first argmax (8, 12) would
    # be 2.12 px away.
    parts = torch.tensor([[[14.0, 10.0], [12.5, 8.5]]])
    assert part_assignments(heat, parts[:, :1], radius=1.0)["peak"].tolist() == [0]
    assert part_assignments(heat, parts, radius=1.0)["peak"].tolist() == [0]
