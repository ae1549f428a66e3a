"""CUB-200-2011 from the official folder layout, including folders restricted to some classes.

Read from ``CUB_200_2011/``: ``images.txt`` (id, path), ``image_class_labels.txt`` (id, class id),
``train_test_split.txt`` (id, 1 = train), ``classes.txt`` (class id, name), and when present
``bounding_boxes.txt`` (id, x, y, w, h) and ``parts/parts.txt`` + ``parts/part_locs.txt`` (id,
part id, x, y, visible). Coordinates stay in the original file's pixels:

* a box ``x y w h`` becomes ``(x, y, x + w, y + h)`` in continuous coordinates;
* a part at ``(x, y)`` marks pixel column x, row y, so it becomes its centre ``(x + 0.5, y + 0.5)``;
  invisible parts are NaN with ``part_visible`` False.

Every annotation file is checked line by line; an error names the file, the line and what the
line should hold: bytes that are not UTF-8, a wrong number of fields, a field that is not a
number, an id given twice, a box with no area or outside its image (by more than
``max(2 px, 2%)`` of the image's side: the official boxes reach at most a pixel past the border).
Images listed but missing on disk are dropped, with a warning that counts them and names the
``images.txt`` lines; files that are on disk but cannot be read as images (or are over the pixel
limit) are an error that lists them.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from .download import RESOURCES, ensure_files
from .images import ImageReadError, read_image_sizes
from .sources import DataSource, Split, check_options

__all__ = ["load_cub", "parse_class_selection", "CUB_NUM_CLASSES"]

logger = logging.getLogger(__name__)

CUB_NUM_CLASSES = 200
_REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
_SHOWN = 3  # files named in a message about many files


def _folder(root: Path) -> Path:
    if root.name == "CUB_200_2011" or (root / "images.txt").exists():
        return root
    return root / "CUB_200_2011"


class _Table(dict):
    """Rows of an annotation file keyed by id, with the line each came from (``line[key]``)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.line: dict[Any, int] = {}

    def where(self, key: Any) -> str:
        return f"{self.path}, line {self.line[key]}"


def _read_table(path: Path, fields: tuple[tuple[str, type], ...], key_columns: int = 1) -> _Table:
    """Rows of a whitespace-separated file keyed by their first ``key_columns`` ints.

    ``fields`` names each column and its type; the last column may contain spaces when it is
    a string (names, paths). Every error names the file, the line and the expected layout.
    """
    layout = " ".join(f"<{name}>" for name, _ in fields)
    rows = _Table(path)
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}, line {number}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not "
                             f"UTF-8 text; the official file is UTF-8: extract it again from the archive, or fix "
                             f"that line") from err
        if not line:
            continue
        last_is_text = fields[-1][1] is str
        pieces = line.split(maxsplit=len(fields) - 1) if last_is_text else line.split()
        where = f"{path}, line {number}"
        if len(pieces) != len(fields):
            raise ValueError(f"{where}: expected {len(fields)} fields ({layout}), found {len(pieces)} in "
                             f"{line!r}; fix or remove the line")
        values = []
        for (name, kind), piece in zip(fields, pieces):
            try:
                value = kind(piece)
            except ValueError as err:
                noun = "an integer" if kind is int else "a number"
                raise ValueError(f"{where}: {name} {piece!r} is not {noun} in {line!r}; lines read "
                                 f"{layout}") from err
            if kind is float and not math.isfinite(value):
                raise ValueError(f"{where}: {name} {piece!r} is not a finite number in {line!r}")
            values.append(value)
        key = values[0] if key_columns == 1 else tuple(values[:key_columns])
        if key in rows:
            raise ValueError(f"{where}: id {key} appears twice (first on line {rows.line[key]}); remove one")
        rows[key] = tuple(values[key_columns:])
        rows.line[key] = number
    return rows


def parse_class_selection(value: Any, class_ids: list[int]) -> str | list[int]:
    """``"present"``, ``"all"`` or a sorted list of class ids from ``"1-10+17"`` / a list of ints."""
    if isinstance(value, str) and value.strip().lower() in ("present", "all"):
        return value.strip().lower()
    ids: set[int] = set()
    if isinstance(value, (list, tuple)):
        ids = {int(v) for v in value}
    else:
        for piece in str(value).split("+"):
            lo, dash, hi = piece.strip().partition("-")
            try:
                first, last = int(lo), int(hi) if dash else int(lo)
            except ValueError as err:
                raise ValueError(f"cub: option classes must be present, all, or class ids such as 1-10 or "
                                 f"1-5+17, got {value!r}") from err
            ids.update(range(first, last + 1))
    unknown = sorted(ids - set(class_ids))
    if unknown or not ids:
        raise ValueError(f"cub: classes={value!r} names ids not in classes.txt ({unknown[:5]}); valid ids are "
                         f"{min(class_ids)}-{max(class_ids)}")
    return sorted(ids)


