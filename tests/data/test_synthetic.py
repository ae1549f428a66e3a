"""Tests for the built-in synthetic localisation data set."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltpa.data.synthetic import (
    COLOURS,
    MAX_CLASSES,
    MIN_IMAGE_SIZE,
    TARGET_SHAPES,
    SyntheticLocalisation,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Generation is many small ops; on a shared 2-core machine intra-op threads that wait on a
    # busy core made them up to 100x slower. One thread is fast everywhere; restore it after.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ds32() -> SyntheticLocalisation:
    return SyntheticLocalisation(512, image_size=32, num_classes=10, seed=0, split="train")


@pytest.fixture(scope="module")
def ds_wide() -> SyntheticLocalisation:
    return SyntheticLocalisation(128, image_size=(50, 70), num_classes=20, seed=3, split="test")


def _pixel_of(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) continuous (x, y) -> row and column of the pixel holding each point."""
    return points[:, 1].floor().long(), points[:, 0].floor().long()


def test_same_seed_and_split_is_bit_identical():
    a = SyntheticLocalisation(64, image_size=32, seed=7, split="val")
    b = SyntheticLocalisation(64, image_size=32, seed=7, split="val")
    for name in ("images", "targets", "boxes", "masks", "parts", "part_visible", "distractor_masks"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_different_split_or_seed_gives_different_images():
    base = SyntheticLocalisation(64, image_size=32, seed=7, split="train")
    for other in (
        SyntheticLocalisation(64, image_size=32, seed=7, split="val"),
        SyntheticLocalisation(64, image_size=32, seed=8, split="train"),
    ):
        assert not torch.equal(base.images, other.images)
        # No image of one stream reappears in the other.
        seen = {bytes(img.numpy().tobytes()) for img in base.images}
        assert not any(bytes(img.numpy().tobytes()) in seen for img in other.images)


def test_global_rng_state_is_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    SyntheticLocalisation(16, image_size=32)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("image_size, hw", [(32, (32, 32)), (80, (80, 80)), ((50, 70), (50, 70))])
def test_shapes_and_dtypes(image_size, hw):
    n, k = 12, 10
    ds = SyntheticLocalisation(n, image_size=image_size, num_classes=k)
    h, w = hw
    p = len(ds.part_names)
    assert ds.image_size == hw and ds.num_classes == k and len(ds) == n
    assert p >= 2 and ds.part_names[:2] == ("head", "tail")
    expected = {
        "images": ((n, 3, h, w), torch.uint8),
        "targets": ((n,), torch.int64),
        "boxes": ((n, 4), torch.float32),
        "masks": ((n, h, w), torch.bool),
        "parts": ((n, p, 2), torch.float32),
        "part_visible": ((n, p), torch.bool),
        "distractor_masks": ((n, h, w), torch.bool),
    }
    for name, (shape, dtype) in expected.items():
        t = getattr(ds, name)
        assert tuple(t.shape) == shape and t.dtype == dtype, name
    assert int(ds.targets.min()) >= 0 and int(ds.targets.max()) < k


def test_getitem_returns_the_documented_dict(ds32):
    item = ds32[5]
    assert set(item) == {"image", "target", "box", "mask", "parts", "part_visible"}
    assert torch.equal(item["image"], ds32.images[5])
    assert item["target"].dtype == torch.int64 and item["target"].ndim == 0
    assert int(item["target"]) == int(ds32.targets[5])
    assert torch.equal(ds32[-1]["mask"], ds32.masks[-1])
    with pytest.raises(IndexError, match="512"):
        ds32[512]


def test_mask_equals_drawn_pixels_on_plain_background():
    ds = SyntheticLocalisation(64, image_size=32, num_distractors=0, clutter=False, seed=2)
    background = ds.images[:, :, :1, :1]  # the target never reaches a corner
    drawn = (ds.images != background).any(1)
    assert torch.equal(drawn, ds.masks)
    assert not ds.distractor_masks.any()


def test_mask_pixels_show_only_body_colour_and_white_head(ds32):
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    for i in range(64):
        pixels = ds32.images[i][:, ds32.masks[i]].T  # (M, 3)
        colours = pixels.unique(dim=0)
        white = colours.min(1).values >= 230
        assert white.sum() == 1 and len(colours) == 2, f"sample {i}: {colours.tolist()}"
        body = colours[~white][0].float()
        expected = ds32.class_names[int(ds32.targets[i])].split("-")[0]
        assert list(COLOURS)[int((palette - body).norm(dim=1).argmin())] == expected


def test_white_head_marks_the_head_and_nothing_else(ds32):
    white = (ds32.images >= 225).all(1)  # (N, H, W)
    assert not (white & ~ds32.masks).any(), "white pixels outside the target would be a second 'head'"
    rows = torch.arange(len(ds32))
    hr, hc = _pixel_of(ds32.parts[:, 0])
    tr, tc = _pixel_of(ds32.parts[:, 1])
    assert white[rows, hr, hc].all()
    assert not white[rows, tr, tc].any()


def test_box_is_tight_box_of_mask(ds32, ds_wide):
    for ds in (ds32, ds_wide):
        for i in range(0, len(ds), 7):
            ys, xs = ds.masks[i].nonzero(as_tuple=True)
            tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            assert torch.equal(ds.boxes[i], tight), f"sample {i}: {ds.boxes[i].tolist()} vs {tight.tolist()}"


@pytest.mark.parametrize("image_size", [MIN_IMAGE_SIZE, 32, 80, (50, 70)])
def test_parts_lie_on_the_target(image_size):
    ds = SyntheticLocalisation(200, image_size=image_size)
    rows = torch.arange(len(ds))
    assert ds.part_visible.all()
    for p in range(len(ds.part_names)):
        pts = ds.parts[:, p]
        r, c = _pixel_of(pts)
        assert ds.masks[rows, r, c].all(), f"part {ds.part_names[p]} off the mask"
        assert ((pts >= ds.boxes[:, :2]) & (pts <= ds.boxes[:, 2:])).all()


def test_targets_are_balanced_and_named():
    ds = SyntheticLocalisation(1000, image_size=16, num_classes=7, num_distractors=0)
    counts = torch.bincount(ds.targets, minlength=7)
    assert int(counts.max() - counts.min()) <= 1
    assert len(ds.class_names) == 7 and len(set(ds.class_names)) == 7
    assert ds.class_names[0] == f"{next(iter(COLOURS))}-{TARGET_SHAPES[0]}"
    # Consecutive labels are not ordered: the balanced labels are shuffled.
    assert not torch.equal(ds.targets[:7], torch.arange(7))


@pytest.mark.parametrize("num_classes", [2, MAX_CLASSES])
def test_supported_class_counts(num_classes):
    ds = SyntheticLocalisation(2 * num_classes, image_size=16, num_classes=num_classes)
    assert torch.equal(ds.targets.sort().values, torch.arange(num_classes).repeat_interleave(2))
    assert len(set(ds.class_names)) == num_classes


def test_distractors_exist_and_never_touch_the_target(ds32, ds_wide):
    for ds in (ds32, ds_wide):
        grown = F.max_pool2d(ds.masks[:, None].float(), 3, stride=1, padding=1)[:, 0].bool()
        assert not (grown & ds.distractor_masks).any()
        assert ds.distractor_masks.flatten(1).any(1).float().mean() > 0.9
        # Distractors are never white, so they cannot carry a head marker.
        pixels = ds.images.permute(0, 2, 3, 1)[ds.distractor_masks]
        assert (pixels.min(1).values < 200).all()


def test_num_distractors_zero_draws_none():
    ds = SyntheticLocalisation(32, image_size=32, num_distractors=0)
    assert not ds.distractor_masks.any()


def test_object_size_scales_with_image_size():
    fractions = []
    for size in (32, 80):
        ds = SyntheticLocalisation(200, image_size=size, num_distractors=0, clutter=False)
        extent = (ds.boxes[:, 2:] - ds.boxes[:, :2]).max(1).values / size
        assert extent.min() >= 0.15 and extent.max() <= 0.5, (extent.min(), extent.max())
        fractions.append(ds.masks.flatten(1).float().mean(1).mean())
    assert abs(fractions[0] - fractions[1]) / fractions[1] < 0.15


def _colour_histograms(ds: SyntheticLocalisation, bins: int = 4) -> torch.Tensor:
    q = ds.images.long() * bins // 256
    idx = ((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]).flatten(1)
    hist = torch.zeros(len(ds), bins**3).scatter_add_(1, idx, torch.ones(idx.shape))
    return hist / idx.shape[1]


def test_global_colour_histogram_barely_beats_chance():
    # A linear probe on global colour can at best learn the target's colour (1 of 2 for 10
    # classes, i.e. <= 20% accuracy); only the target's shape resolves the class.
    train = SyntheticLocalisation(1500, image_size=32, num_classes=10, split="train")
    val = SyntheticLocalisation(600, image_size=32, num_classes=10, split="val")
    x, xv = _colour_histograms(train), _colour_histograms(val)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xv = (x - mean) / std, (xv - mean) / std
    x, xv = F.pad(x, (0, 1), value=1.0), F.pad(xv, (0, 1), value=1.0)  # bias column
    # Ridge regression onto one-hot labels: a linear classifier in closed form, no optimiser.
    onehot = F.one_hot(train.targets, 10).float()
    weight = torch.linalg.solve(x.T @ x + 1.0 * torch.eye(x.shape[1]), x.T @ onehot)
    train_accuracy = ((x @ weight).argmax(1) == train.targets).float().mean()
    accuracy = ((xv @ weight).argmax(1) == val.targets).float().mean()
    assert train_accuracy > 0.12, "the probe should at least pick up the target colour a little"
    assert accuracy < 0.25, f"global colour alone reaches {accuracy:.2f}"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=8), r"image_size.*\[16, 1024\].*got 8"),
        (dict(image_size=(32, 12)), r"got \(32, 12\)"),
        (dict(image_size=(32,)), r"\(H, W\) pair.*1 entries"),
        (dict(num_classes=1), r"num_classes must be in \[2, 20\], got 1"),
        (dict(num_classes=MAX_CLASSES + 1), r"got 21"),
        (dict(num_samples=0), r"num_samples must be >= 1, got 0"),
        (dict(split=""), r"non-empty string"),
        (dict(num_distractors=(3, 1)), r"lo <= hi <= 8.*\(3, 1\)"),
        (dict(num_distractors=9), r"got 9 \(read as \(9, 9\)\)"),
    ],
)
def test_bad_arguments_raise_value_error_with_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticLocalisation(**{"num_samples": 4, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_samples=True),
        dict(num_samples=4, seed="0"),
        dict(num_samples=4, clutter=1),
        dict(num_samples=4, image_size=32.0),
        dict(num_samples=4, image_size=(32, "32")),
    ],
)
def test_wrong_types_raise_type_error(kwargs):
    with pytest.raises(TypeError, match="must be"):
        SyntheticLocalisation(**kwargs)
