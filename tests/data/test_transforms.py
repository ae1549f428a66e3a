import math

import numpy as np
import pytest
import torch
from PIL import Image

from ltpa.data.transforms import (CropParams, ZCAWhitening, box_crop_params, crop_and_resize,
                                  resize_short_side_crop_params, squash_params, transform_boxes, transform_points)


def _marked_image(height, width, points):
    """Black RGB image with pure red pixels at integer (column, row) positions."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[..., 2] = 40  # a little blue everywhere, so red alone marks the pixels
    for x, y in points:
        array[y, x] = (255, 0, 0)
    return Image.fromarray(array)


def _is_reddest(image, col, row):
    """The pixel is (one of) the reddest; a point exactly on a pixel border ties two pixels,
    and PIL's 8-bit fixed-point weights may then differ by one level."""
    red = np.asarray(image, dtype=np.int32)[..., 0]
    return red[row, col] >= red.max() - 1 and red.max() > 40


@pytest.mark.parametrize("height, width, size, mode", [
    (60, 90, 80, "resize_crop"),     # upscale, landscape
    (150, 100, 80, "resize_crop"),   # downscale, portrait
    (300, 400, 224, "resize_crop"),
    (375, 500, 448, "resize_crop"),
    (120, 90, 80, "squash"),
    (200, 260, 80, "bbox_crop"),
])
def test_keypoint_lands_on_its_coloured_pixel(height, width, size, mode):
    gen = torch.Generator().manual_seed(height * width)
    for _ in range(3):
        x = int(torch.randint(width // 4, 3 * width // 4, (), generator=gen))
        y = int(torch.randint(height // 4, 3 * height // 4, (), generator=gen))
        image = _marked_image(height, width, [(x, y)])
        if mode == "resize_crop":
            params = resize_short_side_crop_params(height, width, size)
        elif mode == "squash":
            params = squash_params(height, width, size)
        else:
            params = box_crop_params(height, width, (x - 30, y - 20, x + 25, y + 10), size, margin=0.2)
        out = crop_and_resize(image, params)
        assert out.size == (size, size)
        point = transform_points(torch.tensor([[x + 0.5, y + 0.5]]), params)[0]
        u, v = point.tolist()
        if not (0 <= u < size and 0 <= v < size):
            continue  # cropped away
        assert _is_reddest(out, math.floor(u), math.floor(v))


def test_two_times_downscale_maps_a_block_centre_to_its_pure_pixel():
    # The antialiasing filter of a 2x bilinear downscale reaches 2 source pixels from an output
    # pixel's centre, so a 4x4 block centred there yields exactly one pure red output pixel.
    image = _marked_image(160, 160, [(x, y) for x in range(39, 43) for y in range(61, 65)])
    params = resize_short_side_crop_params(160, 160, 80)
    out = np.asarray(crop_and_resize(image, params))
    u, v = transform_points(torch.tensor([[41.0, 63.0]]), params)[0].tolist()  # block centre
    assert (u, v) == (20.5, 31.5)  # the centre of output pixel (20, 31)
    assert tuple(out[31, 20]) == (255, 0, 0)
    assert (out[..., 0] == 255).sum() == 1


def test_resize_crop_never_squashes_and_centres():
    params = resize_short_side_crop_params(100, 300, 80)
    assert params == CropParams(left=100, top=0, width=100, height=100, out_width=80, out_height=80)
    assert params.scale_x == params.scale_y


def test_random_crop_stays_inside_and_follows_the_generator():
    a = [resize_short_side_crop_params(50, 200, 32, random=True, generator=torch.Generator().manual_seed(3))
         for _ in range(2)]
    assert a[0] == a[1] and 0 <= a[0].left <= 150 and a[0].top == 0


def test_box_crop_is_square_contains_the_margin_and_shifts_inside():
    params = box_crop_params(300, 400, (10.0, 20.0, 110.0, 70.0), 80, margin=0.1)
    assert params.width == params.height == 120  # 100 px wide box + 10% each side
    assert params.left == 0 and params.top >= 0  # shifted inside instead of padding
    box = transform_boxes(torch.tensor([10.0, 20.0, 110.0, 70.0]), params)
    assert (box >= 0).all() and (box <= 80).all()


def test_box_crop_that_cannot_fit_pads_with_black():
    params = box_crop_params(40, 200, (0.0, 0.0, 200.0, 40.0), 50, margin=0.0)
    assert params.width == 200 and params.top < 0
    out = np.asarray(crop_and_resize(Image.new("RGB", (200, 40), (200, 200, 200)), params))
    assert out[0].max() == 0 and out[25, 25].min() == 200


def test_box_crop_rejects_empty_boxes_and_negative_margins():
    with pytest.raises(ValueError, match="no area"):
        box_crop_params(10, 10, (5, 5, 5, 8), 8)
    with pytest.raises(ValueError, match="margin"):
        box_crop_params(10, 10, (1, 1, 5, 8), 8, margin=-0.1)


def test_boxes_are_clipped_and_nan_points_stay_nan():
    params = CropParams(10, 10, 20, 20, 40, 40)
    box = transform_boxes(torch.tensor([[0.0, 15.0, 25.0, 50.0]]), params)
    assert box.tolist() == [[0.0, 10.0, 30.0, 40.0]]
    unclipped = transform_boxes(torch.tensor([[0.0, 15.0, 25.0, 50.0]]), params, clip=False)
    assert unclipped.tolist() == [[-20.0, 10.0, 30.0, 80.0]]
    assert torch.isnan(transform_points(torch.tensor([[float("nan"), 1.0]]), params)[0, 0])


def _correlated_images(n=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 4, 4, generator=gen)  # shared across channels: strongly correlated
    noise = 0.2 * torch.rand(n, 3, 4, 4, generator=gen)
    return ((base + noise) / 1.2 * 255).round().to(torch.uint8)


def test_zca_whitens_train_images_to_identity_covariance():
    images = _correlated_images()
    zca = ZCAWhitening.fit(images, epsilon=1e-6)
    out = zca.apply(images.float() / 255).reshape(len(images), -1).double()
    cov = torch.cov(out.T)
    assert out.mean(0).abs().max() < 1e-4
    assert torch.allclose(cov, torch.eye(48, dtype=torch.float64), atol=2e-2)
    assert torch.allclose(zca.apply(images[:5]), zca.apply(images[:5].float() / 255))  # uint8 accepted


def test_zca_state_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    zca = ZCAWhitening.fit(_correlated_images(50))
    save_file(zca.state_dict(), tmp_path / "zca.safetensors")
    again = ZCAWhitening.from_state_dict(load_file(tmp_path / "zca.safetensors"))
    batch = torch.rand(3, 3, 4, 4)
    assert torch.equal(zca.apply(batch), again.apply(batch)) and again.shape == (3, 4, 4)


def test_zca_refuses_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        ZCAWhitening.fit(torch.rand(4, 3, 4, 4))
    with pytest.raises(ValueError, match="max_dim"):
        ZCAWhitening.fit(torch.zeros(4, 3, 40, 40, dtype=torch.uint8))
    zca = ZCAWhitening.fit(_correlated_images(20))
    with pytest.raises(ValueError, match="fitted on"):
        zca.apply(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="lacks matrix"):
        ZCAWhitening.from_state_dict({"mean": zca.mean, "epsilon": torch.tensor(1.0), "shape": torch.tensor([3, 4, 4])})


def test_materialise_in_memory_bbox_crop_keeps_keypoints_on_their_pixels():
    from ltpa.data.materialise import materialise
    from ltpa.data.sources import Split

    images = torch.zeros(2, 3, 64, 96, dtype=torch.uint8)
    images[:, 2] = 40
    points = [(70, 20), (25, 50)]  # both inside the centre square of resize_crop
    for k, (x, y) in enumerate(points):
        images[k, :, y, x] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    boxes = torch.tensor([[50.0, 5.0, 90.0, 40.0], [10.0, 30.0, 45.0, 60.0]])
    parts = torch.tensor([[[70.5, 20.5]], [[25.5, 50.5]]])
    split = Split(torch.tensor([0, 1]), images=images, boxes=boxes, parts=parts, name="train")
    for mode, size in (("bbox_crop", 80), ("resize_crop", 48), ("squash", 40)):
        out, new_boxes, new_parts = materialise(split, size, mode, bbox_margin=0.15, workers=0)
        assert out.shape == (2, 3, size, size) and new_boxes.shape == (2, 4)
        for k in range(2):
            u, v = new_parts[k, 0].tolist()
            picture = Image.fromarray(out[k].permute(1, 2, 0).numpy())
            assert _is_reddest(picture, math.floor(u), math.floor(v)), (mode, k)
    same = materialise(split, 64, "resize_crop", workers=0)
    assert same[0] is not images  # 64x96 is not square: resized like any other split
    square = Split(torch.tensor([0]), images=torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert materialise(square, 8, workers=0)[0] is square.images


def test_materialise_ignores_a_corrupt_cache_and_decodes_again(tmp_path, caplog):
    import numpy as np
    from PIL import Image

    from ltpa.data.materialise import materialise
    from ltpa.data.sources import Split

    files = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((20, 30, 3), 40 * i, dtype=np.uint8)).save(path)
        files.append(path)
    split = Split(targets=torch.arange(3), files=files)
    cache = tmp_path / "cache"
    first, _, _ = materialise(split, size=16, workers=0, cache_dir=cache)
    for cached in cache.glob("*.safetensors"):
        cached.write_bytes(cached.read_bytes()[:50])  # truncated
    again, _, _ = materialise(split, size=16, workers=0, cache_dir=cache)
    assert torch.equal(first, again)
    assert "decoding again" in caplog.text
