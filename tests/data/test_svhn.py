import numpy as np
import pytest
import torch

from ltpa.data.sources import load_data

scipy_io = pytest.importorskip("scipy.io", reason="SVHN .mat files need scipy")


def _write(path, labels, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
    scipy_io.savemat(path, {"X": x, "y": np.asarray(labels, dtype=np.uint8).reshape(-1, 1)})
    return x


def test_svhn_maps_label_10_to_digit_0_and_transposes(tmp_path):
    x = _write(tmp_path / "train_32x32.mat", [10, 1, 9, 10, 5])
    _write(tmp_path / "test_32x32.mat", [3, 10], seed=1)
    source = load_data(f"svhn:{tmp_path}")
    assert source.train.targets.tolist() == [0, 1, 9, 0, 5]
    assert source.test.targets.tolist() == [3, 0]
    assert source.class_names == tuple("0123456789")
    assert source.train.images.shape == (5, 3, 32, 32) and source.train.images.dtype == torch.uint8
    assert source.train.images[2, 1, 4, 7] == x[4, 7, 1, 2]  # (H, W, C, N) -> (N, C, H, W)


def test_svhn_extra_is_appended_to_train(tmp_path):
    _write(tmp_path / "train_32x32.mat", [1, 2])
    _write(tmp_path / "test_32x32.mat", [3])
    _write(tmp_path / "extra_32x32.mat", [4, 5, 6])
    assert len(load_data(f"svhn:{tmp_path}").train) == 2
    source = load_data(f"svhn:{tmp_path},extra=true")
    assert source.train.targets.tolist() == [1, 2, 4, 5, 6]


def test_svhn_extra_missing_says_where_to_get_it(tmp_path):
    _write(tmp_path / "train_32x32.mat", [1])
    _write(tmp_path / "test_32x32.mat", [1])
    with pytest.raises(FileNotFoundError) as info:
        load_data(f"svhn:{tmp_path},extra=yes")
    text = str(info.value)
    assert str(tmp_path / "extra_32x32.mat") in text
    assert "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat" in text and "pass download=True" in text
    assert "pass --download" in info.value.render(cli=True)  # what `ltpa` prints


def test_svhn_labels_out_of_range_are_an_error(tmp_path):
    _write(tmp_path / "train_32x32.mat", [1, 11])
    _write(tmp_path / "test_32x32.mat", [1])
    with pytest.raises(ValueError, match="outside 1-10"):
        load_data(f"svhn:{tmp_path}")


def test_svhn_truncated_file_names_it(tmp_path):
    _write(tmp_path / "train_32x32.mat", list(range(1, 11)))
    _write(tmp_path / "test_32x32.mat", [1])
    data = (tmp_path / "train_32x32.mat").read_bytes()
    (tmp_path / "train_32x32.mat").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        load_data(f"svhn:{tmp_path}")
    assert "train_32x32.mat" in str(info.value)


def test_svhn_bad_option_value(tmp_path):
    with pytest.raises(ValueError, match="true or false"):
        load_data(f"svhn:{tmp_path},extra=maybe")
