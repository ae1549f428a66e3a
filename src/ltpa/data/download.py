"""Official download locations of the real data sets, checksummed fetching and safe extraction.

Only an archive that ltpa downloads itself is checked against the official checksum: files a
user placed by hand (a re-packed subset, say) are accepted as long as they load. A download goes
to a temporary file in the destination folder and is renamed only once complete and verified,
so an interrupted or corrupted download never looks like a finished one.
"""
from __future__ import annotations

import hashlib
import logging
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .._files import atomic_writer
from ..errors import MissingFileError, Option

__all__ = [
    "Resource",
    "RESOURCES",
    "download_file",
    "extract_archive",
    "ensure_files",
    "missing_files_error",
    "file_md5",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One official file to fetch.

    Attributes:
        url: where the publisher serves it.
        md5: hex md5 of the official file.
        filename: name to save it under, in the data root.
        extract: unpack it (tar or zip) into the data root after download.
        description: what to tell a user who has to fetch it by hand.
    """

    url: str
    md5: str
    filename: str
    extract: bool
    description: str


RESOURCES: dict[str, tuple[Resource, ...]] = {
    "cifar10": (Resource(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
        "cifar-10-python.tar.gz", True, "the CIFAR-10 'python version' archive"),),
    "cifar100": (Resource(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python.tar.gz", True, "the CIFAR-100 'python version' archive"),),
    "svhn_train": (Resource(
        "http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373",
        "train_32x32.mat", False, "the SVHN cropped-digits train set (format 2)"),),
    "svhn_test": (Resource(
        "http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "eb5a983be6a315427106f1b43b76c8d1",
        "test_32x32.mat", False, "the SVHN cropped-digits test set (format 2)"),),
    "svhn_extra": (Resource(
        "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7",
        "extra_32x32.mat", False, "the SVHN cropped-digits extra set (format 2)"),),
    "cub": (Resource(
        "https://data.caltech.edu/records/65de6-vjr76/files/CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78",
        "CUB_200_2011.tgz", True, "the CUB-200-2011 archive"),),
}

Opener = Callable[[str], IO[bytes]]


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: str | Path, *, md5: str | None = None, opener: Opener | None = None) -> Path:
    """Fetch ``url`` to ``dest`` through a temporary file in the same folder, then rename.

    Args:
        url: any URL ``urllib`` opens (``https://``, ``http://``, ``file://``).
        dest: the final path; its folder is created.
        md5: expected hex md5; the file is kept only if it matches.
        opener: replaces ``urllib.request.urlopen`` (tests).

    Returns:
        ``dest``.

    Raises:
        OSError: the download failed (the message names the URL).
        ValueError: the checksum differs; nothing is left at ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    opener = opener or urllib.request.urlopen
    digest = hashlib.md5()
    # The one atomic writer: the file appears complete and verified or not at all, with the
    # umask's permissions (a download is data to share, not a secret).
    with atomic_writer(dest) as out:
        logger.info("downloading %s to %s", url, dest)
        try:
            with opener(url) as response:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as err:  # URLError is an OSError
            raise OSError(f"could not download {url} ({err}); check the connection, or fetch the file "
                          f"by hand and put it at {dest}") from err
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise ValueError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}; the "
                             f"download is corrupt or the file changed upstream. Nothing was saved; try again "
                             f"or fetch it by hand and put it at {dest}")
    return dest


def _check_member(name: str, dest: Path, archive: Path) -> Path:
    target = (dest / name).resolve()
    if Path(name).is_absolute() or not target.is_relative_to(dest):
        raise ValueError(f"refusing to extract {name!r} from {archive}: it would land outside {dest} "
                         f"(absolute path or '..'); the archive is not a genuine data set archive")
    return target


def extract_archive(archive: str | Path, dest: str | Path) -> list[Path]:
    """Unpack a tar (any compression) or zip archive into ``dest``, refusing unsafe members.

    Members with absolute paths or ``..`` that would leave ``dest``, links and device files are
    rejected before anything is written.

    Returns:
        The extracted paths.

    Raises:
        ValueError: an unsafe member, or a file that is neither tar nor zip.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member.name, dest, archive)
                if not (member.isfile() or member.isdir()):
                    raise ValueError(f"refusing to extract {member.name!r} from {archive}: links and special "
                                     f"files are not expected in a data set archive")
            if hasattr(tarfile, "data_filter"):  # belt and braces where Python has PEP 706 filters
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(dest, members=members)
            return [dest / m.name for m in members]
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            for name in names:
                _check_member(name, dest, archive)
            zf.extractall(dest)
            return [dest / n for n in names]
    raise ValueError(f"{archive} is neither a tar nor a zip archive; delete it and download again")


def missing_files_error(name: str, missing: Sequence[Path], root: Path,
                        resources: Sequence[Resource]) -> FileNotFoundError:
    """One error (one line) that says what is missing, where it belongs and where to get it."""
    shown = ", ".join(map(str, missing[:4])) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    hows = []
    for res in resources:
        how = f"download {res.url} and extract it into {root}" if res.extract else \
            f"download {res.url} to {root / res.filename}"
        hows.append(f"get {res.description}: {how}")
    return MissingFileError(f"{name}: {len(missing)} required file(s) missing under {root} ({shown}); "
                            f"{'; '.join(hows)}; or ", Option("download"), " and ltpa fetches and verifies it")


def ensure_files(name: str, root: Path, required: Sequence[Path], resources: Sequence[Resource], *,
                 download: bool, opener: Opener | None = None) -> None:
    """Make sure every path in ``required`` exists, fetching ``resources`` if allowed.

    Raises:
        FileNotFoundError: files are missing and ``download`` is False, or still missing after
            the download (the archive does not hold what was expected).
    """
    missing = [p for p in required if not p.exists()]
    if not missing:
        return
    if not download:
        raise missing_files_error(name, missing, root, resources)
    root.mkdir(parents=True, exist_ok=True)
    for res in resources:
        path = root / res.filename
        # A plain file already in place is the user's (or an earlier download's): keep it. An
        # archive is fetched again unless it is the official one.
        if not (path.exists() and (not res.extract or file_md5(path) == res.md5)):
            download_file(res.url, path, md5=res.md5, opener=opener)
        if res.extract:
            extract_archive(path, root)
    missing = [p for p in required if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{name}: downloaded and extracted the official files into {root}, but "
                                f"{', '.join(map(str, missing))} is still missing; check the root folder")
