import pickle

import numpy as np
import pytest
import torch

from ltpa.data.cifar import read_cifar_pickle
from ltpa.data.sources import load_data


def _batch(n, num_classes, seed, coarse=None):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(k % num_classes) for k in range(n)]
    batch = {b"data": data, b"filenames": [f"img_{k}.png".encode() for k in range(n)],
             b"batch_label": b"testing batch"}
    if coarse is None:
        batch[b"labels"] = labels
    else:
        batch[b"fine_labels"] = labels
        batch[b"coarse_labels"] = [k % coarse for k in labels]
    return batch


def _dump(obj, path):
    # Protocol 2 with bytes keys, as the official Python 2 files are written.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar100(root, n_train=20, n_test=10):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _dump(_batch(n_train, 100, 0, coarse=20), folder / "train")
    _dump(_batch(n_test, 100, 1, coarse=20), folder / "test")
    _dump({b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
           b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)]}, folder / "meta")
    return folder


def write_cifar10(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _dump(_batch(per_batch, 10, i), folder / f"data_batch_{i}")
    _dump(_batch(per_batch, 10, 9), folder / "test_batch")
    _dump({b"label_names": [f"c{k}".encode() for k in range(10)], b"num_cases_per_batch": per_batch},
          folder / "batches.meta")
    return folder


def test_cifar100_loads_images_labels_and_names(tmp_path):
    folder = write_cifar100(tmp_path)
    source = load_data(f"cifar100:{tmp_path}")
    raw = _batch(20, 100, 0, coarse=20)
    assert source.class_names == tuple(f"fine{k}" for k in range(100))
    assert source.train.images.shape == (20, 3, 32, 32) and source.train.images.dtype == torch.uint8
    assert source.test.images.shape == (10, 3, 32, 32)
    assert source.train.targets.dtype == torch.int64 and source.train.targets.tolist() == raw[b"fine_labels"]
    # rows hold the R, G and B planes one after the other
    assert source.train.images[3, 1, 0, 5] == raw[b"data"][3, 1024 + 5]
    assert source.train.files is None and source.train.boxes is None
    assert load_data(f"cifar100:{folder}").train.images.shape[0] == 20  # the inner folder works too


def test_cifar100_coarse_labels(tmp_path):
    write_cifar100(tmp_path)
    source = load_data(f"cifar100:{tmp_path},labels=coarse")
    assert source.num_classes == 20 and source.class_names[0] == "coarse0"
    assert int(source.train.targets.max()) < 20


def test_cifar10_concatenates_five_batches(tmp_path):
    write_cifar10(tmp_path)
    source = load_data(f"cifar10:{tmp_path}")
    assert len(source.train) == 20 and len(source.test) == 4 and source.num_classes == 10
    assert source.class_names[3] == "c3"


def test_a_pickle_with_other_globals_is_refused_without_running_it(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "meta"
    path.write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"__builtin__.print is not allowed") as info:
        read_cifar_pickle(path)
    assert str(path) in str(info.value)


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps({"data": np.array([object()], dtype=object)}, protocol=2))
    with pytest.raises(ValueError, match="Python objects"):
        read_cifar_pickle(path)


def test_truncated_pickle_names_the_file(tmp_path):
    folder = write_cifar100(tmp_path)
    data = (folder / "train").read_bytes()
    (folder / "train").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as info:
        load_data(f"cifar100:{tmp_path}")
    assert str(folder / "train") in str(info.value)


def test_labels_out_of_range_are_an_error(tmp_path):
    folder = write_cifar100(tmp_path)
    batch = _batch(20, 100, 0, coarse=20)
    batch[b"fine_labels"][7] = 100
    _dump(batch, folder / "train")
    with pytest.raises(ValueError, match=r"1 label\(s\) out of range \[0, 100\), e.g. 100 at index 7"):
        load_data(f"cifar100:{tmp_path}")


def test_wrong_data_shape_is_an_error(tmp_path):
    folder = write_cifar100(tmp_path)
    batch = _batch(20, 100, 0, coarse=20)
    batch[b"data"] = batch[b"data"][:, :100]
    _dump(batch, folder / "train")
    with pytest.raises(ValueError, match=r"uint8 \(N, 3072\)"):
        load_data(f"cifar100:{tmp_path}")


def test_a_missing_test_file_is_reported_with_its_path(tmp_path):
    folder = write_cifar100(tmp_path)
    (folder / "test").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_data(f"cifar100:{tmp_path}")
    assert str(folder / "test") in str(info.value) and "cifar-100-python.tar.gz" in str(info.value)
