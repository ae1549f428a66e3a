"""One tie rule for "the peak of a map": the pointing game and the part table agree on it."""
import pytest
import torch

from ltpa.attention import part_assignments, part_table, pointing_game
from ltpa.attention.peaks import peak_pixels


def _pixel_mask(rows: torch.Tensor, columns: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bool (N, H, W): one pixel set per map."""
    mask = torch.zeros(len(rows), *size, dtype=torch.bool)
    mask[torch.arange(len(rows)), rows, columns] = True
    return mask


def _part_of_pixel(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(N, 1, 2) keypoints (x, y) on the centres of the given pixels."""
    return torch.stack([columns.double() + 0.5, rows.double() + 0.5], -1)[:, None]


def test_a_plateau_points_at_its_centroid_in_the_pointing_game_and_the_part_table():
    heat = torch.rand(1, 16, 20, generator=torch.Generator().manual_seed(0)) * 0.5
    heat[0, 3:8, 4:13] = 1.0  # 5 x 9 plateau of tied maxima: rows 3-7, columns 4-12
    rows, columns = peak_pixels(heat)
    assert (rows.item(), columns.item()) == (5, 8)  # its centroid, a tied pixel
    assert pointing_game(heat, mask=_pixel_mask(rows, columns, (16, 20))).item()
    # The first argmax, the plateau's top-left pixel (3, 4), is not the peak.
    first_row, first_column = torch.tensor([3]), torch.tensor([4])
    assert not pointing_game(heat, mask=_pixel_mask(first_row, first_column, (16, 20))).item()
    # Keypoints on the centroid pixel (part 0) and on the first argmax (part 1), radius 0.5 px.
    parts = torch.cat([_part_of_pixel(rows, columns), _part_of_pixel(first_row, first_column)], 1)
    assigned = part_assignments(heat, parts, radius=0.5)
    assert assigned["peak"].tolist() == [0]
    table = part_table({"level": heat}, parts, None, ["centroid", "first_argmax"], radius=0.5)
    assert table["levels"]["level"]["peak"] == {"centroid": 1.0, "first_argmax": 0.0, "none": 0.0}


@pytest.mark.parametrize(
    ("tied", "expected"),
    [
        # Two separate maxima: centroid (2, 5) is not tied; both equidistant -> first row-major.
        ([(2, 2), (2, 8)], (2, 2)),
        ([(7, 1), (1, 7)], (1, 7)),
        # L-shape: centroid (0.6, 0.6) is not tied; (0, 1) and (1, 0) are nearest, (0, 1) first.
        ([(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)], (0, 1)),
        # Ring around a lower centre (4, 4): the four edge midpoints tie, the top one is first.
        ([(3, 3), (3, 4), (3, 5), (4, 3), (4, 5), (5, 3), (5, 4), (5, 5)], (3, 4)),
        # 2 x 2 plateau: centroid on the shared corner, all four equidistant -> top-left.
        ([(4, 6), (4, 7), (5, 6), (5, 7)], (4, 6)),
        # Three ties with centroid (1, 1): (0, 0) and (0, 2) equidistant, (3, 1) farther.
        ([(0, 0), (0, 2), (3, 1)], (0, 0)),
        # A lone maximum is its own peak.
        ([(6, 3)], (6, 3)),
    ],
)
def test_tie_centroid_is_snapped_to_the_nearest_tied_pixel_then_row_major(tied, expected):
    heat = torch.zeros(1, 9, 10)
    heat[0, 4, 4] = 0.5  # lower than the ties, e.g. the inside of the ring
    for row, column in tied:
        heat[0, row, column] = 1.0
    rows, columns = peak_pixels(heat)
    assert (rows.item(), columns.item()) == expected
    assert heat[0, rows, columns].item() == 1.0  # the peak is always a maximum
    assert pointing_game(heat, mask=_pixel_mask(rows, columns, (9, 10))).item()
    assert part_assignments(heat, _part_of_pixel(rows, columns), radius=0.0)["peak"].item() == 0


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (1, 5)])
def test_a_constant_map_points_at_the_image_centre(size):
    rows, columns = peak_pixels(torch.full((2, *size), 0.25))
    assert rows.tolist() == [(size[0] - 1) // 2] * 2 and columns.tolist() == [(size[1] - 1) // 2] * 2


def test_pointing_game_and_part_table_agree_on_random_plateaus():
    generator = torch.Generator().manual_seed(1)
    # Coarse random maps blown up into blocks: many plateaus, several tied blocks per map.
    coarse = torch.randint(0, 4, (64, 1, 4, 5), generator=generator).double()
    heat = coarse.repeat_interleave(4, -2).repeat_interleave(3, -1)[:, 0]  # (64, 16, 15)
    rows, columns = peak_pixels(heat)
    assert torch.all(heat[torch.arange(64), rows, columns] == heat.flatten(1).max(1).values)
    assert pointing_game(heat, mask=_pixel_mask(rows, columns, (16, 15))).all()
    assert (part_assignments(heat, _part_of_pixel(rows, columns), radius=0.0)["peak"] == 0).all()


def test_peak_pixels_accepts_channel_axis_and_leaves_input_unchanged():
    heat = torch.rand(3, 1, 6, 7, generator=torch.Generator().manual_seed(2))
    before = heat.clone()
    rows, columns = peak_pixels(heat)
    flat = heat.flatten(1).argmax(1)  # no ties in random floats: the plain argmax
    assert rows.tolist() == (flat // 7).tolist() and columns.tolist() == (flat % 7).tolist()
    assert rows.dtype == torch.int64 and torch.equal(heat, before)
    with pytest.raises(ValueError, match="NaN"):
        peak_pixels(torch.full((1, 2, 2), float("nan")))
