"""Overlays are pure, display scales are honest, and grids save as real PNG files."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from ltpa.attention.overlays import (
    DISPLAY_MODES,
    attention_grid,
    denormalise,
    normalise_for_display,
    overlay,
    save_figure,
)

RNG = np.random.default_rng(0)


def _image(h: int = 8, w: int = 12) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _low_colour(cmap: str = "jet") -> np.ndarray:
    return np.asarray(matplotlib.colormaps[cmap](0.0)[:3])


def test_overlay_returns_new_uint8_rgb_and_leaves_inputs_unchanged():
    image, heat = _image(), RNG.random((8, 12))
    image_before, heat_before = image.copy(), heat.copy()
    out = overlay(image, heat)
    assert out.shape == (8, 12, 3) and out.dtype == np.uint8
    assert not np.shares_memory(out, image)
    assert np.array_equal(image, image_before) and np.array_equal(heat, heat_before)


def test_overlay_alpha_extremes_give_image_and_pure_colours():
    image = _image()
    heat = np.linspace(0, 1, 96).reshape(8, 12)
    assert np.array_equal(overlay(image, heat, alpha=0.0), image)
    pure = overlay(image, heat, alpha=1.0, cmap="viridis")
    expected = np.rint(matplotlib.colormaps["viridis"](heat)[..., :3] * 255).astype(np.uint8)
    assert np.array_equal(pure, expected)


def test_overlay_accepts_float_images_and_tensor_heat():
    image = _image()
    heat = torch.rand(8, 12)
    from_uint8 = overlay(image, heat.numpy())
    from_float = overlay(image.astype(np.float32) / 255.0, heat)
    assert np.abs(from_uint8.astype(int) - from_float.astype(int)).max() <= 1


def test_constant_map_renders_in_the_low_colour():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    out = overlay(image, np.full((4, 4), 0.3), alpha=1.0)
    assert np.array_equal(out[0, 0], np.rint(_low_colour() * 255).astype(np.uint8))
    assert len(np.unique(out.reshape(-1, 3), axis=0)) == 1
    # With an explicit scale the constant value takes its place on that scale.
    high = overlay(image, np.full((4, 4), 0.3), alpha=1.0, vmin=0.0, vmax=0.3)
    top = np.rint(np.asarray(matplotlib.colormaps["jet"](1.0)[:3]) * 255).astype(np.uint8)
    assert np.array_equal(high[0, 0], top)


def test_overlay_clips_outside_vmin_vmax():
    image = np.zeros((1, 3, 3), dtype=np.uint8)
    out = overlay(image, np.array([[-5.0, 0.5, 9.0]]), alpha=1.0, vmin=0.0, vmax=1.0)
    low = np.rint(_low_colour() * 255).astype(np.uint8)
    high = np.rint(np.asarray(matplotlib.colormaps["jet"](1.0)[:3]) * 255).astype(np.uint8)
    assert np.array_equal(out[0, 0], low) and np.array_equal(out[0, 2], high)


@pytest.mark.parametrize(
    ("image", "heat", "kwargs", "error"),
    [
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4)), {}, ValueError),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5)), {}, ValueError),
        (np.full((4, 4, 3), 2.0), np.zeros((4, 4)), {}, ValueError),
        (np.zeros((4, 4, 3), np.int16), np.zeros((4, 4)), {}, TypeError),
        (np.zeros((4, 4, 3), np.uint8), np.full((4, 4), np.nan), {}, ValueError),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), {"alpha": 1.5}, ValueError),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), {"vmin": 1.0, "vmax": 0.0}, ValueError),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), {"cmap": "jett"}, ValueError),
    ],
)
def test_overlay_rejects_bad_input(image, heat, kwargs, error):
    with pytest.raises(error):
        overlay(image, heat, **kwargs)


def test_normalise_for_display_modes():
    coarse = np.array([[0.1, 0.3], [0.2, 0.4]])
    fine = np.array([[0.05, 0.05], [0.05, 0.15]])
    before = [coarse.copy(), fine.copy()]

    maps, scale = normalise_for_display([coarse, fine], "mass")
    assert scale == (0.05, 0.4)
    assert np.array_equal(maps[0], coarse) and maps[0] is not coarse

    maps, scale = normalise_for_display([coarse, fine], "shared")
    assert scale == (0.0, 1.0)
    assert maps[0].max() == pytest.approx(1.0) and maps[1].min() == pytest.approx(0.0)
    assert maps[1].max() == pytest.approx((0.15 - 0.05) / 0.35)

    maps, scale = normalise_for_display([coarse, fine], "per-map")
    assert scale == (0.0, 1.0)
    for m in maps:
        assert m.min() == pytest.approx(0.0) and m.max() == pytest.approx(1.0)
    assert all(np.array_equal(a, b) for a, b in zip([coarse, fine], before))


def test_normalise_for_display_constant_maps_do_not_divide_by_zero():
    for mode in DISPLAY_MODES:
        maps, (vmin, vmax) = normalise_for_display([np.full((3, 3), 0.2)], mode)
        assert np.all(np.isfinite(maps[0])) and vmin <= vmax


def test_normalise_for_display_unknown_mode_lists_the_modes():
    with pytest.raises(ValueError, match="per-map"):
        normalise_for_display([np.zeros((2, 2))], "minmax")


def _grid_inputs(batch: int = 2, size: int = 16):
    images = RNG.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    coarse = torch.rand(batch, 1, size, size)
    fine = torch.rand(batch, 1, size, size) / 4
    return images, [coarse, fine]


def test_attention_grid_layout_titles_and_colour_bars():
    images, maps = _grid_inputs()
    rc_before = dict(matplotlib.rcParams)
    figure = attention_grid(images, maps, level_names=["conv7", "conv10"], strides=[4, 2],
                            titles=["pred: cat / true: dog", "pred: dog / true: dog"])
    assert isinstance(figure, Figure)
    assert dict(matplotlib.rcParams) == rc_before
    panels = [ax for ax in figure.axes if ax.get_title() or ax.images]
    assert len(panels) == 2 * 3
    titles = [ax.get_title() for ax in figure.axes]
    assert "pred: cat / true: dog" in titles and "pred: dog / true: dog" in titles
    assert "conv7 (stride 4)" in titles and "conv10 (stride 2)" in titles
    assert len(figure.axes) == 2 * 3 + 2  # one colour bar per row in "mass" mode
    bars = figure.axes[-2:]
    assert [bar.get_ylabel() for bar in bars] == ["mass per pixel"] * 2  # what the mass scale shows


def test_attention_grid_per_map_mode_says_so_and_has_no_colour_bar():
    images, maps = _grid_inputs(batch=1)
    figure = attention_grid(images, maps, level_names=["a", "b"], mode="per-map")
    titles = [ax.get_title() for ax in figure.axes]
    assert sum("per-map scale" in t for t in titles) == 2
    assert len(figure.axes) == 3


def test_attention_grid_leaves_inputs_unchanged():
    images, maps = _grid_inputs()
    before = images.copy(), [m.clone() for m in maps]
    attention_grid(images, maps, level_names=["a", "b"], mode="shared")
    assert np.array_equal(images, before[0])
    assert all(torch.equal(m, b) for m, b in zip(maps, before[1]))


def test_attention_grid_rejects_mismatched_inputs():
    images, maps = _grid_inputs()
    with pytest.raises(ValueError, match="level_names"):
        attention_grid(images, maps, level_names=["only one"])
    with pytest.raises(ValueError, match="titles"):
        attention_grid(images, maps, level_names=["a", "b"], titles=["one"])
    with pytest.raises(ValueError, match="upsampled_maps"):
        attention_grid(images, [maps[0][:1]], level_names=["a"])
    with pytest.raises(ValueError, match="display mode"):
        attention_grid(images, maps, level_names=["a", "b"], mode="global")


def test_save_figure_writes_a_valid_png_atomically(tmp_path):
    images, maps = _grid_inputs()
    figure = attention_grid(images, maps, level_names=["a", "b"])
    path = tmp_path / "grid.png"
    path.write_bytes(b"old")  # replaced as a whole
    assert save_figure(figure, path) == path
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no temporary left


def test_save_figure_rejects_bad_paths(tmp_path):
    figure = Figure()
    with pytest.raises(ValueError, match=".png"):
        save_figure(figure, tmp_path / "grid.jpg")
    with pytest.raises(FileNotFoundError):
        save_figure(figure, tmp_path / "missing" / "grid.png")
    assert list(tmp_path.iterdir()) == []


def test_denormalise_round_trips_uint8_rgb():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    original = RNG.integers(0, 256, size=(2, 5, 6, 3), dtype=np.uint8)
    scaled = torch.from_numpy(original).permute(0, 3, 1, 2).double() / 255.0
    normalised = (scaled - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    before = normalised.clone()
    restored = denormalise(normalised, mean, std)
    assert restored.dtype == np.uint8 and restored.shape == (2, 5, 6, 3)
    assert np.array_equal(restored, original)
    assert torch.equal(normalised, before)


def test_denormalise_clips_and_keeps_rgb_order():
    images = torch.zeros(1, 3, 2, 2)
    images[:, 0] = 10.0  # far above white in red
    images[:, 2] = -10.0  # far below black in blue
    out = denormalise(images, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out[0, 0, 0].tolist() == [255, 128, 0]


@pytest.mark.parametrize(
    ("shape", "mean", "std"),
    [((1, 1, 4, 4), (0, 0, 0), (1, 1, 1)), ((1, 3, 4, 4), (0, 0), (1, 1, 1)),
     ((1, 3, 4, 4), (0, 0, 0), (1, 0, 1))],
)
def test_denormalise_rejects_bad_input(shape, mean, std):
    with pytest.raises(ValueError):
        denormalise(torch.zeros(shape), mean, std)


def test_attention_grid_with_constant_maps_and_float_images(tmp_path):
    images = np.full((1, 8, 8, 3), 0.5)
    maps = [np.full((1, 8, 8), 0.25), np.full((1, 1, 8, 8), 0.25)]
    grey = np.full(3, 128, dtype=np.uint8)  # 0.5 * 255 = 127.5, rounded half to even
    # a constant map has no span: the low colour, half-blended (alpha 0.5) over the grey image
    expected = np.rint((0.5 * 0.5 + 0.5 * _low_colour()) * 255).astype(np.uint8)
    for mode in DISPLAY_MODES:
        figure = attention_grid(images, maps, level_names=["a", "b"], mode=mode)
        panels = [np.asarray(ax.images[0].get_array()) for ax in figure.axes if ax.images and ax.get_label() != "<colorbar>"]
        assert len(panels) == 3  # the image, then one overlay per level
        assert (panels[0] == grey).all()
        for panel in panels[1:]:
            assert panel.shape == (8, 8, 3) and (panel == expected).all(), mode
        path = save_figure(figure, tmp_path / f"{mode}.png")
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
        # the saved picture shows those colours in flat panels (measured: 46-51% and 23-25% of it)
        assert (pixels == expected).all(1).mean() > 0.2 and (pixels == grey).all(1).mean() > 0.1, mode
