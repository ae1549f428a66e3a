import pytest
import torch
from PIL import Image

from ltpa.data.materialise import materialise
from ltpa.data.sources import load_data


def _images(folder, count, size=(20, 12), mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        Image.new(mode, size, (k * 10, 50, 90) if mode == "RGB" else 100).save(folder / f"{k}.png")


def test_train_and_test_subfolders_are_used_as_given(tmp_path):
    _images(tmp_path / "train" / "cat", 3)
    _images(tmp_path / "train" / "dog", 2)
    _images(tmp_path / "test" / "cat", 1)
    _images(tmp_path / "test" / "dog", 1, mode="L")
    source = load_data(f"folder:{tmp_path}")
    assert source.class_names == ("cat", "dog") and source.warnings == []
    assert source.train.targets.tolist() == [0, 0, 0, 1, 1] and source.test.targets.tolist() == [0, 1]
    assert source.train.sizes[0].tolist() == [12, 20]
    images, boxes, parts = materialise(source.test, 8, workers=0)
    assert images.shape == (2, 3, 8, 8) and boxes is None and parts is None


def test_a_class_missing_from_test_is_reported(tmp_path):
    _images(tmp_path / "train" / "cat", 1)
    _images(tmp_path / "train" / "dog", 1)
    _images(tmp_path / "test" / "cat", 1)
    (tmp_path / "test" / "dog").mkdir()
    source = load_data(f"folder:{tmp_path}")
    assert source.num_classes == 2
    assert any("1 class(es) have no test images" in w and "dog" in w for w in source.warnings)


def test_flat_folder_gets_a_seeded_stratified_split_with_a_warning(tmp_path):
    _images(tmp_path / "a", 10)
    _images(tmp_path / "b", 5)
    source = load_data(f"folder:{tmp_path},test_fraction=0.2,seed=3")
    assert len(source.test) == 3 and len(source.train) == 12
    assert torch.bincount(source.test.targets).tolist() == [2, 1]
    assert any("made a seeded split of 3 test / 12 train" in w for w in source.warnings)
    again = load_data(f"folder:{tmp_path},test_fraction=0.2,seed=3")
    assert again.test.files == source.test.files
    assert set(source.test.files).isdisjoint(source.train.files)


def test_unreadable_image_is_dropped_with_a_count(tmp_path):
    _images(tmp_path / "a", 2)
    _images(tmp_path / "b", 2)
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    source = load_data(f"folder:{tmp_path},test_fraction=0")
    assert len(source.train) == 4
    assert any("1 of 5 train files are unreadable" in w and "broken.jpg" in w for w in source.warnings)


def test_truncated_image_fails_at_decode_naming_the_file(tmp_path):
    _images(tmp_path / "a", 1, size=(64, 64))
    _images(tmp_path / "b", 1, size=(64, 64))  # a one-class folder is refused before any decoding
    path = tmp_path / "a" / "0.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    path.write_bytes(path.read_bytes()[:200])  # header intact, pixel data cut
    source = load_data(f"folder:{tmp_path},test_fraction=0")
    with pytest.raises(ValueError, match=r"cannot decode .*0\.png"):
        materialise(source.train, 8, workers=0)


def test_empty_or_missing_folder_is_an_error(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        load_data(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_data(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="nothing to download"):
        load_data(f"folder:{tmp_path}", download=True)


def test_materialise_with_workers_matches_in_process_and_caches(tmp_path):
    _images(tmp_path / "data" / "a", 3, size=(30, 20))
    _images(tmp_path / "data" / "b", 3, size=(16, 24))
    split = load_data(f"folder:{tmp_path / 'data'},test_fraction=0").train
    direct = materialise(split, 12, workers=0)[0]
    cache = tmp_path / "cache"
    with_workers = materialise(split, 12, workers=2, cache_dir=cache)[0]
    assert torch.equal(direct, with_workers) and direct.shape == (6, 3, 12, 12)
    stored = list(cache.glob("materialise-*.safetensors"))
    assert len(stored) == 1
    assert torch.equal(materialise(split, 12, workers=0, cache_dir=cache)[0], direct)
    materialise(split, 14, workers=0, cache_dir=cache)  # another size is another entry
    assert len(list(cache.glob("materialise-*.safetensors"))) == 2
    _images(tmp_path / "data" / "a", 1, size=(40, 20))  # rewriting a file changes the key
    split = load_data(f"folder:{tmp_path / 'data'},test_fraction=0").train
    materialise(split, 12, workers=0, cache_dir=cache)
    assert len(list(cache.glob("materialise-*.safetensors"))) == 3
