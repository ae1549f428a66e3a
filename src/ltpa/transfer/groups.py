"""Freezing and per-group learning rates for fine-tuning (e.g. CIFAR-100 -> CUB)."""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping

from torch import nn

from ..runs.checkpoints import unwrap_model
from .select import PatternSet

__all__ = ["param_groups"]

logger = logging.getLogger(__name__)


def param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    freeze: str | Iterable[str] = (),
    lr_multipliers: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Freeze parameters by pattern and split the rest into optimizer param groups.

    Patterns use the syntax of :mod:`ltpa.transfer.select` (``trunk.conv1-7`` is a range,
    ``!`` excludes, a module prefix selects its parameters).

    Rules:

    - parameters matching ``freeze`` get ``requires_grad_(False)`` and join no group; parameters
      that already had ``requires_grad=False`` are left out too (unfreeze them with
      ``p.requires_grad_(True)``; this function never unfreezes);
    - every other parameter joins exactly one group: that of the **first** pattern in
      ``lr_multipliers`` (insertion order) that matches it, else the default group
      (multiplier 1.0). Put specific patterns before general ones:
      ``{"trunk.conv1-7": 0.01, "trunk": 0.1}``;
    - the default group (if not empty) comes first, then one group per multiplier pattern in
      the given order; empty groups are dropped. A pattern named ``"default"`` is not allowed.

    Freezing parameters does not freeze BatchNorm running statistics: a frozen layer's BN still
    updates them in ``train()`` mode. Put those BN modules in ``eval()`` after each
    ``model.train()`` if the statistics must stay fixed.

    Args:
        model: the model (a DDP / ``torch.compile`` wrapper is unwrapped for names).
        base_lr: learning rate of the default group; a group's ``lr`` is
            ``base_lr * multiplier``.
        freeze: patterns of parameters to freeze (``"trunk.conv1-7"`` or a list).
        lr_multipliers: ``{pattern: multiplier >= 0}``.

    Returns:
        Param-group dicts for ``torch.optim``: ``params``, ``lr``, plus ``name`` (the pattern or
        ``"default"``), ``lr_multiplier`` and ``param_names`` (kept by optimizers as extra
        keys, useful in logs and checkpoints).

    Raises:
        ValueError: a pattern that matches no parameter (the model's groups and example names
            are listed), a negative or non-finite multiplier, or a non-positive ``base_lr``.
    """
    if not (isinstance(base_lr, (int, float)) and math.isfinite(base_lr) and base_lr > 0):
        raise ValueError(f"base_lr must be a positive number, got {base_lr!r}")
    named = list(unwrap_model(model).named_parameters())
    names = [name for name, _ in named]
    what = f"parameter of {type(unwrap_model(model)).__name__}"

    freeze = [] if freeze in ("", None) else freeze
    freeze = freeze if isinstance(freeze, str) else list(freeze)
    frozen = PatternSet(freeze) if freeze else None
    if frozen is not None:
        frozen.check_all_match(names, what=what)
    multipliers: list[tuple[str, PatternSet, float]] = []
    for pattern, factor in (lr_multipliers or {}).items():
        if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 0:
            raise ValueError(f"lr multiplier for {pattern!r} must be a finite number >= 0, got {factor!r}")
        if pattern == "default":
            raise ValueError("'default' names the group of unmatched parameters; use '*' to "
                             "scale every parameter's lr")
        patterns = PatternSet(pattern)
        patterns.check_all_match(names, what=what)
        multipliers.append((pattern, patterns, float(factor)))

    # The default group comes first so that ``optimizer.param_groups[0]["lr"]`` is the base lr.
    groups: dict[str, dict[str, Any]] = {
        "default": {"params": [], "param_names": [], "lr": float(base_lr), "lr_multiplier": 1.0,
                    "name": "default"}}
    for pattern, _, factor in multipliers:
        groups[pattern] = {"params": [], "param_names": [], "lr": base_lr * factor,
                           "lr_multiplier": factor, "name": pattern}
    n_frozen = 0
    for name, param in named:
        if frozen is not None and frozen.matches(name):
            param.requires_grad_(False)
        if not param.requires_grad:
            n_frozen += 1
            continue
        key = next((p for p, patterns, _ in multipliers if patterns.matches(name)), "default")
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    result = [g for g in groups.values() if g["params"]]
    logger.info("param groups: %s; %d parameter tensor(s) frozen",
                ", ".join(f"{g['name']} x{g['lr_multiplier']:g} ({len(g['params'])})" for g in result),
                n_frozen)
    return result
