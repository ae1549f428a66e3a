"""Choose tensors by name pattern and copy the chosen ones from a source state into a model.

Pattern syntax (shared by transfer selection, ``--freeze`` and learning-rate multipliers):

- a glob over full state-dict names (``fnmatch``, case-sensitive; ``*`` also crosses dots);
- a module prefix selects everything below it at a dot boundary: ``trunk.conv1`` selects
  ``trunk.conv1.conv.weight`` but not ``trunk.conv10.*``;
- a numeric range in one name segment, ``convA-B``, stands for ``convA`` .. ``convB``
  (``trunk.conv1-7``; ``attention.0-1``);
- ``!pattern`` excludes. A name is selected when it matches at least one include and no
  exclude, whatever the order. A list of only exclusions starts from ``*`` (everything);
- a preset name from :data:`TRANSFER_PRESETS` expands to its patterns.
"""
from __future__ import annotations

import difflib
import fnmatch
import logging
import re
from typing import Iterable, Sequence

import torch
from torch import nn

from ..runs.checkpoints import CheckpointError, unwrap_model
from .report import TransferEntry, TransferReport, group_of

__all__ = ["TRANSFER_PRESETS", "PatternSet", "resolve_patterns", "transfer_weights"]

logger = logging.getLogger(__name__)

# The names are the model's top-level groups (trunk / global / attention / head). "all-but-head"
# is the paper's CUB recipe: everything except the final Linear layer(s) that
# ``reset_classifier`` replaces. The head's BatchNorms (``head.norms``) do not depend on the
# number of classes and are loaded. ``head.classifier*`` covers both ``head.classifier``
# (concat) and ``head.classifiers.N`` (indep).
TRANSFER_PRESETS: dict[str, list[str]] = {
    "trunk": ["trunk"],
    "trunk+global": ["trunk", "global"],
    "trunk+global+attention": ["trunk", "global", "attention"],
    "all-but-head": ["*", "!head.classifier*"],
}

# BatchNorm buffers follow their layer: they are selected exactly when the layer's weight is.
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_RANGE = re.compile(r"^([A-Za-z_]*)(\d+)-(\d+)$")
_VALID = re.compile(r"^!?[A-Za-z0-9_.*?\[\]-]+$")
_MAX_RANGE = 1000


def resolve_patterns(patterns: str | Iterable[str]) -> list[str]:
    """Expand presets and validate pattern syntax.

    Args:
        patterns: pattern strings (see the module docstring), or one string of comma-separated
            patterns (``"trunk,global"``, as typed on a command line).

    Returns:
        The patterns with presets expanded, duplicates dropped, order kept. Ranges stay as
        written (``trunk.conv1-7``); :class:`PatternSet` expands them when matching.

    Raises:
        ValueError: an empty pattern, an unknown preset-like name (closest presets suggested),
            characters that no state-dict name contains, or a descending range (``conv7-1``).
    """
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    resolved: list[str] = []
    for raw in patterns:
        if not isinstance(raw, str):
            raise TypeError(f"patterns must be strings, got {raw!r} ({type(raw).__name__})")
        item = raw.strip()
        if not item or item == "!":
            raise ValueError(f"empty pattern in {list(patterns)!r}; use '*' to select everything")
        if item in TRANSFER_PRESETS:
            expanded = TRANSFER_PRESETS[item]
        elif not _VALID.match(item):
            close = difflib.get_close_matches(item, TRANSFER_PRESETS, n=2, cutoff=0.5)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"{item!r} is neither a preset nor a name pattern.{hint} Presets: "
                f"{', '.join(TRANSFER_PRESETS)}; patterns are globs over state-dict names such as "
                f"'trunk.conv1-7', 'attention.*' or '!head.classifier'."
            )
        else:
            _expand_ranges(item.lstrip("!"))  # validates ranges early
            expanded = [item]
        for pattern in expanded:
            if pattern not in resolved:
                resolved.append(pattern)
    return resolved


