"""Bad image and data inputs through the real ``ltpa`` command: one line ``ltpa CMD: error: ...``
that names the file (or value) and the fix, exit status 2, no traceback, nothing written.

Every case generates its files in their real on-disk formats (PNG, JPEG, TIFF, Python pickles,
MATLAB files, CUB's text files) in ``tmp_path``. Below the table: every PIL image mode read to
the 8-bit RGB values it should give, and the real samples of ``../shared/data`` when present.
"""
import logging
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltpa.cli import main
from ltpa.data.images import MAX_IMAGE_PIXELS, open_image
from ltpa.data.materialise import materialise
from ltpa.data.sources import Split, load_data

TINY = ["--set", "model_options.width=0.0625", "--set", "num_train=32", "--set", "num_test=16",
        "--set", "batch_size=8", "--set", "num_classes=2", "--set", "image_size=32", "--epochs", "1",
        "--no-progress"]
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CUB_SAMPLE = SHARED / "cub200-mini" / "CUB_200_2011"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    assert main(["-q", "train", "--out", str(out), *TINY]) == 0
    return out / "checkpoints" / "best.json"


# --- files in their real formats -------------------------------------------------------------

def _png_of_zeros(path, width, height):
    """A complete, valid 8-bit grey PNG of ``width x height`` black pixels, written row by row
    (a few hundred KB on disk however large it claims to be)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer = zlib.compressobj(1)
    row = bytes(width + 1)  # filter type 0, then the pixels
    data = b"".join([packer.compress(row) for _ in range(height)] + [packer.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _photo(path, size=(48, 36), seed=0, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    (img if mode == "RGB" else img.convert(mode)).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return path


def _write_cub(root, count=8):
    """A CUB_200_2011 folder of 2 classes, ``count`` JPEGs (the first half train), with every
    annotation file; returns the folder."""
    folder = root / "CUB_200_2011"
    (folder / "parts").mkdir(parents=True)
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    for i in range(1, count + 1):
        cls = 1 + i % 2
        rel = f"00{cls}.Bird_{cls}/Bird_{i:04d}.jpg"
        _photo(folder / "images" / rel, size=(64, 48), seed=i)
        lines["images"].append(f"{i} {rel}")
        lines["labels"].append(f"{i} {cls}")
        lines["split"].append(f"{i} {int(i <= count // 2)}")
        lines["boxes"].append(f"{i} 10.0 8.0 30.0 20.0")
        lines["locs"].append(f"{i} 1 20.0 15.0 1")
    for name, key in (("images.txt", "images"), ("image_class_labels.txt", "labels"),
                      ("train_test_split.txt", "split"), ("bounding_boxes.txt", "boxes"),
                      ("parts/part_locs.txt", "locs")):
        (folder / name).write_text("\n".join(lines[key]) + "\n")
    (folder / "classes.txt").write_text("1 001.Bird_1\n2 002.Bird_2\n")
    (folder / "parts" / "parts.txt").write_text("1 beak\n")
    return folder


def _edit_line(path, number, new):
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = new(lines[number - 1])
    path.write_bytes(b"\n".join(lines))


def _cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3], b"batch_label": b"b",
             b"filenames": [b"x.png"] * 4}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    return root


def _cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3], b"coarse_labels": [0] * 4,
             b"filenames": [b"x.png"] * 4, b"batch_label": b"b"}
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"f%d" % i for i in range(100)],
                                                b"coarse_label_names": [b"c%d" % i for i in range(20)]}, protocol=2))
    return folder


# --- the cases --------------------------------------------------------------------------------
# Each builder gets (tmp_path, checkpoint) and returns (argv, substrings of the one-line error);
# the first substring is always the file (or value) the message must name.

def _huge_png(tmp, ckpt):
    path = _png_of_zeros(tmp / "huge.png", 14000, 14000)
    return ["attend", str(ckpt), str(path), "--out", str(tmp / "out")], \
        ["huge.png", "14000x14000 pixels", f"{MAX_IMAGE_PIXELS:,}", "LTPA_MAX_IMAGE_PIXELS"]


def _truncated_cub_jpegs(tmp, ckpt):
    folder = _write_cub(tmp)
    for i in (1, 2, 3):  # header intact, pixel data cut: found only when decoding
        path = folder / "images" / f"00{1 + i % 2}.Bird_{1 + i % 2}" / f"Bird_{i:04d}.jpg"
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    return ["train", "--data", f"cub:{tmp}", "--out", str(tmp / "run"), *TINY], \
        ["Bird_0001.jpg", "cannot decode 3 of 4 images of the train split", "Bird_0002.jpg", "Bird_0003.jpg",
         "truncated", "replace these files"]


def _cub_non_utf8(tmp, ckpt):
    folder = _write_cub(tmp)
    _edit_line(folder / "images.txt", 3, lambda line: line.replace(b"Bird_0003", b"Bird_\xff003"))
    return ["data", f"cub:{tmp}"], ["images.txt, line 3", "byte 0xff", "not UTF-8"]


def _cub_field_count(tmp, ckpt):
    folder = _write_cub(tmp)
    _edit_line(folder / "image_class_labels.txt", 2, lambda line: line + b" 7")
    return ["data", f"cub:{tmp}"], ["image_class_labels.txt, line 2", "expected 2 fields", "<image id> <class id>"]


def _cub_non_integer_id(tmp, ckpt):
    folder = _write_cub(tmp)
    _edit_line(folder / "train_test_split.txt", 4, lambda line: b"four" + line[1:])
    return ["data", f"cub:{tmp}"], ["train_test_split.txt, line 4", "image id 'four' is not an integer"]


def _cub_duplicate_id(tmp, ckpt):
    folder = _write_cub(tmp)
    _edit_line(folder / "image_class_labels.txt", 5, lambda line: b"4 1")
    return ["data", f"cub:{tmp}"], ["image_class_labels.txt, line 5", "id 4 appears twice", "line 4"]


def _cub_box_outside(tmp, ckpt):
    folder = _write_cub(tmp)
    _edit_line(folder / "bounding_boxes.txt", 6, lambda line: b"6 70.0 8.0 30.0 20.0")
    return ["data", f"cub:{tmp}"], ["bounding_boxes.txt, line 6", "outside the image (64x48 px)", "x=70"]


def _cub_part_not_a_number(tmp, ckpt):
    folder = _write_cub(tmp)
    _edit_line(folder / "parts" / "part_locs.txt", 2, lambda line: b"2 1 twenty 15.0 1")
    return ["data", f"cub:{tmp}"], ["part_locs.txt, line 2", "x 'twenty' is not a number"]


def _cub_unreadable_images(tmp, ckpt):
    folder = _write_cub(tmp)
    for i in (5, 7):
        (folder / "images" / f"00{1 + i % 2}.Bird_{1 + i % 2}" / f"Bird_{i:04d}.jpg").write_bytes(b"<html>404</html>")
    return ["data", f"cub:{tmp}"], ["Bird_0005.jpg", "2 of 8 listed images cannot be read", "images.txt, line 5",
                                    "Bird_0007.jpg", "images.txt, line 7"]


def _cub_option_typo(tmp, ckpt):
    _write_cub(tmp)
    return ["data", f"cub:{tmp},clases=1-10"], ["clases", "did you mean classes?", "allowed: classes"]


def _one_class_folder(tmp, ckpt):
    for k in range(4):
        _photo(tmp / "photos" / "cats" / f"{k}.jpg", seed=k)
    return ["train", "--data", f"folder:{tmp / 'photos'}", "--out", str(tmp / "run"), *TINY], \
        ["photos", "only one class ('cats')", "at least two classes", "<class>/*.jpg"]


def _empty_folder(tmp, ckpt):
    (tmp / "photos").mkdir()
    return ["data", f"folder:{tmp / 'photos'}"], ["photos", "holds no images", "<class>/*.jpg"]


def _images_without_class_folders(tmp, ckpt):
    for k in range(3):
        _photo(tmp / "photos" / f"{k}.png", seed=k)
    return ["data", f"folder:{tmp / 'photos'}"], ["photos", "holds 3 image(s) but no class subfolders",
                                                  "its own subfolder"]


def _train_without_test(tmp, ckpt):
    for cls in ("a", "b"):
        for k in range(2):
            _photo(tmp / "photos" / "train" / cls / f"{k}.png", seed=k)
    return ["data", f"folder:{tmp / 'photos'}"], ["photos", "has train/ but no test/", "test/<class>/"]


def _attend_empty_folder(tmp, ckpt):
    (tmp / "photos").mkdir()
    (tmp / "photos" / "notes.txt").write_text("no pictures here")
    return ["attend", str(ckpt), str(tmp / "photos"), "--out", str(tmp / "out")], \
        ["photos", "no image files", "1 other file(s), e.g. notes.txt"]


def _attend_a_text_file(tmp, ckpt):
    (tmp / "notes.jpg").write_text("not a picture")
    return ["attend", str(ckpt), str(tmp / "notes.jpg"), "--out", str(tmp / "out")], \
        ["notes.jpg", "cannot read", "as an image"]


def _attend_int32_tiff(tmp, ckpt):
    Image.fromarray(np.array([[0, 70000], [5, 9]], dtype=np.int32)).save(tmp / "counts.tif")
    return ["attend", str(ckpt), str(tmp / "counts.tif"), "--out", str(tmp / "out")], \
        ["counts.tif", "32-bit integer image with values 0..70000", "16-bit PNG"]


def _attend_float_tiff(tmp, ckpt):
    Image.fromarray(np.array([[0.0, 3.5], [1.0, 0.5]], dtype=np.float32)).save(tmp / "depth.tif")
    return ["attend", str(ckpt), str(tmp / "depth.tif"), "--out", str(tmp / "out")], \
        ["depth.tif", "floating-point image with values 0..3.5", "[0, 1]"]


def _truncated_cifar(tmp, ckpt):
    folder = _cifar100(tmp)
    (folder / "train").write_bytes((folder / "train").read_bytes()[:300])
    return ["data", f"cifar100:{tmp}"], [str(folder / "train"), "truncated", "extract the official archive again"]


def _cifar10_as_cifar100(tmp, ckpt):
    _cifar10(tmp)
    return ["data", f"cifar100:{tmp}"], [str(tmp), "holds CIFAR-10", f"load it as cifar10:{tmp}"]


def _cifar100_as_cifar10(tmp, ckpt):
    folder = _cifar100(tmp)
    return ["data", f"cifar10:{folder}"], [str(folder), "holds CIFAR-100", f"load it as cifar100:{folder}"]


def _svhn_wrong_variables(tmp, ckpt):
    from scipy.io import savemat

    for part in ("train", "test"):
        savemat(tmp / f"{part}_32x32.mat", {"images": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1))})
    return ["data", f"svhn:{tmp}"], ["train_32x32.mat", "has no 'X' and 'y' variables", "images 32x32x3x2",
                                     "format 2"]


def _mask_of_another_shape(tmp, ckpt):
    _photo(tmp / "set" / "images" / "bird.png", size=(40, 30))
    (tmp / "set" / "masks").mkdir()
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp / "set" / "masks" / "bird.png")
    return ["localise", str(ckpt), "--data", f"masks:{tmp / 'set'}", "--out", str(tmp / "report")], \
        ["masks/bird.png", "40x40 px", "40x30 px", "another aspect ratio", "save the mask at the image's size"]


def _synthetic_no_train_images(tmp, ckpt):
    return ["train", "--data", "synthetic,num_train=0", "--out", str(tmp / "run"), *TINY], \
        ["num_train", "must be in [1,", "got '0'"]


def _bad_pixel_limit(tmp, ckpt):  # run with LTPA_MAX_IMAGE_PIXELS=lots (ENVIRONMENT)
    _photo(tmp / "a.png")
    return ["attend", str(ckpt), str(tmp / "a.png"), "--out", str(tmp / "out")], \
        ["LTPA_MAX_IMAGE_PIXELS='lots'", "whole number"]


CASES = {
    "14000x14000 PNG": _huge_png,
    "truncated CUB JPEGs in training": _truncated_cub_jpegs,
    "non-UTF-8 byte in CUB images.txt": _cub_non_utf8,
    "CUB line with a field too many": _cub_field_count,
    "CUB id that is not an integer": _cub_non_integer_id,
    "CUB id given twice": _cub_duplicate_id,
    "CUB box outside its image": _cub_box_outside,
    "CUB part coordinate not a number": _cub_part_not_a_number,
    "CUB images that are not images": _cub_unreadable_images,
    "CUB option typo": _cub_option_typo,
    "one-class folder": _one_class_folder,
    "empty folder": _empty_folder,
    "images without class folders": _images_without_class_folders,
    "train/ without test/": _train_without_test,
    "attend a folder without images": _attend_empty_folder,
    "attend a text file": _attend_a_text_file,
    "attend a 32-bit TIFF outside 16 bit": _attend_int32_tiff,
    "attend a float TIFF outside [0, 1]": _attend_float_tiff,
    "truncated CIFAR pickle": _truncated_cifar,
    "CIFAR-10 given as cifar100": _cifar10_as_cifar100,
    "CIFAR-100 given as cifar10": _cifar100_as_cifar10,
    "SVHN .mat with other variables": _svhn_wrong_variables,
    "mask of another aspect ratio": _mask_of_another_shape,
    "synthetic,num_train=0": _synthetic_no_train_images,
    "LTPA_MAX_IMAGE_PIXELS not a number": _bad_pixel_limit,
}
ENVIRONMENT = {"LTPA_MAX_IMAGE_PIXELS not a number": {"LTPA_MAX_IMAGE_PIXELS": "lots"}}


def _tree(*roots):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_file(case, tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.delenv("LTPA_MAX_IMAGE_PIXELS", raising=False)
    for name, value in ENVIRONMENT.get(case, {}).items():
        monkeypatch.setenv(name, value)
    argv, expected = CASES[case](tmp_path, checkpoint)
    before = _tree(tmp_path, checkpoint.parent.parent)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith(f"ltpa {argv[0]}: error: "), err
    for text in expected:
        assert text in last, f"{text!r} not in {last!r}"
    assert _tree(tmp_path, checkpoint.parent.parent) == before, "files were written or changed"


# --- not errors, but said --------------------------------------------------------------------

def test_non_image_files_in_a_folder_are_counted(tmp_path, capsys):
    for cls in ("a", "b"):
        for k in range(3):
            _photo(tmp_path / cls / f"{k}.png", seed=k)
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "b" / "labels.csv").write_text("x")
    assert main(["data", f"folder:{tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 file(s) that are not images (suffix .csv, .txt)" in out


def test_attend_counts_skipped_files_of_a_folder(tmp_path, checkpoint, caplog):
    _photo(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "readme.md").write_text("x")
    with caplog.at_level(logging.WARNING, logger="ltpa"):
        assert main(["-q", "attend", str(checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    assert any("skipped 1 file(s) that are not images" in r.getMessage() for r in caplog.records)


def test_cub_image_missing_on_disk_names_its_line(tmp_path):
    folder = _write_cub(tmp_path)
    (folder / "images" / "002.Bird_2" / "Bird_0003.jpg").unlink()
    warnings = load_data(f"cub:{tmp_path}").warnings
    assert any("1 of 8 listed images are missing on disk and were dropped" in w and "Bird_0003.jpg" in w
               and "images.txt, line 3" in w for w in warnings)


def test_pixel_limit_can_be_raised_with_the_environment(tmp_path, monkeypatch):
    path = _png_of_zeros(tmp_path / "wide.png", 300, 200)
    monkeypatch.setenv("LTPA_MAX_IMAGE_PIXELS", "50000")
    with pytest.raises(ValueError, match=r"300x200 pixels .* over ltpa's limit of 50,000"):
        open_image(path)
    monkeypatch.setenv("LTPA_MAX_IMAGE_PIXELS", "60000")
    assert open_image(path).size == (300, 200)


# --- every image mode to the 8-bit RGB it should give ----------------------------------------

def _png16_rgb(path, rgb16):
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16) written byte by byte."""
    height, width, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _grey(*values):
    return [[v, v, v] for v in values]


