"""The transfer report: one entry per tensor, a summary table, JSON for the run directory."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import atomic_write_json

__all__ = ["STATUSES", "TransferEntry", "TransferReport", "group_of"]

STATUSES = ("loaded", "skipped", "reinitialised", "shape_mismatch", "unused_source")
_GROUP_ORDER = ("trunk", "global", "attention", "head")
_EXCEPTION_TITLES = {
    "shape_mismatch": "shape mismatches (NOT loaded, kept fresh)",
    "reinitialised": "re-initialised (selected, absent from source)",
    "unused_source": "unused source tensors (no place in the model)",
    "skipped": "skipped by choice (kept fresh)",
}

Shape = tuple[int, ...]


def group_of(name: str) -> str:
    """Top-level group of a state-dict name: ``trunk``, ``global``, ``attention``, ``head``, ..."""
    return name.split(".", 1)[0]


@dataclass(frozen=True)
class TransferEntry:
    """What happened to one tensor.

    Attributes:
        name: state-dict name in the model (for ``unused_source``: the name in the source).
        status: one of :data:`STATUSES`.
        model_shape: shape in the model, ``None`` for ``unused_source``.
        source_shape: shape in the source, ``None`` when the source lacks it.
        note: why, in words.
    """

    name: str
    status: str
    model_shape: Shape | None
    source_shape: Shape | None
    note: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def group(self) -> str:
        return group_of(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "group": self.group,
            "model_shape": None if self.model_shape is None else list(self.model_shape),
            "source_shape": None if self.source_shape is None else list(self.source_shape),
            "note": self.note,
        }


@dataclass
class TransferReport:
    """Every tensor of a transfer, model tensors first (state-dict order), then source leftovers.

    Attributes:
        entries: one :class:`TransferEntry` per tensor.
        source: where the weights came from (a path), or ``None`` for an in-memory state.
        source_format: ``"ltpa"`` or a foreign format such as ``"saoyan"``.
        patterns: the resolved selection patterns.
        notes: caveats of a foreign mapping (what does not line up).
    """

    entries: list[TransferEntry]
    source: str | None = None
    source_format: str = "ltpa"
    patterns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """``{status: number of tensors}`` for every status in :data:`STATUSES` (zeros included)."""
        found = Counter(e.status for e in self.entries)
        return {status: found.get(status, 0) for status in STATUSES}

    def by_status(self, status: str) -> list[TransferEntry]:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        return [e for e in self.entries if e.status == status]

    def names(self, status: str) -> list[str]:
        """Names of the tensors with ``status``."""
        return [e.name for e in self.by_status(status)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (shapes as lists), as written by :meth:`save`."""
        return {
            "source": self.source,
            "source_format": self.source_format,
            "patterns": list(self.patterns),
            "counts": self.counts,
            "notes": list(self.notes),
            "entries": [e.to_dict() for e in self.entries],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON (atomically) and return the path."""
        return atomic_write_json(path, self.to_dict())

    def format(self) -> str:
        """A readable summary: a table of counts per top-level group, then every exception.

        Tensors that are not simply loaded are listed by module (``trunk.conv3.bn``) with their
        shapes, so nothing is hidden: skipped modules, shape mismatches (both shapes),
        re-initialised tensors and unused source tensors.
        """
        lines = [f"weight transfer from {self.source or '<in-memory state>'} "
                 f"(format: {self.source_format}); patterns: {', '.join(self.patterns)}"]
        groups = list(dict.fromkeys(e.group for e in self.entries))
        groups = [g for g in _GROUP_ORDER if g in groups] + sorted(set(groups) - set(_GROUP_ORDER))
        header = ["group", "tensors", *STATUSES]
        rows = []
        for group in groups:
            members = [e for e in self.entries if e.group == group]
            counts = Counter(e.status for e in members)
            rows.append([group, str(len(members)), *(str(counts.get(s, 0)) for s in STATUSES)])
        rows.append(["total", str(len(self.entries)), *(str(self.counts[s]) for s in STATUSES)])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))))
        for status in ("shape_mismatch", "reinitialised", "unused_source", "skipped"):
            entries = self.by_status(status)
            if entries:
                lines.append(f"{_EXCEPTION_TITLES[status]}: {len(entries)} tensor(s)")
                lines.extend(_by_module(entries))
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _shape(shape: Shape | None) -> str:
    return "-" if shape is None else str(tuple(shape))


def _by_module(entries: list[TransferEntry]) -> list[str]:
    """One line per module: ``  trunk.conv3.bn: weight (64,) <- (32,), bias ...``."""
    modules: dict[str, list[tuple[str, str]]] = {}
    for e in entries:
        module, _, leaf = e.name.rpartition(".")
        if e.status == "shape_mismatch":
            desc = f"{leaf} model {_shape(e.model_shape)} vs source {_shape(e.source_shape)}"
        elif e.status == "unused_source":
            desc = f"{leaf} {_shape(e.source_shape)}"
        elif e.status == "skipped" and e.source_shape is not None and e.source_shape != e.model_shape:
            desc = f"{leaf} {_shape(e.model_shape)} (source {_shape(e.source_shape)})"
        else:
            desc = f"{leaf} {_shape(e.model_shape)}"
        note = e.note if e.status == "unused_source" and e.note != "not in model" else ""
        modules.setdefault(module or "(top level)", []).append((desc, note))
    lines = []
    for module, items in modules.items():
        notes = {note for _, note in items}
        if len(notes) == 1:  # one reason for the whole module: say it once
            text = ", ".join(desc for desc, _ in items) + (f" [{notes.pop()}]" if items[0][1] else "")
        else:
            text = ", ".join(desc + (f" [{note}]" if note else "") for desc, note in items)
        lines.append(f"  {module}: {text}")
    return lines
