import numpy as np
import pytest
import torch
from PIL import Image

from ltpa.data.masks import find_mask_pairs, load_mask_folder


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_object_discovery_layout_with_nearest_resized_masks(tmp_path):
    image = np.full((20, 40, 3), 100, dtype=np.uint8)
    mask = np.zeros((10, 20), dtype=np.uint8)  # half the image's size: resized with nearest
    mask[:, 10:] = 255
    _save(tmp_path / "Horse" / "h1.jpg", image)
    _save(tmp_path / "Horse" / "GroundTruth" / "h1.png", mask)
    _save(tmp_path / "Car" / "c1.png", image)
    _save(tmp_path / "Car" / "GroundTruth" / "c1.png", (mask > 0).astype(np.uint8))  # 0/1 mask
    _save(tmp_path / "Car" / "GroundTruth" / "orphan.png", mask)
    with pytest.warns(UserWarning, match="1 mask\\(s\\) without an image"):
        data = load_mask_folder(tmp_path, 16)
    assert data.class_names == ("Car", "Horse") and data.labels.tolist() == [0, 1]
    assert data.images.shape == (2, 3, 16, 16) and data.images.dtype == torch.uint8
    # short side 20 -> 16, width 40 -> 32, centre crop x 8..24: the mask's right half starts at x=16
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[:, 8:] = True
    assert torch.equal(data.masks[0], expected) and torch.equal(data.masks[1], expected)
    assert data.boxes[0].tolist() == [8.0, 0.0, 16.0, 16.0]


def test_images_and_masks_folders_and_missing_pairs(tmp_path):
    _save(tmp_path / "images" / "a.jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    _save(tmp_path / "images" / "b.jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    _save(tmp_path / "masks" / "a.png", np.full((8, 8), 255, dtype=np.uint8))
    with pytest.warns(UserWarning, match="1 image\\(s\\) without a mask"):
        pairs = find_mask_pairs(tmp_path)
    assert list(pairs) == [tmp_path.name] and len(pairs[tmp_path.name]) == 1
    with pytest.raises(FileNotFoundError, match="no image/mask pairs"):
        find_mask_pairs(tmp_path / "images")