def _mode_i16(tmp):
    Image.fromarray(np.array([[0, 25700, 65535, 1000]], dtype=np.uint16)).save(tmp / "x.png")
    return tmp / "x.png", "I;16", _grey(0, 100, 255, 4)  # v * 255 / 65535, rounded


def _mode_rgb16(tmp):
    _png16_rgb(tmp / "x.png", np.array([[[65535, 0, 32768], [256 * 77, 512, 65280]]], dtype=np.uint16))
    return tmp / "x.png", "RGB", [[255, 0, 128], [77, 2, 255]]  # PIL keeps the high byte


def _mode_i32(tmp):
    Image.fromarray(np.array([[0, 65535, 32768, 257]], dtype=np.int32)).save(tmp / "x.tif")
    return tmp / "x.tif", "I", _grey(0, 255, 128, 1)


def _mode_f(tmp):
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)).save(tmp / "x.tif")
    return tmp / "x.tif", "F", _grey(0, 128, 255, 64)


def _mode_palette_transparent(tmp):
    img = Image.new("P", (3, 1), 0)
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    img.putpixel((1, 0), 1)
    img.putpixel((2, 0), 2)
    img.save(tmp / "x.png", transparency=0)  # red is the transparent colour
    return tmp / "x.png", "P", [[255, 255, 255], [0, 255, 0], [0, 0, 255]]


