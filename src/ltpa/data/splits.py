"""Seeded, class-stratified train/validation splits: the trainer carves its validation images
with :func:`stratified_split`, and analyses that score a run's validation images take the same ones."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["derive_seed", "stratified_split"]


def derive_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for one (run seed, epoch, purpose) triple; distinct triples do not collide
    the way ``seed + epoch`` would (seed 1 epoch 0 == seed 0 epoch 1)."""
    mixed = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB)
    return mixed % (2**63 - 1)


def stratified_split(targets: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices into train and validation, keeping every class's share.

    Each class contributes ``round(count * val_fraction)`` images to validation (at least one
    when ``val_fraction > 0`` and the class has two or more), chosen by a generator seeded with
    ``seed``.

    Returns:
        ``(train_idx, val_idx)``, sorted int64 index tensors.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    gen = torch.Generator().manual_seed(derive_seed(seed, 0, 1))
    val_parts = []
    for cls in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == cls).flatten()
        n_val = round(len(idx) * val_fraction)
        if val_fraction > 0 and n_val == 0 and len(idx) >= 2:
            n_val = 1
        val_parts.append(idx[torch.randperm(len(idx), generator=gen)[:n_val]])
    val_idx = torch.sort(torch.cat(val_parts)).values if val_parts else torch.empty(0, dtype=torch.long)
    is_val = torch.zeros(len(targets), dtype=torch.bool)
    is_val[val_idx] = True
    return torch.nonzero(~is_val).flatten(), val_idx
