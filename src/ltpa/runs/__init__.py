"""Everything about a folder ltpa writes: a training run's config, checkpoints and preprocessing.

Layer order: ``models -> data -> runs -> train / attention / transfer -> inference / demo -> cli``.
Submodules are imported on first use, so ``import ltpa.runs`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Run": "ltpa.runs.run", "TrainConfig": "ltpa.runs.config",
    "CheckpointStore": "ltpa.runs.checkpoints",
    "OutputFolder": "ltpa.runs.ownership", "FolderBusy": "ltpa.runs.ownership",
    "lock_folder": "ltpa.runs.ownership",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ltpa.runs' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
