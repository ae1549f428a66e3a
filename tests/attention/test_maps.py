"""Exact placement of feature-resolution maps on the image, and side-effect-free collection."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ltpa
from ltpa.attention.maps import AttentionMaps, compute_maps, place_on_image
from ltpa.models.output import AttentionOutput, LevelInfo


def _level(stride: float, offset: float | None = None) -> LevelInfo:
    return LevelInfo("conv", 8, stride, stride / 2 if offset is None else offset)


def _reference_axis(size_out: int, size_in: int, level: LevelInfo, mode: str) -> torch.Tensor:
    """(size_out, size_in) float64 placement matrix, written from the documented rule with loops:
    weights per pixel, each cell's column scaled to sum to 1, an unreached cell on the pixel under
    its centre."""
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    for x in range(size_out):
        u = min(max((x + 0.5 - level.offset) / level.stride, 0.0), size_in - 1.0)
        if mode == "nearest":
            j = min(range(size_in), key=lambda k: (abs(level.offset + k * level.stride - (x + 0.5)), -k))
            weights[x, j] = 1.0
        else:
            for j in range(size_in):
                weights[x, j] = max(0.0, 1.0 - abs(u - j))
    for j in range(size_in):
        total = float(weights[:, j].sum())
        if total > 0:
            weights[:, j] /= total
        else:
            pixel = min(max(math.floor(level.offset + j * level.stride), 0), size_out - 1)
            weights[pixel, j] = 1.0
    return weights


def _reference(maps: torch.Tensor, level: LevelInfo, size: tuple[int, int], mode: str) -> torch.Tensor:
    rows = _reference_axis(size[0], maps.shape[-2], level, mode)
    columns = _reference_axis(size[1], maps.shape[-1], level, mode)
    return (rows @ maps.double() @ columns.T).to(maps.dtype)


def _grid_sample_bilinear(maps: torch.Tensor, level: LevelInfo, size: tuple[int, int]) -> torch.Tensor:
    """Classic edge-clamped bilinear *values* with grid_sample: pixel centres in map coordinates."""
    h, w = maps.shape[-2:]
    ys = (torch.arange(size[0], dtype=torch.float64) + 0.5 - level.offset) / level.stride
    xs = (torch.arange(size[1], dtype=torch.float64) + 0.5 - level.offset) / level.stride
    gy = ys * 2 / max(h - 1, 1) - 1  # align_corners=True: -1 and 1 are the outer cell centres
    gx = xs * 2 / max(w - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    grid = grid[None].expand(maps.shape[0], -1, -1, -1).to(maps.dtype)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)


@pytest.mark.parametrize("stride", [2, 4, 5])
@pytest.mark.parametrize("cell", [0, 2, 3])
def test_one_hot_cell_lands_on_its_own_pixels(stride, cell):
    size = 4 * stride
    maps = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    maps[0, 0, cell, cell] = 1.0
    level = _level(stride)
    nearest = place_on_image(maps, level, (size, size), mode="nearest")[0, 0]
    expected = torch.zeros(size, size, dtype=torch.float64)
    block = slice(cell * stride, (cell + 1) * stride)
    expected[block, block] = 1.0 / stride**2  # the cell's unit mass spread over its block
    torch.testing.assert_close(nearest, expected, rtol=0, atol=1e-15)

    bilinear = place_on_image(maps, level, (size, size))[0, 0]
    assert bilinear.sum().item() == pytest.approx(1.0, abs=1e-12)
    peak_rows, peak_cols = torch.nonzero(bilinear == bilinear.max(), as_tuple=True)
    assert peak_rows.min() >= cell * stride and peak_rows.max() < (cell + 1) * stride
    assert peak_cols.min() >= cell * stride and peak_cols.max() < (cell + 1) * stride


def test_two_by_two_map_stride_16_is_the_clamped_interpolation_over_stride_squared():
    values = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]], dtype=torch.float64)
    placed = place_on_image(values, _level(16), (32, 32))[0, 0] * 256
    # Offset = stride / 2 on n * stride pixels: every cell's footprint weighs 16 per axis, so
    # the mass per pixel is the classic bilinear value / 16**2, edge value held past centres 8, 24.
    assert torch.all(placed[:8, :8] == 1.0) and torch.all(placed[:8, 24:] == 2.0)
    assert torch.all(placed[24:, :8] == 3.0) and torch.all(placed[24:, 24:] == 5.0)
    # Pixel 8 has centre 8.5, 1/32 of a cell past centre 8.
    assert placed[0, 8].item() == pytest.approx(1.0 * 31 / 32 + 2.0 / 32)
    assert placed[0, 15].item() + placed[0, 16].item() == pytest.approx(1.0 + 2.0)
    assert placed.sum().item() == pytest.approx(256 * values.sum().item())
    nearest = place_on_image(values, _level(16), (32, 32), mode="nearest")
    torch.testing.assert_close(nearest * 256, values.repeat_interleave(16, -1).repeat_interleave(16, -2))


def test_cells_centred_on_pixel_corner_keep_their_mass_at_the_edges():
    # Offset 0.5 (ResNets): cell 0 is centred on pixel 0, so half its bilinear footprint lies
    # outside the image; the last cell (centre 28.5) also owns pixels 29-31 beyond its centre.
    level = _level(4, 0.5)
    first = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    last = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    first[0, 0, 0, 0] = last[0, 0, 7, 7] = 1.0
    top_left = place_on_image(first, level, (32, 32))[0, 0]
    bottom_right = place_on_image(last, level, (32, 32))[0, 0]
    assert top_left.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert bottom_right.sum().item() == pytest.approx(1.0, abs=1e-12)
    # Clipped footprint, renormalised: weights 1, .75, .5, .25 (sum 2.5) per axis on pixels 0-3.
    row = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64) / 2.5
    torch.testing.assert_close(top_left[:4, :4], row[:, None] * row[None, :])
    assert top_left[4:].abs().sum() == 0 and top_left[:, 4:].abs().sum() == 0
    # Pixels 25-27 ramp up to the centre, 28-31 hold the edge weight 1 (sum 5.5 per axis).
    row = torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64) / 5.5
    torch.testing.assert_close(bottom_right[25:, 25:], row[:, None] * row[None, :])
    assert bottom_right[:25].abs().sum() == 0 and bottom_right[:, :25].abs().sum() == 0


def test_fifteen_cells_stride_two_are_not_stretched_over_32_pixels():
    maps = torch.rand(2, 1, 15, 15, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    placed = place_on_image(maps, _level(2, 1.0), (32, 32), mode="nearest")
    # Cells 0-13 own 2 pixels per axis; cell 14 also takes pixels 30-31 beyond its centre (4).
    per_axis = torch.tensor([2.0] * 14 + [4.0], dtype=torch.float64)
    blocks = maps / (per_axis[:, None] * per_axis[None, :])
    blocks = blocks.repeat_interleave(2, -1).repeat_interleave(2, -2)
    expected = F.pad(blocks, (0, 2, 0, 2), mode="replicate")
    torch.testing.assert_close(placed, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(placed.sum((2, 3)), maps.sum((2, 3)))
    stretched = F.interpolate(maps, size=(32, 32), mode="nearest")
    assert not torch.allclose(placed * placed.numel() / maps.numel(), stretched)


@pytest.mark.parametrize(
    ("map_size", "image_size", "stride", "offset"),
    [((5, 7), (23, 41), 5.5, 2.25), ((3, 1), (10, 6), 3.0, 1.5), ((1, 1), (4, 9), 8.0, 4.0),
     ((8, 6), (16, 12), 2.0, 1.0), ((6, 9), (5, 7), 0.75, 0.3), ((9, 12), (3, 2), 0.25, 0.1),
     ((4, 4), (32, 32), 4.0, -20.0), ((3, 5), (31, 37), 8.0, 0.5)],
)
def test_bilinear_and_nearest_match_the_documented_rule_on_any_geometry(map_size, image_size, stride, offset):
    maps = torch.randn(2, 1, *map_size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    level = _level(stride, offset)
    for mode in ("bilinear", "nearest"):
        placed = place_on_image(maps, level, image_size, mode=mode)
        assert placed.shape == (2, 1, *image_size)
        torch.testing.assert_close(placed, _reference(maps, level, image_size, mode), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(placed.sum((2, 3)), maps.sum((2, 3)), rtol=1e-12, atol=1e-12)


def test_bilinear_weights_are_grid_sample_interpolation_rescaled_per_cell():
    level, size = _level(5.5, 2.25), (23, 41)
    maps = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    # Each cell's footprint weight = the interpolated values of its one-hot map, summed.
    eye = torch.eye(35, dtype=torch.float64).view(35, 1, 5, 7)
    weight = _grid_sample_bilinear(eye, level, size).sum((1, 2, 3)).view(1, 1, 5, 7)
    expected = _grid_sample_bilinear(maps / weight, level, size)
    torch.testing.assert_close(place_on_image(maps, level, size), expected, rtol=1e-10, atol=1e-12)


def test_mass_is_kept_and_dtype_is_kept():
    maps = torch.rand(3, 1, 4, 5, generator=torch.Generator().manual_seed(2))
    placed = place_on_image(maps, _level(4, 0.5), (19, 21))
    assert placed.dtype == torch.float32 and placed.min() >= 0
    torch.testing.assert_close(placed.sum((2, 3)), maps.sum((2, 3)), rtol=1e-5, atol=1e-6)
    assert place_on_image(maps.double(), _level(4), (19, 21)).dtype == torch.float64


# Models that take a width multiplier are built tiny; timm architectures come in fixed sizes.
_TINY = dict(width=0.0625)
_TINY_FOR = {"timm_att": dict(backbone="test_resnet")}
_MODEL_CACHE: dict[str, nn.Module] = {}


def _model_levels(name: str, size: int) -> list[tuple[LevelInfo, tuple[int, int]]]:
    """(level, map size) of every attended level of ``name`` on a ``size`` x ``size`` image."""
    if name not in _MODEL_CACHE:
        _MODEL_CACHE[name] = ltpa.create_model(name, num_classes=3, **_TINY_FOR.get(name, _TINY)).eval()
    with torch.no_grad():
        out = _MODEL_CACHE[name](torch.zeros(1, 3, size, size))
    return [(level, tuple(m.shape[-2:])) for level, m in zip(out.levels, out.maps)]


def _footprint(index: int, count: int, level: LevelInfo, size: int) -> torch.Tensor:
    """Bool (size,): pixels whose centre is less than a stride from the cell's centre, plus
    for the outermost cells every pixel beyond their centre up to the image edge."""
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    centre = level.offset + index * level.stride
    inside = (centres - centre).abs() < level.stride
    if index == 0:
        inside |= centres < centre
    if index == count - 1:
        inside |= centres > centre
    return inside


@pytest.mark.parametrize("size", [32, 33, 80])
@pytest.mark.parametrize("name", ltpa.list_models())
def test_every_model_level_keeps_each_cells_mass_on_its_footprint(name, size):
    levels = _model_levels(name, size)
    if not levels:
        assert name in ("vgg", "vgg_noatt", "preact_resnet"), f"{name} reports no attended level"
        return
    for level, (h, w) in levels:
        cells = {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2)}
        for i, j in sorted(cells):
            one_hot = torch.zeros(1, 1, h, w, dtype=torch.float64)
            one_hot[0, 0, i, j] = 1.0
            placed = place_on_image(one_hot, level, (size, size))[0, 0]
            where = f"{name} {level} cell ({i}, {j}) of {h}x{w} on {size} px"
            assert placed.sum().item() == pytest.approx(1.0, abs=1e-12), where
            assert placed.min() >= 0, where
            allowed = _footprint(i, h, level, size)[:, None] & _footprint(j, w, level, size)[None, :]
            assert not placed[~allowed].any(), where
            centre_y, centre_x = level.offset + i * level.stride, level.offset + j * level.stride
            inside = all(0 <= c - level.stride and c + level.stride <= size for c in (centre_y, centre_x))
            if 0 < i < h - 1 and 0 < j < w - 1 and inside:
                # A footprint wholly inside the image is centred on the cell's receptive field.
                pixels = torch.arange(size, dtype=torch.float64) + 0.5
                assert (placed.sum(1) * pixels).sum().item() == pytest.approx(centre_y, abs=1e-9), where
                assert (placed.sum(0) * pixels).sum().item() == pytest.approx(centre_x, abs=1e-9), where
        shares = {(0, 0): 0.2, (h // 2, w // 2): 0.3, (h - 1, w - 1): 0.5}
        regions = {(i, j): _footprint(i, h, level, size)[:, None] & _footprint(j, w, level, size)[None, :]
                   for i, j in shares}
        if len(shares) == 3 and sum(regions.values()).max() == 1:  # three disjoint footprints
            # Corners and centre keep their own shares: no cell is favoured over another.
            three = torch.zeros(1, 1, h, w, dtype=torch.float64)
            for (i, j), share in shares.items():
                three[0, 0, i, j] = share
            placed = place_on_image(three, level, (size, size))[0, 0]
            for cell, share in shares.items():
                assert placed[regions[cell]].sum().item() == pytest.approx(share, abs=1e-12), \
                    f"{name} {level} cell {cell} on {size} px"
        maps = torch.rand(4, 1, h, w, generator=torch.Generator().manual_seed(size), dtype=torch.float64)
        maps = maps.flatten(1).softmax(1).view_as(maps)
        for mode in ("bilinear", "nearest"):
            placed = place_on_image(maps, level, (size, size), mode=mode)
            torch.testing.assert_close(placed.sum((2, 3)), torch.ones(4, 1, dtype=torch.float64),
                                       rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["vgg_att1", "vgg_att2", "vgg_att3", "vgg_gap"])
def test_mirror_symmetric_filters_give_mirrored_maps_at_every_level(name):
    """The VGG trunks and the placement favour no side: with filters symmetric in both axes, a
    mirrored image gives the mirrored map at every level, so a trained model's preference for one
    side of the object (README, "Where the misses land") is learned, not built in. (A ResNet's
    stride-2 convolutions sample cells centred on even pixels, a grid that is not its own mirror
    image; the placement follows that grid.)"""
    torch.manual_seed(0)
    model = ltpa.create_model(name, num_classes=3, **_TINY).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                w = module.weight
                module.weight.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)
    images = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    plain = compute_maps(model, images)
    for dims in ((-1,), (-2,)):
        mirrored = compute_maps(model, images.flip(dims))
        for level, a, b in zip(plain.levels, plain.upsampled, mirrored.upsampled):
            assert a.std() > 0.01 * a.mean(), f"{name} {level.name}: a flat map proves nothing"
            torch.testing.assert_close(b.flip(dims), a, rtol=1e-5, atol=1e-9, msg=f"{name} {level.name} {dims}")


def test_compute_maps_of_a_resnet_level_sums_to_one_per_image():
    torch.manual_seed(0)
    model = ltpa.create_model("rn_att2", num_classes=3, **_TINY)
    result = compute_maps(model, torch.randn(3, 3, 32, 32))
    for upsampled in result.upsampled:
        torch.testing.assert_close(upsampled.sum((2, 3)), torch.ones(3, 1), rtol=0, atol=1e-5)


def test_place_on_image_leaves_input_unchanged():
    maps = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    before = maps.clone()
    out = place_on_image(maps, _level(8), (32, 32))
    out.add_(1.0)  # writing to the result must not reach the input either
    assert torch.equal(maps, before)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((torch.zeros(1, 1, 2, 2, dtype=torch.long), _level(2), (4, 4)), TypeError),
        ((torch.zeros(1, 2, 2), _level(2), (4, 4)), ValueError),
        ((torch.zeros(1, 1, 2, 2), _level(2), (4,)), ValueError),
        ((torch.zeros(1, 1, 2, 2), _level(2), (0, 4)), ValueError),
        ((torch.zeros(1, 1, 2, 2), _level(0), (4, 4)), ValueError),
        ((torch.zeros(1, 1, 2, 2), "conv5", (4, 4)), TypeError),
    ],
)
def test_place_on_image_rejects_bad_input(args, error):
    with pytest.raises(error):
        place_on_image(*args)


def test_place_on_image_rejects_unknown_mode():
    with pytest.raises(ValueError, match="bilinear"):
        place_on_image(torch.zeros(1, 1, 2, 2), _level(2), (4, 4), mode="bicubic")


class FakeAttentionModel(nn.Module):
    """One attended level at stride 4: softmax over a 1x1-conv score, BatchNorm to expose mode."""

    def __init__(self, with_maps: bool = True, fail: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=4, stride=4)
        self.bn = nn.BatchNorm2d(4)
        self.score = nn.Conv2d(4, 1, kernel_size=1)
        self.fc = nn.Linear(4, 3)
        self.with_maps, self.fail = with_maps, fail
        self.seen_training: list[bool] = []
        self.seen_grad: list[bool] = []

    def forward(self, images: torch.Tensor) -> AttentionOutput:
        self.seen_training.append(self.training)
        self.seen_grad.append(torch.is_grad_enabled())
        if self.fail:
            raise RuntimeError("forward failed")
        features = self.bn(self.conv(images))
        scores = self.score(features)
        maps = scores.flatten(1).softmax(1).view_as(scores)
        pooled = (features * maps).sum((2, 3))
        if not self.with_maps:
            return AttentionOutput(self.fc(pooled), (), None, (), pooled, "none")
        level = LevelInfo("conv", 4, 4, 2.0)
        return AttentionOutput(self.fc(pooled), (maps,), (scores,), (level,), pooled, "softmax")


def _images(n: int = 5, size: tuple[int, int] = (16, 24)) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(4))


def test_compute_maps_shapes_and_batching():
    model = FakeAttentionModel()
    images = _images()
    result = compute_maps(model, images, batch_size=2)
    assert isinstance(result, AttentionMaps)
    assert [m.shape for m in result.maps] == [(5, 1, 4, 6)]
    assert [m.shape for m in result.upsampled] == [(5, 1, 16, 24)]
    assert result.logits.shape == (5, 3)
    assert torch.equal(result.predictions, result.logits.argmax(1))
    assert result.levels == (LevelInfo("conv", 4, 4, 2.0),)
    assert result.normalisation == "softmax"
    assert all(t.device.type == "cpu" for t in (*result.maps, *result.upsampled, result.logits))
    torch.testing.assert_close(result.maps[0].sum((2, 3)), torch.ones(5, 1))
    torch.testing.assert_close(result.upsampled[0],
                               place_on_image(result.maps[0], result.levels[0], (16, 24)))
    whole = compute_maps(model, images, batch_size=64)
    torch.testing.assert_close(whole.maps[0], result.maps[0])
    torch.testing.assert_close(whole.logits, result.logits)
    assert model.seen_training and not any(model.seen_training)


@pytest.mark.parametrize("training", [True, False])
def test_compute_maps_restores_model_mode(training):
    model = FakeAttentionModel().train(training)
    running_mean = model.bn.running_mean.clone()
    compute_maps(model, _images(3), batch_size=2)
    assert all(module.training == training for module in model.modules())
    assert model.seen_training == [False, False]
    assert torch.equal(model.bn.running_mean, running_mean)  # BatchNorm ran in eval mode


def test_compute_maps_restores_mixed_submodule_modes():
    model = FakeAttentionModel().train()
    model.bn.eval()  # e.g. frozen BatchNorm during fine-tuning
    compute_maps(model, _images(2))
    assert model.training and model.conv.training and not model.bn.training


@pytest.mark.parametrize("training", [True, False])
def test_compute_maps_restores_mode_when_forward_raises(training):
    model = FakeAttentionModel(fail=True).train(training)
    with pytest.raises(RuntimeError, match="forward failed"):
        compute_maps(model, _images(2))
    assert all(module.training == training for module in model.modules())
    assert torch.is_grad_enabled()


def test_compute_maps_leaves_no_gradient_bookkeeping():
    model = FakeAttentionModel()
    result = compute_maps(model, _images(3))
    assert model.seen_grad == [False]
    assert torch.is_grad_enabled()
    for tensor in (*result.maps, *result.upsampled, result.logits):
        assert not tensor.requires_grad and tensor.grad_fn is None
    assert all(p.grad is None for p in model.parameters())


def test_compute_maps_leaves_images_unchanged():
    images = _images(3)
    before = images.clone()
    compute_maps(FakeAttentionModel(), images)
    assert torch.equal(images, before)


def test_compute_maps_protects_images_from_a_model_working_in_place():
    class InPlace(FakeAttentionModel):
        def forward(self, images):
            return super().forward(images.mul_(0.0))

    images = _images(3)
    before = images.clone()
    compute_maps(InPlace(), images)
    assert torch.equal(images, before)


def test_compute_maps_rejects_a_model_without_maps():
    model = FakeAttentionModel(with_maps=False).train()
    with pytest.raises(ValueError, match="no attention maps"):
        compute_maps(model, _images(2))
    assert model.training


def test_compute_maps_rejects_other_outputs_and_bad_arguments():
    class Plain(nn.Module):
        def forward(self, images):
            return images.mean((2, 3))

    with pytest.raises(TypeError, match="AttentionOutput"):
        compute_maps(Plain(), _images(2))
    with pytest.raises(ValueError, match="batch_size"):
        compute_maps(FakeAttentionModel(), _images(2), batch_size=0)
    with pytest.raises(ValueError, match="images"):
        compute_maps(FakeAttentionModel(), torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="images"):
        compute_maps(FakeAttentionModel(), torch.zeros(3, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compute_maps_runs_on_the_model_device_and_returns_cpu_tensors():
    model = FakeAttentionModel().cuda()
    images = _images(3)
    result = compute_maps(model, images, batch_size=2)
    assert all(t.device.type == "cpu" for t in (*result.maps, *result.upsampled, result.logits))
    expected = compute_maps(model.cpu(), images)
    torch.testing.assert_close(result.maps[0], expected.maps[0], atol=1e-4, rtol=1e-4)
