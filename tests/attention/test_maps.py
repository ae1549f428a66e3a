"""Exact placement of feature-resolution maps on the image, and side-effect-free collection."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltpa.attention.maps import AttentionMaps, compute_maps, place_on_image
from ltpa.models.output import AttentionOutput, LevelInfo


def _level(stride: float, offset: float | None = None) -> LevelInfo:
    return LevelInfo("conv", 8, stride, stride / 2 if offset is None else offset)


def _reference_bilinear(
    maps: torch.Tensor, level: LevelInfo, size: tuple[int, int]
) -> torch.Tensor:
    """Independent implementation with grid_sample: pixel centres in normalised map coordinates."""
    h, w = maps.shape[-2:]
    ys = (torch.arange(size[0], dtype=torch.float64) + 0.5 - level.offset) / level.stride
    xs = (torch.arange(size[1], dtype=torch.float64) + 0.5 - level.offset) / level.stride
    gy = ys * 2 / max(h - 1, 1) - 1  # align_corners=True: -1 and 1 are the outer cell centres
    gx = xs * 2 / max(w - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    grid = grid[None].expand(maps.shape[0], -1, -1, -1).to(maps.dtype)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _reference_nearest(maps: torch.Tensor, level: LevelInfo, size: tuple[int, int]) -> torch.Tensor:
    """Loop version: each pixel takes the cell whose centre is nearest to the pixel centre."""
    h, w = maps.shape[-2:]
    out = torch.empty(*maps.shape[:2], *size, dtype=maps.dtype)
    for y in range(size[0]):
        j = min(range(h), key=lambda k: (abs(level.offset + k * level.stride - (y + 0.5)), -k))
        for x in range(size[1]):
            i = min(range(w), key=lambda k: (abs(level.offset + k * level.stride - (x + 0.5)), -k))
            out[..., y, x] = maps[..., j, i]
    return out


@pytest.mark.parametrize("stride", [2, 4, 5])
@pytest.mark.parametrize("cell", [0, 2, 3])
def test_one_hot_cell_peaks_on_its_own_pixels(stride, cell):
    size = 4 * stride
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, cell, cell] = 1.0
    level = _level(stride)
    nearest = place_on_image(maps, level, (size, size), mode="nearest")[0, 0]
    expected = torch.zeros(size, size)
    block = slice(cell * stride, (cell + 1) * stride)
    expected[block, block] = 1.0
    assert torch.equal(nearest, expected)

    bilinear = place_on_image(maps, level, (size, size))[0, 0]
    peak_rows, peak_cols = torch.nonzero(bilinear == bilinear.max(), as_tuple=True)
    assert peak_rows.min() >= cell * stride and peak_rows.max() < (cell + 1) * stride
    assert peak_cols.min() >= cell * stride and peak_cols.max() < (cell + 1) * stride


def test_two_by_two_map_stride_16_reproduces_cell_values():
    values = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])
    placed = place_on_image(values, _level(16), (32, 32))[0, 0]
    # Beyond the outermost centres (8 and 24) the edge value is repeated exactly.
    assert torch.all(placed[:8, :8] == 1.0) and torch.all(placed[:8, 24:] == 2.0)
    assert torch.all(placed[24:, :8] == 3.0) and torch.all(placed[24:, 24:] == 5.0)
    # Pixel 8 has centre 8.5, 1/32 of a cell past centre 8.
    assert placed[0, 8].item() == pytest.approx(1.0 * 31 / 32 + 2.0 / 32)
    # Symmetric about the middle line x = 16 between the two centres.
    assert placed[0, 15].item() + placed[0, 16].item() == pytest.approx(1.0 + 2.0)
    # With cell centres on pixel centres (offset 8.5), those pixels hold the values exactly.
    shifted = place_on_image(values, _level(16, 8.5), (32, 32))[0, 0]
    assert [shifted[8, 8].item(), shifted[8, 24].item(), shifted[24, 8].item(),
            shifted[24, 24].item()] == [1.0, 2.0, 3.0, 5.0]
    nearest = place_on_image(values, _level(16), (32, 32), mode="nearest")
    assert torch.equal(nearest, values.repeat_interleave(16, -1).repeat_interleave(16, -2))


def test_fifteen_cells_stride_two_are_not_stretched_over_32_pixels():
    maps = torch.rand(2, 1, 15, 15, generator=torch.Generator().manual_seed(0))
    placed = place_on_image(maps, _level(2, 1.0), (32, 32), mode="nearest")
    blocks = maps.repeat_interleave(2, -1).repeat_interleave(2, -2)  # (2, 1, 30, 30)
    expected = F.pad(blocks, (0, 2, 0, 2), mode="replicate")  # last two pixels clamp to cell 14
    assert torch.equal(placed, expected)
    stretched = F.interpolate(maps, size=(32, 32), mode="nearest")
    assert not torch.equal(placed, stretched)


@pytest.mark.parametrize(
    ("map_size", "image_size", "stride", "offset"),
    [((5, 7), (23, 41), 5.5, 2.25), ((3, 1), (10, 6), 3.0, 1.5), ((1, 1), (4, 9), 8.0, 4.0),
     ((8, 6), (16, 12), 2.0, 1.0), ((6, 9), (5, 7), 0.75, 0.3)],
)
def test_bilinear_and_nearest_match_independent_references_on_non_square_inputs(
    map_size, image_size, stride, offset
):
    maps = torch.randn(2, 1, *map_size, generator=torch.Generator().manual_seed(1))
    level = _level(stride, offset)
    bilinear = place_on_image(maps, level, image_size)
    assert bilinear.shape == (2, 1, *image_size)
    torch.testing.assert_close(bilinear, _reference_bilinear(maps, level, image_size),
                               atol=1e-5, rtol=1e-5)
    nearest = place_on_image(maps, level, image_size, mode="nearest")
    assert torch.equal(nearest, _reference_nearest(maps, level, image_size))


def test_values_stay_within_the_map_range_and_dtype_is_kept():
    maps = torch.rand(3, 1, 4, 5, generator=torch.Generator().manual_seed(2))
    placed = place_on_image(maps, _level(4), (19, 21))
    assert placed.dtype == torch.float32
    assert placed.min() >= maps.min() and placed.max() <= maps.max()
    assert place_on_image(maps.double(), _level(4), (19, 21)).dtype == torch.float64


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
