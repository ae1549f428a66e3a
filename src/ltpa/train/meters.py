"""Small meters: a windowed/global average, top-k accuracy counts, and the per-epoch
``metrics.jsonl`` records."""
from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["SmoothedValue", "topk_correct", "accuracy_ks", "append_jsonl", "read_jsonl"]


class SmoothedValue:
    """Tracks a series of values: the mean of the last ``window`` updates and the global mean.

    ``update(value, n)`` records ``value`` as the mean of ``n`` samples (e.g. a batch loss), so
    ``global_avg`` is the per-sample mean over everything seen.
    """

    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._recent: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self._recent.append(float(value))
        self.total += float(value) * n
        self.count += n

    @property
    def value(self) -> float:
        """The latest value (nan before the first update)."""
        return self._recent[-1] if self._recent else float("nan")

    @property
    def avg(self) -> float:
        """Mean of the last ``window`` values (nan before the first update)."""
        return sum(self._recent) / len(self._recent) if self._recent else float("nan")

    @property
    def global_avg(self) -> float:
        """Sample-weighted mean of all values (nan before the first update)."""
        return self.total / self.count if self.count else float("nan")

    def __repr__(self) -> str:
        return f"SmoothedValue(avg={self.avg:.4g}, global_avg={self.global_avg:.4g}, n={self.count})"


def accuracy_ks(num_classes: int) -> tuple[int, ...]:
    """The top-k accuracies worth reporting: top-1, and top-5 when there are at least 5 classes."""
    return (1, 5) if num_classes >= 5 else (1,)


@torch.no_grad()
def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1,)) -> Tensor:
    """Count the samples whose target is among the top-k logits, for each k.

    Stays on the logits' device (no host sync), so counts can be summed over a whole epoch.

    Args:
        logits: ``(B, K)``.
        targets: ``(B,)`` class indices in ``[0, K)``.
        ks: which k's; each must be ``<= K``.

    Returns:
        int64 tensor ``(len(ks),)`` of counts in ``[0, B]``.
    """
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (B, K) and targets (B,), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if max(ks) > logits.shape[1]:
        raise ValueError(f"top-{max(ks)} accuracy needs at least {max(ks)} classes, got {logits.shape[1]}")
    top = logits.topk(max(ks), dim=1).indices  # (B, max_k)
    hits = top.eq(targets[:, None])  # (B, max_k)
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` and fsync it, so a crash loses at most that line."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike, *, up_to_epoch: int | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (``[]`` when it does not exist), optionally only those
    with ``epoch <= up_to_epoch``."""
    path = Path(path)
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if up_to_epoch is not None:
        records = [r for r in records if r.get("epoch", 0) <= up_to_epoch]
    return records
