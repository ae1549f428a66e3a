"""Memory accounting for training steps: what autograd keeps alive, countable on the meta device."""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["saved_activation_bytes", "optimizer_static_bytes"]


def saved_activation_bytes(model: nn.Module, images: Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward of ``model``.

    Storages are counted once (views of one storage share it) and parameters are left out, so
    this is the activation memory a step holds at the end of its forward. It works on the
    ``meta`` device, so any input size can be sized without computing anything. The model is
    put in training mode.
    """
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in params:
            storages[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.train()(images)
    return sum(storages.values())


def optimizer_static_bytes(model: nn.Module, *, buffers_per_param: int = 1, bytes_per_value: int = 4) -> int:
    """Weights + gradients + ``buffers_per_param`` optimizer buffers (SGD momentum: 1; Adam: 2)."""
    values = sum(p.numel() for p in model.parameters())
    return values * bytes_per_value * (2 + buffers_per_param)