def _mode_la(tmp):
    Image.fromarray(np.array([[[100, 255], [100, 128], [100, 0]]], dtype=np.uint8), mode="LA").save(tmp / "x.png")
    return tmp / "x.png", "LA", _grey(100, 177, 255)  # 100 * a + 255 * (1 - a)


def _mode_rgba(tmp):
    pixels = np.array([[[10, 20, 30, 255], [200, 0, 0, 0], [0, 0, 200, 51]]], dtype=np.uint8)
    Image.fromarray(pixels, mode="RGBA").save(tmp / "x.png")
    return tmp / "x.png", "RGBA", [[10, 20, 30], [255, 255, 255], [204, 204, 244]]


def _mode_cmyk_jpeg(tmp):
    Image.new("CMYK", (16, 16), (100, 50, 0, 30)).save(tmp / "x.jpg", quality=100)
    return tmp / "x.jpg", "CMYK", [[137, 181, 225]] * 2  # (255 - c)(255 - k) / 255


def _mode_grey_jpeg(tmp):
    Image.new("L", (16, 16), 77).save(tmp / "x.jpg", quality=100)
    return tmp / "x.jpg", "L", _grey(77, 77)


def _mode_bilevel(tmp):
    img = Image.new("1", (2, 1), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp / "x.png")
    return tmp / "x.png", "1", _grey(0, 255)


