"""Mask folders as published: Object Discovery (``Data/<Class>/GroundTruth``, the ``<Class>100``
subsets beside the full sets) and Weizmann horses (``rgb`` + ``figure_ground`` JPEG masks, or
``horse`` + ``mask``), with the irregularities of the real ones: JPEG masks with compression
noise, an image without a mask, a mask stored at another scale, an empty (noise-image) mask."""
import numpy as np
import pytest
import torch
from mask_folders import make_object_discovery, make_weizmann
from PIL import Image

from ltpa.cli import main
from ltpa.data.masks import load_mask_folder, scan_mask_folder
from ltpa.data.sources import describe, load_data


def test_object_discovery_zip_layout_picks_the_100_image_subsets_and_lists_the_missing_mask(tmp_path):
    expected = make_object_discovery(tmp_path)
    folder = scan_mask_folder(tmp_path)  # the zip's root: the classes are under Data/
    assert list(folder.classes) == ["Airplane100", "Car100", "Horse100"]
    assert folder.skipped == ("Airplane",) and folder.missing_masks == ("Horse100/h3",)
    assert list(scan_mask_folder(tmp_path, subset="full").classes) == ["Airplane", "Car100", "Horse100"]
    assert list(scan_mask_folder(tmp_path, subset="all").classes) == ["Airplane", "Airplane100", "Car100", "Horse100"]
    with pytest.warns(UserWarning) as record:
        data = load_mask_folder(tmp_path, 32)
    messages = " ".join(str(w.message) for w in record)
    assert "1 image(s) without a mask" in messages and "Horse100/h3" in messages
    assert "leaving out Airplane" in messages and "1 mask(s) under" in messages  # the empty noise mask
    assert data.missing_masks == ("Horse100/h3",)
    assert data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 3
    for mask, (image_path, _) in zip(data.masks, data.paths):
        key = f"{image_path.parent.name}/{image_path.stem}"
        assert torch.equal(mask, torch.from_numpy(expected[key])), key  # incl. the half-size Car100/c1


def test_weizmann_jpeg_masks_are_thresholded_at_half_through_their_compression_noise(tmp_path):
    db, expected = make_weizmann(tmp_path)
    noisy = np.asarray(Image.open(db / "figure_ground" / "horse001.jpg").convert("L"))
    assert ((noisy > 0) & (noisy < 128)).any() and ((noisy > 128) & (noisy < 255)).any()  # real JPEG noise
    data = load_mask_folder(db, 32)
    assert data.class_names == ("weizmann_horse_db",) and [p[0].parent.name for p in data.paths] == ["rgb"] * 3
    for mask, (image_path, _) in zip(data.masks, data.paths):
        assert torch.equal(mask, torch.from_numpy(expected[image_path.stem]))
    repackaged, expected = make_weizmann(tmp_path / "kaggle", repackaged=True)
    data = load_mask_folder(repackaged, 32)
    assert [p[0].parent.name for p in data.paths] == ["horse"] * 3
    assert all(torch.equal(m, torch.from_numpy(expected[p[0].stem])) for m, p in zip(data.masks, data.paths))


def test_masks_is_a_data_source_and_ltpa_data_describes_it(tmp_path, capsys):
    make_object_discovery(tmp_path)
    source = load_data(f"masks:{tmp_path},subset=all")
    assert source.class_names == ("Airplane", "Airplane100", "Car100", "Horse100")
    assert len(source.train) == 0 and len(source.test) == 16 and len(source.test.masks) == 16
    text = describe(source)
    assert "image(s) without a mask left out: Horse100/h3" in text and "object masks" in text
    assert main(["data", f"masks:{tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "classes: 3 (Airplane100, Car100, Horse100)" in out and "test: 11 images" in out
    assert "left out Airplane" in out
    assert main(["data", f"masks:{tmp_path},subset=some"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltpa data: error:") and "subset must be one of auto, 100, full, all" in err
