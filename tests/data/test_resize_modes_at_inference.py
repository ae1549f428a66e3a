"""Evaluation and ``ltpa attend`` prepare images exactly as the training run did, for every resize mode,
and move the ground truth (boxes, keypoints, masks) with the same crop and resize."""
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ltpa.data.materialise import MODES
from ltpa.inference import evaluation_set, load_files_as_trained
from ltpa.runs.config import TrainConfig
from ltpa.train.data_setup import build_data

SIZE = 24
# Colours far apart in RGB and in grey levels too (a grayscale JPEG keeps only L = 87, 23, 160),
# with the background never between two object colours, so blended edges never look like it.
RED, PART, GREY = (220, 30, 30), (10, 10, 120), (160, 160, 160)
# image id, is_train, (width, height), box (x, y, w, h), file kind: every test image is wider or
# taller than square, so the three modes give three different crops.
_IMAGES = [
    (1, 1, (60, 40), (30, 8, 20, 15), "RGB"),
    (2, 1, (44, 70), (6, 30, 24, 30), "RGB"),
    (3, 0, (64, 40), (4, 6, 26, 20), "RGB"),
    (4, 0, (40, 72), (10, 40, 22, 24), "L"),     # grayscale JPEG, as in CUB
    (5, 0, (80, 36), (44, 4, 30, 26), "CMYK"),   # CMYK JPEG
    (6, 0, (50, 50), (12, 14, 24, 22), "PNG"),   # a PNG among the JPEGs
]


def _picture(width, height, box, rng):
    """Grey texture, a red box (the 'bird') and a dark blue 6x6 block on the box's centre (its 'beak')."""
    pixels = np.clip(rng.normal(GREY[0], 6, (height, width, 3)), 0, 255).astype(np.uint8)
    x, y, w, h = box
    pixels[y:y + h, x:x + w] = RED
    cx, cy = x + w // 2, y + h // 2
    pixels[cy - 3:cy + 3, cx - 3:cx + 3] = PART
    return pixels, (cx, cy)


def _write_cub(root):
    folder = root / "CUB_200_2011"
    (folder / "parts").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    for image_id, train, (width, height), box, kind in _IMAGES:
        cls = 1 + image_id % 2
        rel = f"00{cls}.Bird_{cls}/img_{image_id}.{'png' if kind == 'PNG' else 'jpg'}"
        path = folder / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels, (cx, cy) = _picture(width, height, box, rng)
        img = Image.fromarray(pixels)
        if kind == "L":
            img = img.convert("L")
        elif kind == "CMYK":
            img = img.convert("CMYK")
        img.save(path, **({} if kind == "PNG" else {"quality": 95}))
        lines["images"].append(f"{image_id} {rel}")
        lines["labels"].append(f"{image_id} {cls}")
        lines["split"].append(f"{image_id} {train}")
        lines["boxes"].append(f"{image_id} {box[0]}.0 {box[1]}.0 {box[2]}.0 {box[3]}.0")
        # part 1 (visible) marks pixel (cx - 1, cy - 1), inside the dark blue block; part 2 is hidden
        lines["locs"] += [f"{image_id} 1 {cx - 1}.0 {cy - 1}.0 1", f"{image_id} 2 0.0 0.0 0"]
    for name, key in (("images.txt", "images"), ("image_class_labels.txt", "labels"),
                      ("train_test_split.txt", "split"), ("bounding_boxes.txt", "boxes"),
                      ("parts/part_locs.txt", "locs")):
        (folder / name).write_text("\n".join(lines[key]) + "\n")
    (folder / "classes.txt").write_text("1 001.Bird_1\n2 002.Bird_2\n")
    (folder / "parts" / "parts.txt").write_text("1 beak\n2 tail\n")
    return root


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    return _write_cub(tmp_path_factory.mktemp("cub"))


def _config(data, mode, **extra):
    return TrainConfig(data=data, image_size=SIZE, num_classes=2, resize_mode=mode, val_fraction=0.0, **extra)


def _is(pixels, colour, tolerance=30, kind="RGB"):
    """(H, W) bool: pixels of ``(3, H, W)`` uint8 within ``tolerance`` of ``colour`` in every channel
    (of its grey level for a grayscale file)."""
    if kind == "L":
        grey = round(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])
        colour = (grey, grey, grey)
    target = torch.tensor(colour, dtype=torch.int32).view(3, 1, 1)
    return ((pixels.to(torch.int32) - target).abs() <= tolerance).all(0)


@pytest.mark.parametrize("mode", MODES)
def test_evaluation_set_images_equal_the_training_pipeline(cub, mode):
    config = _config(f"cub:{cub}", mode)
    trained_on = build_data(config).test_images
    evaluated = evaluation_set(config)
    assert evaluated.images.dtype == torch.uint8 and evaluated.images.shape == (4, 3, SIZE, SIZE)
    assert torch.equal(evaluated.images, trained_on)  # byte for byte
    assert mode in evaluated.description