MODE_FILES = {"16-bit grey PNG (I;16)": _mode_i16, "16-bit RGB PNG": _mode_rgb16, "32-bit int TIFF (I)": _mode_i32,
              "float TIFF (F)": _mode_f, "palette PNG with a transparent colour": _mode_palette_transparent,
              "grey + alpha PNG (LA)": _mode_la, "RGBA PNG": _mode_rgba, "CMYK JPEG": _mode_cmyk_jpeg,
              "grey JPEG (L)": _mode_grey_jpeg, "bilevel PNG (1)": _mode_bilevel}


@pytest.mark.parametrize("kind", list(MODE_FILES))
def test_every_image_mode_reads_to_known_rgb(kind, tmp_path):
    path, mode, expected = MODE_FILES[kind](tmp_path)
    with Image.open(path) as raw:
        assert raw.mode == mode  # the file really is in that mode
    rgb = np.asarray(open_image(path))
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    got = rgb[0, :len(expected)].astype(int)
    tolerance = 2 if path.suffix == ".jpg" else 0  # JPEG rounds colours a little
    assert np.abs(got - np.array(expected)).max() <= tolerance, f"{kind}: {got.tolist()} != {expected}"
    # training decodes the same values: a centre square at the image's own scale is not resampled
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    images, _, _ = materialise(Split(torch.zeros(1, dtype=torch.int64), files=[path]), side, workers=0)
    assert np.array_equal(images[0].permute(1, 2, 0).numpy(), rgb[top:top + side, left:left + side])


