"""Generated mask folders in the published layouts, for tests/data and tests/attention
(importable because pytest puts tests/, the conftest's folder, on sys.path)."""
import numpy as np
from PIL import Image


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
