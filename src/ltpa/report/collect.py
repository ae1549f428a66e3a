"""Read a run folder into a plain :class:`RunData`: every file the report may show, or why not.

Nothing here computes or draws; :mod:`ltpa.report.html` decides what to show. A run that is
still training is read as it is: files written so far, a ``metrics.jsonl`` whose last line may
be half-written (skipped, with a note), no ``final_metrics.json`` yet.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltpa.runs.checkpoints import latest_checkpoint
from ltpa.runs.config import flat_config
from ltpa.runs.layout import CHECKPOINT_DIR, CLASSES_FILE, RUN_FORMAT, TENSORBOARD_DIR

__all__ = ["RunData", "collect_run", "LOCALISATION_FILE", "SANITY_FILE"]

LOCALISATION_FILE = "localisation.json"
SANITY_FILE = "sanity.json"
_LOG_TAIL_LINES = 60
_SKIP_DIRS = (CHECKPOINT_DIR, TENSORBOARD_DIR)


@dataclass
class Found:
    """A JSON result found in the run folder or one of its subfolders (e.g. ``RUN/localise``)."""

    path: Path
    data: dict[str, Any]
    texts: dict[str, str] = field(default_factory=dict)  # e.g. diagnostics.txt beside it
    figures: dict[str, Path] = field(default_factory=dict)  # PNG files beside it, by stem


@dataclass
class RunData:
    """What a run folder holds, read once. A field is None (or empty) when its file is absent.

    Attributes:
        run_dir: the folder, as given.
        is_run: whether ``environment.json`` marks it as an ltpa run.
        config, environment: ``config.json`` and ``environment.json``.
        metrics: the records of ``metrics.jsonl``, one per finished epoch.
        final: ``final_metrics.json``; None while the run is still training (or stopped early).
        test_report: ``test_report.json`` (per-class accuracy, confusion matrix).
        class_names: ``classes.json``, else the test report's names.
        transfer: ``transfer_report.json``; transfer_text: ``transfer_report.txt``.
        localisations: every ``localisation.json`` in the folder or a subfolder (``ltpa localise
            --out RUN/...`` and the demo's own scores).
        sanity: every ``sanity.json`` in the folder or a subfolder.
        demo_summary: ``summary.txt`` of ``ltpa demo``.
        log_tail: the last lines of ``train.log``.
        checkpoint: the checkpoint to look at (the tested one, else ``best``, else the latest).
        notes: files that exist but could not be read, in words.
    """

    run_dir: Path
    is_run: bool = False
    config: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    test_report: dict[str, Any] | None = None
    class_names: list[str] | None = None
    transfer: dict[str, Any] | None = None
    transfer_text: str | None = None
    localisations: list[Found] = field(default_factory=list)
    sanity: list[Found] = field(default_factory=list)
    demo_summary: str | None = None
    log_tail: list[str] = field(default_factory=list)
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether training ended with the final test (``final_metrics.json`` exists)."""
        return self.final is not None


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        notes.append(f"{path.name} could not be read ({type(err).__name__}: {err}); its section is left out")
        return None


def _read_dict(path: Path, notes: list[str]) -> dict[str, Any] | None:
    value = _read_json(path, notes)
    if value is not None and not isinstance(value, dict):
        notes.append(f"{path.name} holds a {type(value).__name__}, not a JSON object; its section is left out")
        return None
    return value


def _read_text(path: Path, notes: list[str]) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        notes.append(f"{path.name} could not be read ({err})")
        return None


def _read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    text = _read_text(path, notes)
    if text is None:
        return []
    records, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1  # a line being appended right now, or a damaged one
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
        else:
            bad += 1
    if bad:
        notes.append(f"metrics.jsonl: {bad} line(s) that are not an epoch record were skipped")
    return records


def _find(run_dir: Path, name: str, notes: list[str]) -> list[Found]:
    """``name`` in ``run_dir`` and in its direct subfolders (not checkpoints/ or tb/), sorted."""
    candidates = [run_dir / name]
    if run_dir.is_dir():
        candidates += sorted(p / name for p in run_dir.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS)
    found = []
    for path in candidates:
        data = _read_dict(path, notes)
        if data is None:
            continue
        texts = {p.name: t for p in sorted(path.parent.glob("*.txt"))
                 if p.name != "summary.txt" and (t := _read_text(p, notes)) is not None}
        figures = {p.stem: p for p in sorted(path.parent.glob("*.png"))} if path.parent != run_dir else {}
        found.append(Found(path, data, texts if path.parent != run_dir else {}, figures))
    return found


def _checkpoint(run_dir: Path, final: dict[str, Any] | None) -> Path | None:
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if final and isinstance(final.get("checkpoint"), str):
        tested = run_dir / final["checkpoint"]
        if tested.is_file() and tested.with_suffix(".safetensors").is_file():
            return tested
    best = ckpt_dir / "best.json"
    if best.is_file() and best.with_suffix(".safetensors").is_file():
        return best
    return latest_checkpoint(ckpt_dir)


def collect_run(run_dir: str | Path) -> RunData:
    """Read everything the report shows from ``run_dir``; absent files leave their field empty.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ValueError: ``run_dir`` is a file, or a folder with none of a run's files (config.json,
            environment.json, metrics.jsonl).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist; give the folder a training run wrote "
                                "(`ltpa train`, `ltpa demo`, fit)")
    if not run_dir.is_dir():
        raise ValueError(f"{str(run_dir)!r} is a file, not a run folder; give the folder a training run wrote "
                         "(`ltpa train`, `ltpa demo`, fit)")
    if not any((run_dir / name).is_file() for name in ("config.json", "environment.json", "metrics.jsonl")):
        raise ValueError(f"{str(run_dir)!r} holds no ltpa run (no config.json, environment.json or "
                         "metrics.jsonl); give the folder a training run wrote (`ltpa train`, `ltpa demo`, fit)")
    notes: list[str] = []
    data = RunData(run_dir=run_dir, notes=notes)
    config = _read_dict(run_dir / "config.json", notes)
    try:
        data.config = flat_config(config) if config else config  # sections (this version) or flat (earlier)
    except ValueError as err:
        notes.append(f"config.json: {err}")
        data.config = config
    data.environment = _read_dict(run_dir / "environment.json", notes)
    data.is_run = bool(data.environment) and data.environment.get("format") == RUN_FORMAT
    data.metrics = _read_metrics(run_dir / "metrics.jsonl", notes)
    data.final = _read_dict(run_dir / "final_metrics.json", notes)
    data.test_report = _read_dict(run_dir / "test_report.json", notes)
    names = _read_json(run_dir / CLASSES_FILE, notes)
    if isinstance(names, list):
        data.class_names = [str(n) for n in names]
    elif data.test_report and isinstance(data.test_report.get("class_names"), list):
        data.class_names = [str(n) for n in data.test_report["class_names"]]
    data.transfer = _read_dict(run_dir / "transfer_report.json", notes)
    data.transfer_text = _read_text(run_dir / "transfer_report.txt", notes)
    data.localisations = _find(run_dir, LOCALISATION_FILE, notes)
    data.sanity = _find(run_dir, SANITY_FILE, notes)
    data.demo_summary = _read_text(run_dir / "summary.txt", notes)
    log = _read_text(run_dir / "train.log", notes)
    data.log_tail = log.splitlines()[-_LOG_TAIL_LINES:] if log else []
    data.checkpoint = _checkpoint(run_dir, data.final)
    return data