def _expand_ranges(pattern: str) -> list[str]:
    """``trunk.conv1-3`` -> ``[trunk.conv1, trunk.conv2, trunk.conv3]``; other segments unchanged."""
    options: list[list[str]] = []
    for segment in pattern.split("."):
        match = _RANGE.match(segment)
        if match is None:
            options.append([segment])
            continue
        stem, start, stop = match.group(1), int(match.group(2)), int(match.group(3))
        if start > stop or stop - start > _MAX_RANGE:
            raise ValueError(
                f"range {segment!r} in pattern {pattern!r} must ascend (e.g. {stem}{min(start, stop)}-"
                f"{max(start, stop)}) and span at most {_MAX_RANGE} values"
            )
        options.append([f"{stem}{i}" for i in range(start, stop + 1)])
    expanded = [""]
    for choices in options:
        expanded = [f"{head}.{c}" if head else c for head in expanded for c in choices]
    return expanded


class PatternSet:
    """A resolved list of include / ``!exclude`` patterns that answers "is this name selected?".

    Args:
        patterns: as for :func:`resolve_patterns`.
    """

    def __init__(self, patterns: str | Iterable[str]) -> None:
        self.patterns = resolve_patterns(patterns)
        includes = [p for p in self.patterns if not p.startswith("!")]
        excludes = [p[1:] for p in self.patterns if p.startswith("!")]
        self.includes = includes or (["*"] if excludes else [])
        self.excludes = excludes
        self._globs = {p: _expand_ranges(p) for p in self.includes + self.excludes}

    def _hit(self, pattern: str, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(name, g + ".*")
                   for g in self._globs[pattern])

    def matches(self, name: str) -> bool:
        """True when ``name`` matches an include pattern and no exclude pattern."""
        return (any(self._hit(p, name) for p in self.includes)
                and not any(self._hit(p, name) for p in self.excludes))

    def check_all_match(self, names: Sequence[str], *, what: str) -> None:
        """Raise ValueError if a pattern matches none of ``names`` (a typo never selects nothing).

        The implicit ``*`` of an exclusion-only list is not checked.
        """
        dead = [p for p in self.patterns if not any(self._hit(p.lstrip("!"), n) for n in names)]
        if dead:
            raise ValueError(unmatched_message(dead, names, what=what))


def unmatched_message(dead: Sequence[str], names: Sequence[str], *, what: str) -> str:
    """Error text for patterns that match nothing: the model's groups, examples, near misses."""
    groups = list(dict.fromkeys(group_of(n) for n in names))
    modules = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))
    examples = [next(n for n in names if group_of(n) == g) for g in groups][:6]
    hints = []
    for pattern in dead:
        close = difflib.get_close_matches(pattern.lstrip("!").rstrip(".*"), modules, n=2, cutoff=0.6)
        if close:
            hints.append(f"{pattern!r}: did you mean {' or '.join(map(repr, close))}?")
    return (
        f"pattern(s) {', '.join(map(repr, dead))} match no {what}. "
        + (" ".join(hints) + " " if hints else "")
        + f"Top-level groups: {', '.join(groups) or '(none)'}; example names: "
        + f"{', '.join(examples) or '(none)'}. Patterns are globs over full names, a module "
        + "prefix such as 'trunk.conv3' selects its tensors, 'trunk.conv1-7' is a range."
    )


def _selected(names: Sequence[str], patterns: PatternSet) -> dict[str, bool]:
    chosen = {name: patterns.matches(name) for name in names}
    for name in names:
        prefix, _, leaf = name.rpartition(".")
        sibling = f"{prefix}.weight"
        if leaf in _BN_BUFFERS and sibling in chosen:
            chosen[name] = chosen[sibling]
    return chosen


