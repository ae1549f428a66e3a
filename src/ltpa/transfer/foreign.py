"""Read source weights: ltpa checkpoints, plain safetensors, and other implementations' .pt files.

Nothing is ever unpickled beyond what ``torch.load(weights_only=True)`` allows (tensors and
plain containers). Wrapper prefixes are stripped (``module.`` from DataParallel/DDP, at the
start of a name; ``_orig_mod.`` from ``torch.compile``, anywhere) and foreign layer names are
mapped to ltpa's.

Foreign format ``saoyan``: SaoYan/LearnToPayAttention (``AttnVGG_before`` in model1.py,
``AttnVGG_after`` in model2.py; checked against its blocks.py/model1.py/model2.py at commit
2d2c1cf). Its layers and where they go in ltpa:

=============================================  ==============================================
SaoYan                                          ltpa
=============================================  ==============================================
``conv_block1..6.op.I`` Conv2d(3x3, bias) and   ``trunk.conv1..15.{conv,bn}``: the n-th conv
BatchNorm2d (2+2+3+3+3+2 = 15 convs; widths     (and the BN after it) in block/op order is
64,64,128,128,256x3,512x3,512x3,512,512)        ``trunk.conv{n}``; same widths and pools
``dense`` Conv2d(512, 512, k=im_size/32)        ``global.fc`` (weight reshaped to 512x512;
                                                only when k == 1, i.e. 32-px models)
``projector.op`` Conv2d(256, 512, 1x1)          ``attention.<conv7 level>.proj`` (project_l)
``attn1/2/3.op`` Conv2d(512, 1, 1x1)            ``attention.<level>.compat`` for conv7/10/13
``classify`` Linear(1536 or 512, K)             ``head.classifier`` (see the caveat below)
=============================================  ==============================================

The closest ltpa model is ``vgg_att3`` with ``channel_match="project_l"``, ``dropout=False``
(and ``placement="after"`` for ``AttnVGG_after``, ``normalisation="sigmoid"`` for models trained
without ``--normalize_attn``); ``vgg_noatt`` for ``--no_attention``. What does not line up,
and is said so in :data:`SAOYAN_NOTES`: BatchNorm eps (1e-5 there, 1e-3 here; not stored),
ltpa's head applies BN -> ReLU -> Dropout (``head.norms``, absent there) before the classifier,
and ltpa's sigmoid compatibility has a bias that SaoYan's lacks.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as st_load_file
from torch import Tensor, nn

from ..runs.checkpoints import CheckpointError, load_checkpoint

__all__ = ["FOREIGN_FORMATS", "SAOYAN_NOTES", "SourceState", "load_source_state",
           "map_foreign_state", "source_from_mapping", "strip_wrapper_prefixes"]

FOREIGN_FORMATS = ("ltpa", "saoyan", "unknown")
_LTPA_GROUPS = ("trunk", "global", "attention", "head")
_NESTED_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net")
_SAOYAN_BLOCK = re.compile(r"^conv_block(\d+)\.op\.(\d+)\.(\w+)$")
_SAOYAN_ATTN = re.compile(r"^attn([123])\.op\.weight$")
_LTPA_ATTENTION = re.compile(r"^attention\.(\d+)\.(.+)$")
# Modules numbered by position in ``model.levels`` (one per attended level).
_LTPA_PER_LEVEL = re.compile(r"^(attention|head\.norms|head\.classifiers)\.(\d+)\.(.+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch's messages embed terminal bold codes
_SAOYAN_LEVELS = (7, 10, 13)  # attn1 attends conv_block3 (conv7), attn2 conv10, attn3 conv13
_BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
SAOYAN_NOTES = (
    "saoyan: BatchNorm eps is 1e-5 there and 1e-3 in ltpa (not stored in weights); activations "
    "differ slightly until fine-tuned",
    "saoyan: head.classifier gets 'classify' (same shape), but ltpa applies BN->ReLU->Dropout "
    "(head.norms, kept fresh) before it; SaoYan feeds the attended vectors directly",
    "saoyan: closest ltpa model is vgg_att3 with channel_match='project_l', dropout=False "
    "(placement='after' for AttnVGG_after, normalisation='sigmoid' without --normalize_attn, "
    "where the compat bias SaoYan lacks stays fresh: set it to 0 to reproduce)",
)


@dataclass(frozen=True)
class SourceState(Mapping):
    """Source weights under ltpa names, plus what could not be mapped. A read-only mapping.

    Attributes:
        tensors: ``{ltpa name: tensor}`` (CPU).
        unmapped: ``{source name: (tensor, reason)}`` for foreign tensors with no ltpa place.
        format: one of :data:`FOREIGN_FORMATS` (never ``"unknown"`` once loaded).
        path: the file it came from, or ``None``.
        notes: caveats of the mapping (empty for ltpa sources).
        raw: the prefix-stripped source state, kept to re-map a foreign state onto a model's
            levels (see :meth:`remapped`).
        levels: the attended levels of an ltpa source (``("conv10", "conv13")``), read from its
            checkpoint's config; ``None`` when unknown (a bare state dict).
    """

    tensors: dict[str, Tensor]
    unmapped: dict[str, tuple[Tensor, str]] = field(default_factory=dict)
    format: str = "ltpa"
    path: str | None = None
    notes: tuple[str, ...] = ()
    raw: dict[str, Tensor] = field(default_factory=dict, repr=False)
    levels: tuple[str, ...] | None = None

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def remapped(self, levels: Sequence[str | int] | None) -> SourceState:
        """This state with foreign attention weights assigned to ``levels`` (a model's taps)."""
        if not levels:
            return self
        if self.format == "saoyan":
            mapped, unmapped, _ = map_foreign_state(self.raw, levels=levels)
            return replace(self, tensors=mapped,
                           unmapped={k: (self.raw[k], why) for k, why in unmapped.items()})
        source_levels = _attention_indices(self.tensors)
        if self.levels is None:
            if source_levels and len(source_levels) != len(levels):
                note = (f"source has {len(source_levels)} attention level(s), the model "
                        f"{len(levels)}; with unknown source levels attention.N is matched by "
                        f"index N, which may pair different layers")
                return replace(self, notes=self.notes + (note,))
            return self
        # ltpa numbers per-level modules (attention.N, head.norms.N, head.classifiers.N) by
        # position in ``levels``: re-key them by level so that e.g. vgg_att3's conv10 weights
        # (attention.1) go to vgg_att2's conv10 (attention.0), never to another layer's slot.
        source_keys, target_keys = _level_keys(self.levels), _level_keys(levels)
        if not source_keys or source_keys == target_keys:
            return self
        tensors, unmapped = {}, dict(self.unmapped)
        for name, tensor in self.tensors.items():
            match = _LTPA_PER_LEVEL.match(name)
            if match is None or int(match.group(2)) >= len(source_keys):
                tensors[name] = tensor
                continue
            key = source_keys[int(match.group(2))]
            if key in target_keys:
                tensors[f"{match.group(1)}.{target_keys.index(key)}.{match.group(3)}"] = tensor
            else:
                unmapped[name] = (tensor, f"source level {self.levels[int(match.group(2))]} is not "
                                          "attended by the model")
        return replace(self, tensors=tensors, unmapped=unmapped)


def _attention_indices(tensors: Mapping[str, Tensor]) -> set[int]:
    return {int(m.group(1)) for m in map(_LTPA_ATTENTION.match, tensors) if m}


def _checkpoint_levels(config: Mapping) -> tuple[str, ...] | None:
    """The attended levels of the model a checkpoint's config describes, or None if unknown.

    The model is built on the meta device (no memory, no init cost) just to read ``levels``.
    """
    name, options = config.get("model"), config.get("model_options") or {}
    if not isinstance(name, str):
        return None
    try:
        from ..models import create_model

        with torch.device("meta"):
            model = create_model(name, num_classes=int(config.get("num_classes", 10)), **options)
    except Exception:  # noqa: BLE001 -- any failure only means "levels unknown"; noted later
        return None
    return tuple(info.name for info in getattr(model, "levels", ()))


def strip_wrapper_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``module.`` (DataParallel/DDP, leading, repeated) and ``_orig_mod.`` (anywhere).

    Raises:
        CheckpointError: two source names collapse to the same name.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key.replace("_orig_mod.", "")
        while name.startswith("module."):
            name = name[len("module."):].replace("_orig_mod.", "")
        if name in out:
            raise CheckpointError(f"source names {key!r} and another both become {name!r} once "
                                  "'module.'/'_orig_mod.' prefixes are removed; the file is ambiguous")
        out[name] = value
    return out


def _detect(state: Mapping[str, Tensor]) -> str:
    if any(_SAOYAN_BLOCK.match(k) for k in state):
        return "saoyan"
    if any(k.split(".", 1)[0] in _LTPA_GROUPS for k in state):
        return "ltpa"
    return "unknown"


def _level_numbers(levels: Sequence[str | int] | None) -> list[int]:
    if levels is None:
        return list(_SAOYAN_LEVELS)
    numbers = []
    for level in levels:
        digits = re.search(r"(\d+)$", str(level))
        numbers.append(int(digits.group(1)) if digits else -1)
    return numbers


def _level_keys(levels: Sequence[str | int]) -> list:
    """Level numbers (``conv10`` and ``pool10`` are both level 10), else the names themselves."""
    numbers = _level_numbers(levels)
    if -1 in numbers or len(set(numbers)) != len(numbers):
        return [str(level) for level in levels]
    return numbers


def map_foreign_state(
    state: Mapping[str, Tensor], *, levels: Sequence[str | int] | None = None
) -> tuple[dict[str, Tensor], dict[str, str], str]:
    """Map a state dict to ltpa names.

    Args:
        state: a state dict in any supported layout; ``module.``/``_orig_mod.`` are stripped.
        levels: the target model's attended levels (``model.levels`` names such as
            ``"conv10"``, or numbers), used to place SaoYan's ``attn1/2/3`` (conv7/10/13);
            ``None`` assumes VGG-att3's (7, 10, 13).

    Returns:
        ``(mapped, unmapped, detected_format)``: ``{ltpa name: tensor}``, ``{source name:
        reason}`` for tensors with no ltpa place, and ``"ltpa"``, ``"saoyan"`` or ``"unknown"``
        (for which everything is unmapped).
    """
    state = strip_wrapper_prefixes(state)
    detected = _detect(state)
    if detected == "ltpa":
        return dict(state), {}, "ltpa"
    if detected == "unknown":
        return {}, {k: "unrecognised layout" for k in state}, "unknown"
    return (*_map_saoyan(state, _level_numbers(levels)), "saoyan")


def _map_saoyan(state: dict[str, Tensor], levels: list[int]) -> tuple[dict[str, Tensor], dict[str, str]]:
    mapped: dict[str, Tensor] = {}
    unmapped: dict[str, str] = {}
    ops: dict[tuple[int, int], dict[str, tuple[str, Tensor]]] = {}
    for key, value in state.items():
        match = _SAOYAN_BLOCK.match(key)
        if match:
            block, op, leaf = int(match.group(1)), int(match.group(2)), match.group(3)
            ops.setdefault((block, op), {})[leaf] = (key, value)
    conv = 0
    for _, leaves in sorted(ops.items()):
        weight = leaves.get("weight", (None, None))[1]
        if weight is not None and weight.ndim == 4:
            conv += 1
            for leaf in ("weight", "bias"):
                if leaf in leaves:
                    mapped[f"trunk.conv{conv}.conv.{leaf}"] = leaves[leaf][1]
            kind, known = "conv", ("weight", "bias")
        elif "running_mean" in leaves or (weight is not None and weight.ndim == 1):
            kind, known = "bn", _BN_LEAVES
            for leaf in known:
                if leaf in leaves and conv:
                    mapped[f"trunk.conv{conv}.bn.{leaf}"] = leaves[leaf][1]
        else:
            kind, known = "other", ()
        for leaf, (key, _) in leaves.items():
            if leaf not in known or (kind == "bn" and not conv):
                unmapped[key] = f"no ltpa counterpart for this {kind} tensor"
    for key, value in state.items():
        if _SAOYAN_BLOCK.match(key):
            continue
        attn = _SAOYAN_ATTN.match(key)
        if key in ("dense.weight", "dense.bias"):
            if key == "dense.weight" and value.shape[2:] != (1, 1):
                unmapped[key] = (f"kernel {tuple(value.shape[2:])} (im_size > 32): ltpa's global "
                                 "layer is a Linear on a globally max-pooled 1x1 map")
            else:
                mapped[key.replace("dense", "global.fc")] = value.flatten(1) if value.ndim == 4 else value
        elif key == "projector.op.weight":
            if 7 in levels:
                mapped[f"attention.{levels.index(7)}.proj.weight"] = value
            else:
                unmapped[key] = "target model does not attend conv7"
        elif attn:
            level = _SAOYAN_LEVELS[int(attn.group(1)) - 1]
            if level in levels:
                mapped[f"attention.{levels.index(level)}.compat.weight"] = value
            else:
                unmapped[key] = f"target model does not attend conv{level}"
        elif key in ("classify.weight", "classify.bias"):
            mapped[key.replace("classify", "head.classifier")] = value
        else:
            unmapped[key] = "no ltpa counterpart"
    return mapped, unmapped


def source_from_mapping(
    state: Mapping[str, Tensor],
    *,
    path: str | None = None,
    levels: Sequence[str | int] | None = None,
    source_levels: Sequence[str] | None = None,
) -> SourceState:
    """Wrap an in-memory state dict as a :class:`SourceState` (prefixes stripped, names mapped).

    ``levels`` are the target model's (to place foreign attention weights); ``source_levels``
    those of the ltpa model the state came from (``model.levels`` names), if known, so that
    attention weights move by level rather than by index.

    Raises:
        TypeError: a value is not a tensor.
        CheckpointError: the layout is not recognised.
    """
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"state[{key!r}] is a {type(value).__name__}, not a tensor; pass a "
                            "state dict ({name: tensor})")
    raw = strip_wrapper_prefixes(state)
    mapped, unmapped, detected = map_foreign_state(raw, levels=levels)
    where = path or "the given state dict"
    if detected == "unknown":
        sample = ", ".join(list(raw)[:5]) or "(no tensors)"
        raise CheckpointError(
            f"{where} has an unrecognised layout (first names: {sample}). Supported: ltpa names "
            f"(trunk./global./attention./head.) and SaoYan/LearnToPayAttention's "
            f"(conv_block1.op.0.weight, ...). Rename the keys to ltpa's, e.g. by building the "
            f"model and mapping names by hand."
        )
    notes = SAOYAN_NOTES if detected == "saoyan" else ()
    return SourceState(mapped, {k: (raw[k], why) for k, why in unmapped.items()}, detected, path,
                       notes, raw, tuple(source_levels) if source_levels is not None else None)


