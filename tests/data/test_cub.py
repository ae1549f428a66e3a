import math

import pytest
import torch
from PIL import Image

from ltpa.data.materialise import materialise
from ltpa.data.sources import load_data

# (image id, class id, is_train, size (w, h), mode); class ids 2, 3 and 5 of 6 are present.
_IMAGES = [
    (1, 2, 1, (40, 30), "RGB"),
    (2, 2, 0, (36, 48), "L"),      # grayscale JPEG
    (3, 3, 1, (50, 40), "CMYK"),   # CMYK JPEG
    (4, 3, 0, (40, 40), "RGB"),
    (5, 5, 1, (44, 33), "RGB"),
    (6, 5, 1, (30, 30), "RGB"),    # listed but not written to disk
]
_CLASSES = [f"{k:03d}.Bird_{k}" for k in range(1, 7)]


def write_cub(root, *, skip=(6,), boxes=True, parts=True):
    folder = root / "CUB_200_2011"
    (folder / "parts").mkdir(parents=True)
    lines = {"images": [], "labels": [], "split": [], "boxes": [], "locs": []}
    for image_id, cls, train, (w, h), mode in _IMAGES:
        rel = f"{_CLASSES[cls - 1]}/img_{image_id}.jpg"
        lines["images"].append(f"{image_id} {rel}")
        lines["labels"].append(f"{image_id} {cls}")
        lines["split"].append(f"{image_id} {train}")
        lines["boxes"].append(f"{image_id} 5.0 4.0 20.0 15.0")
        lines["locs"] += [f"{image_id} 1 10.0 8.0 1", f"{image_id} 2 0.0 0.0 0"]
        if image_id not in skip:
            path = folder / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            colour = {"RGB": (200, 30, 30), "L": 128, "CMYK": (0, 255, 255, 0)}[mode]  # CMYK: pure red
            Image.new(mode, (w, h), colour).save(path, quality=95)
    (folder / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (folder / "classes.txt").write_text("\n".join(f"{k + 1} {c}" for k, c in enumerate(_CLASSES)) + "\n")
    if boxes:
        (folder / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    if parts:
        (folder / "parts" / "parts.txt").write_text("1 beak\n2 left eye\n")
        (folder / "parts" / "part_locs.txt").write_text("\n".join(lines["locs"]) + "\n")
    return folder


def test_cub_loads_files_labels_boxes_and_parts(tmp_path):
    write_cub(tmp_path)
    source = load_data(f"cub:{tmp_path}")
    assert source.class_names == (_CLASSES[1], _CLASSES[2], _CLASSES[4])  # present classes, id order
    assert source.train.targets.tolist() == [0, 1, 2]  # images 1, 3, 5 (6 is missing)
    assert source.test.targets.tolist() == [0, 1]
    assert [p.name for p in source.train.files] == ["img_1.jpg", "img_3.jpg", "img_5.jpg"]
    assert source.train.sizes.tolist() == [[30, 40], [40, 50], [33, 44]]
    assert source.train.boxes[0].tolist() == [5.0, 4.0, 25.0, 19.0]  # x y w h -> x0 y0 x1 y1
    assert source.train.part_names == ("beak", "left eye")
    assert source.train.parts[0, 0].tolist() == [10.5, 8.5]  # pixel (10, 8) -> its centre
    assert math.isnan(source.train.parts[0, 1, 0]) and source.train.part_visible[0].tolist() == [True, False]


def test_cub_warns_about_missing_images_and_absent_classes(tmp_path):
    write_cub(tmp_path)
    warnings = load_data(f"cub:{tmp_path}/CUB_200_2011").warnings
    assert any("1 of 6 listed images are missing on disk and were dropped" in w and "img_6.jpg" in w
               for w in warnings)
    assert any("3 of 6 classes present (2-3, 5)" in w for w in warnings)
    assert any("labels remapped to 0..2" in w for w in warnings)


def test_cub_classes_all_keeps_the_full_label_space(tmp_path):
    write_cub(tmp_path)
    source = load_data(f"cub:{tmp_path},classes=all")
    assert source.num_classes == 6 and source.train.targets.tolist() == [1, 2, 4]


def test_cub_class_ids_select_and_relabel(tmp_path):
    write_cub(tmp_path)
    source = load_data(f"cub:{tmp_path},classes=3-4+5")
    assert source.class_names == (_CLASSES[2], _CLASSES[3], _CLASSES[4])
    assert source.train.targets.tolist() == [0, 2] and source.test.targets.tolist() == [0]
    assert any("1 selected classes have no images (4)" in w for w in source.warnings)
    with pytest.raises(ValueError, match="not in classes.txt"):
        load_data(f"cub:{tmp_path},classes=5-9")


def test_cub_without_boxes_or_parts_warns(tmp_path):
    write_cub(tmp_path, boxes=False, parts=False)
    source = load_data(f"cub:{tmp_path}")
    assert source.train.boxes is None and source.train.parts is None and source.train.part_names == ()
    assert sum("is missing: no" in w for w in source.warnings) == 2
    with pytest.raises(ValueError, match="needs bounding boxes"):
        materialise(source.train, 16, "bbox_crop", workers=0)


def test_cub_missing_label_file_is_an_error(tmp_path):
    folder = write_cub(tmp_path)
    (folder / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="image_class_labels.txt"):
        load_data(f"cub:{tmp_path}")


def test_cub_label_id_out_of_range_is_an_error(tmp_path):
    folder = write_cub(tmp_path)
    text = (folder / "image_class_labels.txt").read_text().replace("4 3\n", "4 201\n")
    (folder / "image_class_labels.txt").write_text(text)
    with pytest.raises(ValueError, match=r"not in classes.txt .*image 4 -> class 201"):
        load_data(f"cub:{tmp_path}")


def test_cub_malformed_line_names_file_and_line(tmp_path):
    folder = write_cub(tmp_path)
    (folder / "train_test_split.txt").write_text("1 1\n2 x\n")
    with pytest.raises(ValueError, match=r"train_test_split.txt, line 2"):
        load_data(f"cub:{tmp_path}")


def test_cub_materialise_decodes_grayscale_and_cmyk_as_rgb(tmp_path):
    write_cub(tmp_path)
    source = load_data(f"cub:{tmp_path}")
    images, boxes, parts = materialise(source.test, 16, workers=0)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
    gray = images[0].float()
    assert (gray[0] - gray[1]).abs().max() <= 2 and abs(gray.mean() - 128) < 4  # L -> equal channels
    train, _, _ = materialise(source.train, 16, workers=0)
    red = train[1].float().mean(dim=(1, 2))  # the CMYK image is pure red
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert boxes.shape == (2, 4) and parts.shape == (2, 2, 2)


def test_cub_materialise_moves_boxes_and_parts_with_the_crop(tmp_path):
    write_cub(tmp_path)
    split = load_data(f"cub:{tmp_path}").train
    _, boxes, parts = materialise(split, 20, "resize_crop", workers=0)
    # image 1 is 40x30: the 30x30 centre square starts at x=5, scale 20/30
    scale = 20 / 30
    assert torch.allclose(boxes[0], torch.tensor([0.0, 4 * scale, 20 * scale, 19 * scale]))
    assert torch.allclose(parts[0, 0], torch.tensor([5.5 * scale, 8.5 * scale]))
    _, boxes, _ = materialise(split, 20, "bbox_crop", bbox_margin=0.0, workers=0)
    # the 20x15 box fills the width; its square (20 px, integer-aligned) starts at row floor(11.5 - 10) = 1
    assert torch.allclose(boxes[0], torch.tensor([0.0, 3.0, 20.0, 18.0]))
