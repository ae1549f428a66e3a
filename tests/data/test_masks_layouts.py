"""Mask folders as published: Object Discovery (``Data/<Class>/GroundTruth``, the ``<Class>100``
subsets beside the full sets) and Weizmann horses (``rgb`` + ``figure_ground`` JPEG masks, or
``horse`` + ``mask``), with the irregularities of the real ones: JPEG masks with compression
noise, an image without a mask, a mask stored at another scale, an empty (noise-image) mask."""
import numpy as np
import pytest
import torch
from PIL import Image

from ltpa.cli import main
from ltpa.data.masks import load_mask_folder, scan_mask_folder
from ltpa.data.sources import describe, load_data


def _square(height, width, box):
    mask = np.zeros((height, width), dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def _image(mask, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (*mask.shape, 3), dtype=np.uint8)
    image[mask > 0] = (200, 60, 40)
    return image


def _save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def make_object_discovery(root, *, size=32):
    """``root/Data/{Airplane,Airplane100,Car100,Horse100}``: 4 images per class (the full
    ``Airplane`` set 5), PNG masks of centred and off-centre squares; Horse100's ``h3`` has no
    mask; Car100's ``c1`` mask is stored at half size; Airplane100's ``a3`` is a noise image
    (empty mask). Returns the expected masks by ``class/stem`` at the stored size."""
    expected = {}
    boxes = [(8, 8, 24, 24), (4, 6, 20, 22), (10, 2, 30, 18), (0, 0, 32, 32)]
    for cls, count in (("Airplane", 5), ("Airplane100", 4), ("Car100", 4), ("Horse100", 4)):
        folder = root / "Data" / cls
        for i in range(count):
            stem = f"{cls[0].lower()}{i}"
            mask = _square(size, size, boxes[i % 4])
            if cls == "Airplane100" and i == 3:
                mask[:] = 0
            _save(folder / f"{stem}.jpg", _image(mask, i), quality=95)
            if cls == "Horse100" and i == 3:
                continue  # an image without a mask
            stored = mask[::2, ::2] if (cls, i) == ("Car100", 1) else mask
            _save(folder / "GroundTruth" / f"{stem}.png", stored)
            expected[f"{cls}/{stem}"] = mask > 0
    return expected


def make_weizmann(root, *, size=32, repackaged=False):
    """``root/weizmann_horse_db/{rgb,gray,figure_ground}/horse00N.jpg`` (masks as JPEG, with
    compression noise), or the repackaged ``horse/*.png`` + ``mask/*.png``. Returns the folder
    and the expected masks by stem."""
    db = root / "weizmann_horse_db"
    expected = {}
    for i, box in enumerate([(5, 7, 23, 25), (6, 3, 27, 21), (3, 10, 18, 29)], start=1):  # off the 8-px JPEG grid
        stem = f"horse{i:03d}"
        mask = _square(size, size, box)
        image = _image(mask, i)
        if repackaged:
            _save(db / "horse" / f"{stem}.png", image)
            _save(db / "mask" / f"{stem}.png", (mask > 0).astype(np.uint8))  # 0/1 values
        else:
            _save(db / "rgb" / f"{stem}.jpg", image, quality=90)
            _save(db / "gray" / f"{stem}.jpg", image.mean(2).astype(np.uint8), quality=90)
            _save(db / "figure_ground" / f"{stem}.jpg", mask, quality=75)
        expected[stem] = mask > 0
    return db, expected


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
