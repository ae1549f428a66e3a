import hashlib
import io
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from ltpa.data import download
from ltpa.data.download import RESOURCES, Resource, download_file, extract_archive
from ltpa.data.sources import load_data



def write_cifar100(root, n_train=20, n_test=10):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": [k % 100 for k in range(n)],
                 b"coarse_labels": [k % 20 for k in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [b"f%d" % k for k in range(100)],
            b"coarse_label_names": [b"c%d" % k for k in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fake_official(tmp_path, monkeypatch):
    """A small CIFAR-100 archive served from a file:// URL, registered as the official one."""
    staging = tmp_path / "staging"
    write_cifar100(staging, n_train=4, n_test=2)
    archive = tmp_path / "served" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-100-python", arcname="cifar-100-python")
    res = RESOURCES["cifar100"][0]
    fake = Resource(archive.as_uri(), _md5(archive), res.filename, True, res.description)
    monkeypatch.setitem(RESOURCES, "cifar100", (fake,))
    return archive


def test_official_urls_and_checksums_are_registered():
    assert RESOURCES["cifar10"][0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert RESOURCES["cifar100"][0].url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert RESOURCES["svhn_extra"][0].md5 == "a93ce644f1a588dc4d68dda5feec44a7"
    assert RESOURCES["cub"][0].url.endswith("/CUB_200_2011.tgz")


def test_download_fetches_verifies_extracts_and_loads(tmp_path, monkeypatch):
    _fake_official(tmp_path, monkeypatch)
    root = tmp_path / "data"
    source = load_data(f"cifar100:{root}", download=True)
    assert len(source.train) == 4 and (root / "cifar-100-python.tar.gz").exists()
    assert not list(root.glob("*.part"))
    # a second call finds the files and touches the network no more
    monkeypatch.setattr(download.urllib.request, "urlopen", lambda url: pytest.fail("no download expected"))
    assert len(load_data(f"cifar100:{root}", download=True).test) == 2


def test_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    archive = _fake_official(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file(archive.as_uri(), tmp_path / "out" / "x.tar.gz", md5="0" * 32)
    assert list((tmp_path / "out").iterdir()) == []


def test_download_errors_name_the_url(tmp_path):
    def failing(url):
        raise OSError("network unreachable")

    with pytest.raises(OSError, match="could not download https://example.invalid/a.bin"):
        download_file("https://example.invalid/a.bin", tmp_path / "a.bin", opener=failing)
    assert list(tmp_path.iterdir()) == []


def test_download_with_a_custom_opener(tmp_path):
    payload = b"x" * 3000000
    out = download_file("mem://data", tmp_path / "d.bin", md5=hashlib.md5(payload).hexdigest(),
                        opener=lambda url: io.BytesIO(payload))
    assert out.read_bytes() == payload


def test_user_files_with_other_checksums_are_accepted(tmp_path):
    write_cifar100(tmp_path)  # not the official bytes, and no archive: still loads
    assert len(load_data(f"cifar100:{tmp_path}").train) == 20


def _tar_with(tmp_path, name, data=b"evil", kind=tarfile.REGTYPE, linkname=""):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, linkname, len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/ltpa-absolute-escape.txt", "a/../../escape.txt"])
def test_tar_path_traversal_is_refused(tmp_path, name):
    archive = _tar_with(tmp_path, name)
    with pytest.raises(ValueError, match="outside"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists()


def test_tar_links_are_refused(tmp_path):
    archive = _tar_with(tmp_path, "link", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
    with pytest.raises(ValueError, match="links"):
        extract_archive(archive, tmp_path / "dest")


def test_zip_traversal_is_refused_and_good_zips_extract(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escape.txt", "evil")
    with pytest.raises(ValueError, match="outside"):
        extract_archive(bad, tmp_path / "dest")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("folder/file.txt", "ok")
    extract_archive(good, tmp_path / "dest")
    assert (tmp_path / "dest" / "folder" / "file.txt").read_text() == "ok"


def test_not_an_archive_is_an_error(tmp_path):
    path = tmp_path / "x.tgz"
    path.write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        extract_archive(path, tmp_path / "dest")
