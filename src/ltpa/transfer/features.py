"""Frozen features of a trained model for linear probes, and their safetensors cache.

Feature kinds (see :mod:`ltpa.transfer.probe` for the protocol):

* ``"attention"``: the attended vectors ``g_a = sum_i a_i l_i`` (Jetley et al. 2018, eq. 4) of
  every level, concatenated in ``model.levels`` order: the input of the classifier head, before
  its BatchNorm and ReLU. Offered by models with softmax or sigmoid attention.
* ``"penultimate"``: ``AttentionOutput.features``, the input of the final Linear layer.
* ``"level:NAME"``: one level's ``g_a``.

The cache holds one safetensors file per (checkpoint sha256, data spec, split content, feature
kind, decoding); a file that is unreadable or holds another key is ignored (with a warning) and
rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["FEATURE_KINDS", "available_features", "default_features", "check_feature_kind", "extract_features",
           "default_cache_dir", "feature_cache_key", "read_cached_features", "write_cached_features"]

logger = logging.getLogger(__name__)

FEATURE_KINDS = ("attention", "penultimate", "level:NAME")
_CACHE_FORMAT = "ltpa-probe-features"
_CACHE_VERSION = "1"


def _has_attention_head(model) -> bool:
    from ..models.blocks import ClassifierHead

    return (getattr(model, "normalisation", "none") in ("softmax", "sigmoid") and bool(getattr(model, "levels", ()))
            and isinstance(getattr(model, "head", None), ClassifierHead))


def available_features(model) -> tuple[str, ...]:
    """The feature kinds ``model`` offers: ``penultimate`` always; ``attention`` and ``level:NAME``
    for attention models (softmax or sigmoid maps, not VGG-GAP's CAM)."""
    if not _has_attention_head(model):
        return ("penultimate",)
    return ("attention", "penultimate", *(f"level:{level.name}" for level in model.levels))


def default_features(model) -> str:
    """``"attention"`` for attention models, ``"penultimate"`` for the others (as in the paper)."""
    return "attention" if _has_attention_head(model) else "penultimate"


def check_feature_kind(model, kind: str | None) -> str:
    """``kind`` checked against what ``model`` offers (None: :func:`default_features`)."""
    kind = default_features(model) if kind is None else str(kind).strip()
    offered = available_features(model)
    if kind not in offered:
        name = type(model).__name__
        if kind.startswith("level:") or kind == "attention":
            raise ValueError(f"features {kind!r} is not available for this {name}; it offers "
                             f"{', '.join(offered)}" + ("" if len(offered) > 1 else
                                                        " (a model without attention has no g_a)"))
        raise ValueError(f"features must be attention, penultimate or level:NAME, got {kind!r}; this {name} "
                         f"offers {', '.join(offered)}")
    return kind


def extract_features(trained, images: Tensor, kind: str | None = None, *, batch_size: int = 128) -> Tensor:
    """Frozen features of uint8 images, computed in eval mode (the model's state is restored).

    Args:
        trained: a :class:`ltpa.inference.TrainedModel`.
        images: uint8 ``(N, 3, H, W)`` at the model's input size.
        kind: ``"attention"``, ``"penultimate"`` or ``"level:NAME"``; None picks
            :func:`default_features`.
        batch_size: images per forward pass.

    Returns:
        float32 ``(N, D)`` on the CPU.

    Raises:
        ValueError: a kind the model does not offer (the message lists those it does).
    """
    from ..attention._inputs import model_device, preserve_model_state

    model = trained.model
    kind = check_feature_kind(model, kind)
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    device = model_device(model)
    captured: list[list[Tensor]] = []
    hook = None
    if kind != "penultimate":
        hook = model.head.register_forward_pre_hook(lambda module, args: captured.append(list(args[0])))
    index = None
    if kind.startswith("level:"):
        index = [level.name for level in model.levels].index(kind.split(":", 1)[1])
    chunks = []
    try:
        with preserve_model_state(model), torch.no_grad():
            model.eval()
            for start in range(0, len(images), batch_size):
                output = model(trained.prepare(images[start:start + batch_size]).to(device))
                if kind == "penultimate":
                    chunks.append(output.features.float().cpu())
                    continue
                vectors = captured.pop()
                chosen = vectors if index is None else [vectors[index]]
                chunks.append(torch.cat([v.float() for v in chosen], dim=1).cpu())
    finally:
        if hook is not None:
            hook.remove()
    if not chunks:
        return torch.zeros(0, 0)
    return torch.cat(chunks)


def default_cache_dir() -> Path:
    """``$LTPA_CACHE_DIR/probe`` if set, else ``$XDG_CACHE_HOME/ltpa/probe`` (``~/.cache/ltpa/probe``)."""
    if os.environ.get("LTPA_CACHE_DIR"):
        return Path(os.environ["LTPA_CACHE_DIR"]) / "probe"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ltpa" / "probe"


def _checkpoint_digest(trained) -> str:
    """The sha256 its sidecar records for the weights file (else a digest of the weights)."""
    try:
        sidecar = json.loads(Path(trained.checkpoint).read_text(encoding="utf-8"))
        if isinstance(sidecar, dict) and isinstance(sidecar.get("sha256"), str):
            return sidecar["sha256"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    digest = hashlib.sha256()  # no readable sidecar: key on the weights themselves
    for name, tensor in trained.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _split_digest(split) -> str:
    digest = hashlib.sha256()
    if split.files is not None:
        for path in split.files:
            stat = os.stat(path)
            digest.update(f"{Path(path).resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    else:
        digest.update(split.images.contiguous().numpy().tobytes())
    digest.update(split.targets.numpy().tobytes())
    return digest.hexdigest()


def feature_cache_key(trained, spec: str, split, kind: str, image_size: int, resize_mode: str) -> str:
    """sha256 hex key of one split's features: checkpoint sha256, data spec, the split's files (path,
    size, mtime) or image bytes and targets, feature kind, and decoding."""
    text = "\n".join([_CACHE_VERSION, _checkpoint_digest(trained), spec, split.name, kind, str(image_size),
                      resize_mode, _split_digest(split)])
    return hashlib.sha256(text.encode()).hexdigest()


def read_cached_features(path: Path, key: str, targets: Tensor) -> Tensor | None:
    """The cached ``(N, D)`` features, or None (with a warning) if unreadable or not for ``key``/``targets``."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            stored = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        logger.warning("probe: ignoring unreadable feature cache %s (%s); computing the features again", path, err)
        return None
    features, cached_targets = stored.get("features"), stored.get("targets")
    if (metadata.get("format") != _CACHE_FORMAT or metadata.get("key") != key or features is None
            or cached_targets is None or features.dim() != 2 or len(features) != len(targets)
            or not torch.equal(cached_targets, targets) or not torch.isfinite(features).all()):
        logger.warning("probe: feature cache %s does not match this checkpoint/data/features; computing again", path)
        return None
    return features.float()


def write_cached_features(path: Path, key: str, features: Tensor, targets: Tensor) -> None:
    """Store features and targets under ``key`` (atomically; the folder is created)."""
    from safetensors.torch import save

    from .._files import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = save({"features": features.contiguous(), "targets": targets.contiguous()},
                   metadata={"format": _CACHE_FORMAT, "key": key})
    atomic_write_bytes(path, payload)