def load_source_state(path: str | os.PathLike, *, model_hint: nn.Module | None = None) -> SourceState:
    """Load transfer-source weights from a file.

    Args:
        path: an ltpa checkpoint (``.json`` sidecar, ``.safetensors`` with its sidecar, their
            common stem, or a run directory: its latest checkpoint); a plain ``.safetensors``
            state dict; or a PyTorch ``.pt``/``.pth`` state dict (also nested under
            ``state_dict``/``model``/... keys), read with ``torch.load(weights_only=True)``.
        model_hint: the target model; its ``levels`` place a foreign model's attention weights
            (``transfer_weights`` re-maps onto its own model anyway).

    Returns:
        A :class:`SourceState` (tensors on the CPU, ltpa names).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: a corrupt or unrecognised file, or a pickle that needs more than
            ``weights_only`` (arbitrary Python objects are never unpickled).
    """
    path = Path(path)
    levels = [info.name for info in getattr(model_hint, "levels", ())] or None
    if path.is_dir() or path.suffix == ".json":
        return _from_checkpoint(path, levels)
    if path.suffix == ".safetensors":
        if path.with_suffix(".json").exists():
            return _from_checkpoint(path, levels)
        return source_from_mapping(_read_safetensors(path), path=str(path), levels=levels)
    if path.is_file():
        return source_from_mapping(_read_torch(path), path=str(path), levels=levels)
    if Path(f"{path}.json").exists():
        return _from_checkpoint(path, levels)
    if Path(f"{path}.safetensors").exists():
        weights = Path(f"{path}.safetensors")
        return source_from_mapping(_read_safetensors(weights), path=str(weights), levels=levels)
    raise FileNotFoundError(
        f"no transfer source at {path}: expected an ltpa checkpoint (name.json + name.safetensors, "
        f"or a run directory), a .safetensors file or a .pt/.pth state dict"
    )