def load_cub(root: str | Path, *, options: dict[str, Any] | None = None, download: bool = False) -> DataSource:
    """Load the CUB-200-2011 file lists and annotations (images are decoded by ``materialise``).

    Args:
        root: the ``CUB_200_2011`` folder or the folder holding it.
        options: ``classes`` = ``"present"`` (default), ``"all"`` or ids like ``"1-10+17"``;
            see :mod:`ltpa.data.sources`.
        download: fetch and extract the official archive if files are missing.

    Returns:
        A :class:`DataSource` whose splits hold ``files``, ``sizes``, ``boxes`` and ``parts``
        (when the annotation files exist). Labels are 0..K-1 over the selected classes, in
        class-id order; with ``classes=all`` they are ``class id - 1`` over all 200.

    Raises:
        FileNotFoundError: a required annotation file is missing.
        ValueError: a malformed line, inconsistent ids, or class ids out of range (names the file).
    """
    options = dict(options or {})
    check_options("cub", options, ("classes",))
    root = Path(root)
    folder = _folder(root)
    ensure_files("cub", folder.parent, [folder / f for f in _REQUIRED], RESOURCES["cub"], download=download)
    warnings: list[str] = []

    paths = _read_table(folder / "images.txt", (("image id", int), ("path", str)))
    labels = _read_table(folder / "image_class_labels.txt", (("image id", int), ("class id", int)))
    is_train = _read_table(folder / "train_test_split.txt", (("image id", int), ("is_training_image", int)))
    classes = _read_table(folder / "classes.txt", (("class id", int), ("name", str)))
    class_ids = sorted(classes)
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        absent = [i for i in paths if i not in table]
        if absent:
            raise ValueError(f"{folder / name} has no entry for {len(absent)} image id(s) of images.txt, e.g. "
                             f"{absent[:5]}; the annotation files do not match")
    bad = {i: c for i, (c,) in labels.items() if i in paths and c not in classes}
    if bad:
        first = next(iter(bad.items()))
        raise ValueError(f"{labels.where(first[0])}: {len(bad)} class id(s) not in classes.txt "
                         f"(ids {class_ids[0]}-{class_ids[-1]}), e.g. image {first[0]} -> class {first[1]}; "
                         f"fix the line or add the class to classes.txt")

    ids = sorted(paths)
    files = [folder / "images" / paths[i][0] for i in ids]
    present_on_disk = [f.is_file() for f in files]
    found = iter(read_image_sizes([f for f, here in zip(files, present_on_disk) if here]))
    sizes = [next(found) if here else None for here in present_on_disk]
    unreadable = [k for k, (here, size) in enumerate(zip(present_on_disk, sizes)) if here and size is None]
    if unreadable:
        shown = ", ".join(f"{files[k]} ({paths.where(ids[k])})" for k in unreadable[:_SHOWN])
        raise ImageReadError(f"cub: {len(unreadable)} of {len(files)} listed images cannot be read as images: "
                             f"{shown}; replace them with good copies (extract the archive again) or remove "
                             f"their lines from the annotation files")
    missing = [k for k, here in enumerate(present_on_disk) if not here]
    if missing:
        shown = ", ".join(f"{files[k]} ({paths.where(ids[k])})" for k in missing[:_SHOWN])
        warnings.append(f"cub: {len(missing)} of {len(files)} listed images are missing on disk and were dropped, "
                        f"e.g. {shown}")
    keep = [k for k, s in enumerate(sizes) if s is not None]

    selection = parse_class_selection(options.get("classes", "present"), class_ids)
    present = sorted({labels[ids[k]][0] for k in keep})
    if selection == "all":
        chosen, remap = class_ids, {c: c - class_ids[0] for c in class_ids}
        if len(present) < len(class_ids):
            warnings.append(f"cub: {len(present)} of {len(class_ids)} classes present ({_ranges(present)}); "
                            f"labels keep all {len(class_ids)} classes (classes=all), so "
                            f"{len(class_ids) - len(present)} classes have no images")
    else:
        chosen = present if selection == "present" else selection
        remap = {c: k for k, c in enumerate(chosen)}
        if len(present) < len(class_ids):
            warnings.append(f"cub: {len(present)} of {len(class_ids)} classes present ({_ranges(present)})")
        if len(chosen) < len(class_ids):
            warnings.append(f"cub: training on {len(chosen)} classes ({_ranges(chosen)}), labels remapped to "
                            f"0..{len(chosen) - 1} in class-id order (classes={options.get('classes', 'present')})")
        empty = sorted(set(chosen) - set(present))
        if empty:
            warnings.append(f"cub: {len(empty)} selected classes have no images ({_ranges(empty)})")
    keep = [k for k in keep if labels[ids[k]][0] in remap]
    if not keep:
        raise ValueError(f"cub: no images left in {folder} after dropping missing files and selecting classes")

    class_names = tuple(classes[c][0] for c in chosen)
    targets = torch.tensor([remap[labels[ids[k]][0]] for k in keep], dtype=torch.int64)
    sizes_t = torch.tensor([sizes[k] for k in keep], dtype=torch.int64)
    boxes = _boxes(folder, [ids[k] for k in keep], sizes_t, warnings)
    parts, visible, part_names = _parts(folder, [ids[k] for k in keep], warnings)
    wrong = [i for i in ids if is_train[i][0] not in (0, 1)]
    if wrong:
        raise ValueError(f"{is_train.where(wrong[0])}: is_training_image of image {wrong[0]} is "
                         f"{is_train[wrong[0]][0]}; it must be 1 (train) or 0 (test)")
    split_of = torch.tensor([is_train[ids[k]][0] for k in keep])
    full = Split(targets, files=[files[k] for k in keep], sizes=sizes_t, boxes=boxes, parts=parts,
                 part_visible=visible, part_names=part_names)
    train, test = full.select(split_of == 1), full.select(split_of == 0)
    train.name, test.name = "train", "test"
    for message in warnings:
        logger.warning(message)
    return DataSource("cub", root, class_names, train, test, warnings,
                      {"classes": options.get("classes", "present")})