# --- the real samples ------------------------------------------------------------------------

needs_cub = pytest.mark.skipif(not CUB_SAMPLE.is_dir(), reason=f"real CUB sample not found at {CUB_SAMPLE}")


def _sample_grey_jpeg():
    for path in sorted((CUB_SAMPLE / "images").rglob("*.jpg")):
        with Image.open(path) as img:
            if img.mode == "L":
                return path
    pytest.fail("the CUB sample's README promises one grayscale JPEG; none found")


@pytest.mark.integration
@needs_cub
def test_real_grayscale_cub_jpeg_reads_as_equal_channels(tmp_path, checkpoint, capsys):
    path = _sample_grey_jpeg()
    rgb = np.asarray(open_image(path))
    with Image.open(path) as img:
        grey = np.asarray(img)
    assert rgb.shape == (*grey.shape, 3)
    assert all(np.array_equal(rgb[..., c], grey) for c in range(3))
    assert main(["-q", "attend", str(checkpoint), str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "predictions.json").is_file()


@pytest.mark.integration
@needs_cub
def test_real_cub_with_truncated_jpegs_names_them_all(tmp_path):
    source = load_data(f"cub:{CUB_SAMPLE.parent}")
    files = source.test.files[:6]
    copies = []
    for k, path in enumerate(files):
        copy = tmp_path / path.name
        data = path.read_bytes()
        copy.write_bytes(data[:len(data) // 2] if k in (1, 4) else data)
        copies.append(copy)
    split = Split(source.test.targets[:6], files=copies, name="test")
    with pytest.raises(ValueError) as info:
        materialise(split, 32, workers=2)
    message = str(info.value)
    assert "cannot decode 2 of 6 images of the test split" in message
    assert files[1].name in message and files[4].name in message and "\n" not in message


@pytest.mark.integration
@needs_cub
def test_real_cub_annotation_with_a_bad_box_names_file_and_line(tmp_path, capsys):
    folder = tmp_path / "CUB_200_2011"
    (folder / "parts").mkdir(parents=True)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
                 "bounding_boxes.txt", "parts/parts.txt", "parts/part_locs.txt"):
        shutil.copy(CUB_SAMPLE / name, folder / name)
    (folder / "images").symlink_to(CUB_SAMPLE / "images")
    first = (folder / "bounding_boxes.txt").read_text().splitlines()[9].split()[0]
    _edit_line(folder / "bounding_boxes.txt", 10, lambda line: f"{first} 4000.0 10.0 50.0 50.0".encode())
    before = _tree(tmp_path)
    assert main(["data", f"cub:{tmp_path}"]) == 2
    last = capsys.readouterr().err.strip().split("\n")[-1]
    assert last.startswith("ltpa data: error: ") and "bounding_boxes.txt, line 10" in last
    assert "outside the image" in last and _tree(tmp_path) == before
