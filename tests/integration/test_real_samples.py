"""Loaders on the real data samples in ../shared/data (official formats, subsets of the sets)."""
from pathlib import Path

import pytest
import torch

from ltpa.data.materialise import materialise
from ltpa.data.sources import describe, load_data

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CIFAR = DATA / "cifar100-mini"
CUB = DATA / "cub200-mini" / "CUB_200_2011"

pytestmark = pytest.mark.integration


def _need(path):
    if not path.exists():
        pytest.skip(f"real data sample {path} is absent (only CI has ../shared/data beside the repository)")


@pytest.fixture(scope="module")
def cub():
    _need(CUB)
    return load_data(f"cub:{CUB}")


def test_cifar100_mini_loads_with_its_label_names():
    _need(CIFAR)
    source = load_data(f"cifar100:{CIFAR}")
    assert len(source.train) == 5000 and len(source.test) == 1000
    assert source.train.images.shape == (5000, 3, 32, 32) and source.train.images.dtype == torch.uint8
    assert source.num_classes == 100
    assert source.class_names[:3] == ("apple", "aquarium_fish", "baby") and source.class_names[-1] == "worm"
    assert torch.bincount(source.train.targets).tolist() == [50] * 100
    assert torch.bincount(source.test.targets).tolist() == [10] * 100
    assert source.warnings == []
    coarse = load_data(f"cifar100:{CIFAR},labels=coarse")
    assert coarse.num_classes == 20 and "vehicles_1" in coarse.class_names


def test_cub_mini_loads_with_boxes_parts_and_the_class_warning(cub):
    assert len(cub.train) == 300 and len(cub.test) == 243
    assert cub.num_classes == 10 and cub.class_names[0] == "001.Black_footed_Albatross"
    assert sorted(torch.unique(cub.train.targets).tolist()) == list(range(10))
    assert cub.train.boxes.shape == (300, 4) and cub.train.parts.shape == (300, 15, 2)
    assert len(cub.train.part_names) == 15 and "left eye" in cub.train.part_names
    assert any("10 of 200 classes present" in w for w in cub.warnings)
    sizes = cub.train.sizes
    boxes = cub.train.boxes
    assert (boxes[:, 2] <= sizes[:, 1]).all() and (boxes[:, 3] <= sizes[:, 0]).all()
    visible = cub.train.parts[cub.train.part_visible]
    assert not torch.isnan(visible).any()
    assert "300 images" in describe(cub)


def test_cub_grayscale_jpeg_decodes_as_rgb(cub):
    name = "Brewer_Blackbird_0028_2682.jpg"  # the sample's one grayscale (mode L) JPEG
    split = next(s for s in (cub.train, cub.test) if any(f.name == name for f in s.files))
    one = split.select(torch.tensor([k for k, f in enumerate(split.files) if f.name == name]))
    images, _, _ = materialise(one, 80, workers=0)
    assert images.shape == (1, 3, 80, 80)
    assert torch.equal(images[0, 0], images[0, 1]) and torch.equal(images[0, 1], images[0, 2])


def test_cub_mini_materialises_at_80_px(cub):
    images, boxes, parts = materialise(cub.test, 80, "resize_crop", workers=2)
    assert images.shape == (243, 3, 80, 80) and images.dtype == torch.uint8
    assert (boxes >= 0).all() and (boxes <= 80).all() and parts.shape == (243, 15, 2)
    assert images.float().std() > 20  # real pictures, not blank
    cropped, crop_boxes, _ = materialise(cub.test, 80, "bbox_crop", workers=2)
    assert cropped.shape == (243, 3, 80, 80)
    widths = crop_boxes[:, 2:] - crop_boxes[:, :2]
    assert (widths.max(dim=1).values > 80 / 1.2 - 1).all()  # the box fills the crop up to the margin