def _boxes(folder: Path, ids: list[int], sizes: torch.Tensor, warnings: list[str]) -> torch.Tensor | None:
    path = folder / "bounding_boxes.txt"
    if not path.exists():
        warnings.append(f"cub: {path} is missing: no bounding boxes (bbox_crop is unavailable)")
        return None
    table = _read_table(path, (("image id", int), ("x", float), ("y", float), ("width", float), ("height", float)))
    absent = [i for i in ids if i not in table]
    if absent:
        raise ValueError(f"{path} has no box for {len(absent)} image(s), e.g. ids {absent[:5]}; add a line "
                         f"'<image id> <x> <y> <width> <height>' for each")
    for image_id, (height, width) in zip(ids, sizes.tolist()):
        x, y, w, h = table[image_id]
        slack_x, slack_y = max(2.0, 0.02 * width), max(2.0, 0.02 * height)
        if w <= 0 or h <= 0 or x < -slack_x or y < -slack_y or x + w > width + slack_x or y + h > height + slack_y:
            raise ValueError(f"{table.where(image_id)}: box x={x:g} y={y:g} width={w:g} height={h:g} of image "
                             f"{image_id} is {'empty' if w <= 0 or h <= 0 else 'outside the image'} "
                             f"({width}x{height} px); fix the line (boxes are x y width height in pixels)")
    xywh = torch.tensor([table[i] for i in ids], dtype=torch.float32).reshape(-1, 4)
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)


def _parts(folder: Path, ids: list[int],
           warnings: list[str]) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[str, ...]]:
    names_path, locs_path = folder / "parts" / "parts.txt", folder / "parts" / "part_locs.txt"
    for path in (names_path, locs_path):
        if not path.exists():
            warnings.append(f"cub: {path} is missing: no part annotations")
            return None, None, ()
    names = _read_table(names_path, (("part id", int), ("name", str)))
    part_ids = sorted(names)
    locs = _read_table(locs_path, (("image id", int), ("part id", int), ("x", float), ("y", float),
                                   ("visible", int)), key_columns=2)
    index = {p: j for j, p in enumerate(part_ids)}
    row = {i: k for k, i in enumerate(ids)}
    parts = torch.full((len(ids), len(part_ids), 2), float("nan"))
    visible = torch.zeros(len(ids), len(part_ids), dtype=torch.bool)
    seen = torch.zeros_like(visible)
    rows, cols, coords, flags = [], [], [], []
    for (image_id, part_id), (x, y, vis) in locs.items():
        if image_id not in row:
            continue
        if part_id not in index:
            raise ValueError(f"{locs.where((image_id, part_id))}: part id {part_id} (image {image_id}) is not in "
                             f"{names_path}")
        rows.append(row[image_id])
        cols.append(index[part_id])
        coords.append((x + 0.5, y + 0.5))  # pixel index -> its centre
        flags.append(vis != 0)
    if rows:
        r, c, flag = torch.tensor(rows), torch.tensor(cols), torch.tensor(flags)
        seen[r, c] = True
        visible[r, c] = flag
        parts[r[flag], c[flag]] = torch.tensor(coords, dtype=torch.float32)[flag]
    if not seen.all():
        warnings.append(f"cub: {int((~seen).sum())} (image, part) pairs have no line in {locs_path}; "
                        f"they count as not visible")
    return parts, visible, tuple(names[p][0] for p in part_ids)


def _ranges(ids: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    out, start = [], None
    for k, i in enumerate(ids):
        if start is None:
            start = i
        if k + 1 == len(ids) or ids[k + 1] != i + 1:
            out.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(out) if out else "none"