def _from_checkpoint(path: Path, levels) -> SourceState:
    checkpoint = load_checkpoint(path)
    source = source_from_mapping(checkpoint.model_state, path=str(checkpoint.path), levels=levels)
    return replace(source, levels=_checkpoint_levels(checkpoint.config))


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        tensors = st_load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    parts = {k.split(".", 1)[0] for k in tensors}
    if "model" in parts and parts <= {"model", "optimizer", "scheduler", "scaler", "rng"}:
        # The tensor file of an ltpa checkpoint whose sidecar is missing: take the model part.
        return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return tensors


def _read_torch(path: Path) -> dict[str, Tensor]:
    with open(path, "rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive (PK\x03\x04); files of torch < 1.6 start with a pickle
    # protocol opcode (0x80). Anything else (text, an image, a truncated download) is not one.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path} is not a PyTorch file (it starts with {head!r}, neither a torch.save zip "
            f"archive nor a pickle); expected an ltpa checkpoint (name.json + name.safetensors, or "
            f"a run folder), a .safetensors file or a .pt/.pth state dict saved with torch.save"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} needs more than torch.load(weights_only=True) to read: it pickles Python "
            f"objects beyond tensors and plain containers (e.g. a whole model or custom classes), "
            f"and ltpa never unpickles arbitrary objects because that can run code. Re-save only "
            f"the weights with torch.save(model.state_dict(), path) where the file came from. "
            f"(torch said: {_ANSI.sub('', str(err).splitlines()[0]).strip()})"
        ) from err
    except Exception as err:  # noqa: BLE001 - a damaged file can fail inside the unpickler in any way
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch file (damaged or cut short?): "
                              f"{reason}") from err
    return _extract_state(obj, path)


def _is_state(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _extract_state(obj, path: Path) -> dict[str, Tensor]:
    if _is_state(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if _is_state(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(map(repr, list(obj)[:8]))
        raise CheckpointError(
            f"{path} holds a dict without a state dict: top-level keys {keys}; expected "
            f"{{name: tensor}} or one nested under {', '.join(map(repr, _NESTED_KEYS))}"
        )
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict ({{name: tensor}})")