def transfer_weights(
    model: nn.Module,
    state,
    patterns: str | Iterable[str] = "*",
    *,
    strict_shapes: bool = False,
) -> TransferReport:
    """Copy the selected tensors of ``state`` into ``model``; leave every other tensor as it is.

    Every model tensor and every source tensor gets one report entry:

    - ``loaded``: selected, present in the source with the same shape, copied (cast to the
      model tensor's dtype and device);
    - ``skipped``: not selected (kept as in ``model``, normally its fresh init);
    - ``reinitialised``: selected but absent from the source, so kept fresh;
    - ``shape_mismatch``: selected and present but of another shape: kept fresh, logged as a
      warning, both shapes recorded (``strict_shapes=True`` raises instead);
    - ``unused_source``: in the source but not in the model (or, for a foreign checkpoint, with
      no ltpa counterpart).

    BatchNorm running statistics follow their layer's ``weight``: a pattern that selects
    ``trunk.conv1.bn.weight`` also moves ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` of that layer.

    Args:
        model: the target (a DDP / ``torch.compile`` wrapper is unwrapped).
        state: a :class:`~ltpa.transfer.foreign.SourceState` from :func:`load_source_state`, or
            a plain ``{name: tensor}`` mapping (wrapper prefixes are stripped and foreign names
            mapped, as for files).
        patterns: presets and patterns, see the module docstring; default ``"*"`` (everything).
        strict_shapes: raise on a shape mismatch of a selected tensor instead of reporting it.

    Returns:
        The :class:`TransferReport`.

    Raises:
        ValueError: a pattern that matches no tensor of the model, or no pattern at all.
        CheckpointError: with ``strict_shapes``, any mismatch (all are listed); the model is
            left unchanged.
    """
    from .foreign import SourceState, source_from_mapping

    target = unwrap_model(model)
    levels = [info.name for info in getattr(target, "levels", ())]
    source = state if isinstance(state, SourceState) else source_from_mapping(state)
    source = source.remapped(levels)
    selection = PatternSet(patterns)
    if not selection.patterns:
        raise ValueError("no transfer patterns given; use '*' (everything) or a preset such as "
                         f"{', '.join(map(repr, TRANSFER_PRESETS))}")
    own = target.state_dict()
    names = list(own)
    selection.check_all_match(names, what=f"tensor of {type(target).__name__}")
    chosen = _selected(names, selection)

    entries: list[TransferEntry] = []
    to_load: dict[str, torch.Tensor] = {}
    for name in names:
        model_shape = tuple(own[name].shape)
        tensor = source.tensors.get(name)
        source_shape = None if tensor is None else tuple(tensor.shape)
        if not chosen[name]:
            status, note = "skipped", "not selected"
        elif tensor is None:
            status, note = "reinitialised", "selected, absent from source"
        elif source_shape != model_shape:
            status, note = "shape_mismatch", "selected, shapes differ: kept fresh"
        else:
            status, note = "loaded", ""
            to_load[name] = tensor
        entries.append(TransferEntry(name, status, model_shape, source_shape, note))
    for name, tensor in source.tensors.items():
        if name not in own:
            entries.append(TransferEntry(name, "unused_source", None, tuple(tensor.shape),
                                         "not in model"))
    for name, (tensor, reason) in source.unmapped.items():
        entries.append(TransferEntry(name, "unused_source", None, tuple(tensor.shape), reason))

    report = TransferReport(entries, source=source.path, source_format=source.format,
                            patterns=selection.patterns, notes=list(source.notes))
    mismatches = report.by_status("shape_mismatch")
    if mismatches and strict_shapes:
        raise CheckpointError(
            f"{len(mismatches)} selected tensor(s) differ in shape between source and model "
            "(different num_classes, width or architecture?):\n  "
            + "\n  ".join(f"{e.name}: source {e.source_shape} vs model {e.model_shape}"
                          for e in mismatches)
            + "\nExclude them (e.g. the 'all-but-head' preset) or pass strict_shapes=False to keep "
              "them freshly initialised."
        )
    for entry in mismatches:
        logger.warning("transfer: %s not loaded, source shape %s vs model shape %s (kept fresh)",
                       entry.name, entry.source_shape, entry.model_shape)
    with torch.no_grad():
        result = target.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:  # cannot happen: every key in to_load came from own
        raise AssertionError(f"internal error: unexpected keys {result.unexpected_keys}")
    return report

