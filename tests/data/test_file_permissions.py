"""Every file ltpa writes goes through the one atomic writer (``ltpa._files``) and gets the
permissions the user's umask gives any new file (``tempfile.mkstemp`` would force 0600)."""
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from ltpa.attention.overlays import save_figure  # noqa: E402
from ltpa.data.download import download_file  # noqa: E402
from ltpa.data.materialise import materialise  # noqa: E402
from ltpa.data.sources import load_data  # noqa: E402

UMASKS = (0o022, 0o027, 0o002)


@pytest.fixture(params=UMASKS, ids=[f"umask{u:03o}" for u in UMASKS])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def _no_temporaries(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_a_download_gets_the_umask_permissions(tmp_path, umask):
    out = download_file("mem://data", tmp_path / "d.bin", opener=lambda url: io.BytesIO(b"payload"))
    assert out.read_bytes() == b"payload" and _mode(out) == 0o666 & ~umask
    assert _no_temporaries(tmp_path)


def test_a_failed_download_leaves_the_old_file_and_no_temporary(tmp_path, umask):
    (tmp_path / "d.bin").write_bytes(b"old")
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file("mem://data", tmp_path / "d.bin", md5="0" * 32, opener=lambda url: io.BytesIO(b"new"))
    assert (tmp_path / "d.bin").read_bytes() == b"old" and _no_temporaries(tmp_path)


def test_the_materialise_cache_gets_the_umask_permissions(tmp_path, umask):
    for name in ("a", "b"):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (20, 12), (k * 10, 50, 90)).save(folder / f"{k}.png")
    split = load_data(f"folder:{tmp_path / 'data'},test_fraction=0").train
    materialise(split, 8, workers=0, cache_dir=tmp_path / "cache")
    (stored,) = list((tmp_path / "cache").iterdir())
    assert stored.suffix == ".safetensors" and _mode(stored) == 0o666 & ~umask


def test_a_figure_gets_the_umask_permissions(tmp_path, umask):
    figure = plt.figure(figsize=(1, 1))
    try:
        path = save_figure(figure, tmp_path / "f.png")
    finally:
        plt.close(figure)
    assert path.read_bytes()[:4] == b"\x89PNG" and _mode(path) == 0o666 & ~umask and _no_temporaries(tmp_path)