@pytest.mark.parametrize("mode", MODES)
def test_boxes_and_parts_move_with_the_pixels(cub, mode):
    data = evaluation_set(_config(f"cub:{cub}", mode))
    assert data.boxes.shape == (4, 4) and data.parts.shape == (4, 2, 2)
    checked = 0
    kinds = [row[4] for row in _IMAGES if row[1] == 0]
    for image, box, parts, kind in zip(data.images, data.boxes, data.parts, kinds):
        x0, y0, x1, y1 = box.tolist()
        if (x1 - x0) < 4 or (y1 - y0) < 4:  # the crop cut the box off
            continue
        obj = ~_is(image, GREY, 40, kind)  # the red box and its dark blue block; resampling blends their edges
        inside = obj[math.ceil(y0) + 1:math.floor(y1) - 1, math.ceil(x0) + 1:math.floor(x1) - 1]
        assert inside.all(), f"{mode}: box {box.tolist()} is not on the object"
        grown = torch.zeros_like(obj)
        grown[max(0, math.floor(y0) - 2):math.ceil(y1) + 2, max(0, math.floor(x0) - 2):math.ceil(x1) + 2] = True
        assert not obj[~grown].any(), f"{mode}: object pixels outside box {box.tolist()}"
        assert torch.isnan(parts[1]).all()  # a hidden part stays hidden
        px, py = parts[0].tolist()
        if 0 <= px < SIZE and 0 <= py < SIZE:
            assert _is(image, PART, 30, kind)[int(py), int(px)], f"{mode}: the beak at {(px, py)} is not on its block"
            checked += 1
    assert checked >= 3


def test_bbox_crop_is_a_box_crop_and_differs_from_the_other_modes(cub):
    crops = {mode: evaluation_set(_config(f"cub:{cub}", mode)).images for mode in MODES}
    assert not torch.equal(crops["bbox_crop"], crops["resize_crop"])
    assert not torch.equal(crops["squash"], crops["resize_crop"])
    # bbox_crop with a 10% margin: the object fills most of the picture
    boxes = evaluation_set(_config(f"cub:{cub}", "bbox_crop")).boxes
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / SIZE**2
    assert (area > 0.45).all()


@pytest.mark.parametrize("mode", ["resize_crop", "squash"])
def test_attend_files_are_decoded_as_in_training(cub, mode):
    config = _config(f"cub:{cub}", mode)
    files = sorted((cub / "CUB_200_2011" / "images").rglob("img_*"), key=lambda p: int(p.stem.split("_")[1]))
    test_files = [f for f, row in zip(files, _IMAGES) if row[1] == 0]
    images, used = load_files_as_trained(config, test_files)
    assert used == mode
    assert torch.equal(images, build_data(config).test_images)


def test_attend_files_of_a_bbox_crop_run_fall_back_to_resize_crop_with_one_warning(cub, caplog):
    files = sorted((cub / "CUB_200_2011" / "images").rglob("img_*"))
    with caplog.at_level(logging.WARNING, logger="ltpa"):
        images, used = load_files_as_trained(_config(f"cub:{cub}", "bbox_crop"), files)
    assert used == "resize_crop"
    warned = [r for r in caplog.records if "bbox_crop" in r.getMessage()]
    assert len(warned) == 1 and "resize_crop" in warned[0].getMessage()
    expected, _ = load_files_as_trained(_config(f"cub:{cub}", "resize_crop"), files)
    assert torch.equal(images, expected)


@pytest.mark.parametrize("mode", MODES)
def test_synthetic_evaluation_equals_training_whatever_the_mode(mode):
    # Training uses in-memory images of its own size as they are: the resize mode is for files.
    config = _config("synthetic", mode, num_train=24, num_test=12)
    data = evaluation_set(config)
    assert torch.equal(data.images, build_data(config).test_images)
    assert data.masks is not None and data.masks.shape == (12, SIZE, SIZE)


def _write_masks(root, rng):
    """Images with a red object and its mask; the second mask is stored at half size."""
    for name, (width, height), (x, y, w, h), half in (("a", (60, 40), (34, 6, 18, 24), False),
                                                       ("b", (40, 64), (8, 36, 20, 16), True)):
        pixels = np.clip(rng.normal(GREY[0], 6, (height, width, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[y:y + h, x:x + w] = 255
        pixels[mask > 0] = RED
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / f"{name}.png")
        stored = Image.fromarray(mask)
        if half:
            stored = stored.resize((width // 2, height // 2), Image.Resampling.NEAREST)
        stored.save(root / "masks" / f"{name}.png")


def _erode(mask):
    """Pixels whose 3x3 neighbourhood is all in ``mask`` (``(H, W)`` bool)."""
    out = -torch.nn.functional.max_pool2d(-mask[None, None].float(), 3, stride=1, padding=1)[0, 0]
    return out > 0.5


@pytest.mark.parametrize("mode", MODES)
def test_masks_follow_the_run_resize_mode(tmp_path, mode):
    _write_masks(tmp_path / "m", np.random.default_rng(1))
    data = evaluation_set(_config("synthetic", mode), f"masks:{tmp_path / 'm'}")
    assert data.images.shape == (2, 3, SIZE, SIZE) and data.masks.shape == (2, SIZE, SIZE)
    for image, mask, box in zip(data.images, data.masks, data.boxes):
        # away from the edge (where bilinear blends and nearest does not), mask == red object
        inside, outside = _erode(mask), _erode(~mask)
        assert inside.sum() > 20 and outside.sum() > 20
        assert _is(image, RED)[inside].all(), f"{mode}: mask pixels off the red object"
        assert _is(image, GREY, 40)[outside].all(), f"{mode}: red object pixels outside the mask"
        if mode == "bbox_crop":  # the object (its tight box, plus 10%) fills the picture
            assert (box[2] - box[0]) * (box[3] - box[1]) > 0.45 * SIZE**2
    by_mode = {m: evaluation_set(_config("synthetic", m), f"masks:{tmp_path / 'm'}").masks for m in MODES}
    assert not torch.equal(by_mode["resize_crop"], by_mode["squash"])
    assert not torch.equal(by_mode["resize_crop"], by_mode["bbox_crop"])
