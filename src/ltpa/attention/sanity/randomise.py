"""Model-parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018,
Sec. 3): which parameters form a group, in which order groups are randomised, and how.

Groups, top (output) to bottom (input), from the model's own module names:

1. ``head``: the classifier;
2. ``attention``: the compatibility parameters (``u`` of each level) and the projections of g;
3. ``global``: the layers that make the global feature g;
4. the trunk's parameterised children from the last to the first (VGG: ``trunk.conv15`` ...
   ``trunk.conv1``, each conv with its BatchNorm; ResNet: the stages and the stem);
5. any other top-level child that holds parameters.

Every parameter belongs to exactly one group. *Cascading* randomises the groups one after the
other, keeping the earlier ones random; *independent* randomises one group at a time in an
otherwise trained model.

``init`` says how a group is randomised:

* ``"reset"`` (default): every module's own ``reset_parameters()``, i.e. PyTorch's default
  initialisation (convolutions and linear layers: Kaiming-uniform with ``a = sqrt(5)`` weights,
  uniform biases; BatchNorm: weight 1, bias 0), drawn from a generator seeded by ``seed`` and the
  group's position (the caller's global RNG is left as it was). Parameters of modules without
  ``reset_parameters`` are shuffled as below.
* ``"shuffle"``: each parameter tensor's entries randomly permuted: the trained values and their
  scale are kept, their arrangement is destroyed.

``bn_stats`` says what happens to the running statistics of the BatchNorm layers of randomised
groups (their affine weight and bias are randomised with their layer, as above):

* ``"recompute"`` (default): re-estimated on the images being explained (a cumulative average
  over one pass, in eval mode otherwise), for every randomised group so far, so that each layer
  of the randomised network sees inputs of a sensible scale; no labels are involved.
* ``"reset"``: mean 0 and variance 1, as ``reset_parameters`` leaves them (Quantus' choice):
  activations then shrink or grow layer by layer with the random weights.
* ``"keep"``: the trained statistics, now describing inputs that no longer occur.

The randomisation works on a deep copy: the caller's model is never modified.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["BN_STATS", "INITS", "ParameterGroup", "parameter_groups", "randomise", "randomised_copy",
           "recompute_bn_stats"]

INITS = ("reset", "shuffle")
BN_STATS = ("recompute", "reset", "keep")
_TOP = ("head", "attention", "global")


@dataclass(frozen=True)
class ParameterGroup:
    """A set of modules randomised together: ``name`` and the module paths it covers."""

    name: str
    modules: tuple[str, ...]

    def parameter_names(self, model: nn.Module) -> list[str]:
        """Names (as in ``model.named_parameters()``) of the group's parameters."""
        return [f"{path}.{name}" for path in self.modules
                for name, _ in model.get_submodule(path).named_parameters()]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def parameter_groups(model: nn.Module) -> list[ParameterGroup]:
    """The model's parameter groups, top (output) to bottom (input); see the module docstring.

    Raises:
        ValueError: the model has no parameters.
    """
    children = dict(model.named_children())
    groups = [ParameterGroup(name, (name,)) for name in _TOP if name in children and _has_parameters(children[name])]
    trunk = children.get("trunk")
    if trunk is not None:
        units = [f"trunk.{name}" for name, child in trunk.named_children() if _has_parameters(child)]
        groups += [ParameterGroup(path, (path,)) for path in reversed(units)]
        if any(True for _ in trunk.parameters(recurse=False)):
            groups.append(ParameterGroup("trunk (own parameters)", ("trunk",)))
    others = [name for name, child in children.items()
              if name not in (*_TOP, "trunk") and _has_parameters(child)]
    groups += [ParameterGroup(name, (name,)) for name in reversed(others)]
    if any(True for _ in model.parameters(recurse=False)):
        raise ValueError(f"{type(model).__name__} holds parameters directly, outside any submodule; the "
                         "sanity check randomises submodules, so wrap them in one.")
    if not groups:
        raise ValueError(f"{type(model).__name__} has no parameters to randomise.")
    return groups


def _shuffle_(tensor: Tensor, generator: torch.Generator) -> None:
    order = torch.randperm(tensor.numel(), generator=generator).to(tensor.device)
    tensor.copy_(tensor.flatten()[order].view_as(tensor))


def randomise(
    model: nn.Module,
    groups: Sequence[ParameterGroup],
    *,
    init: str = "reset",
    bn_stats: str = "recompute",
    seed: int = 0,
    reference: nn.Module | None = None,
) -> nn.Module:
    """Randomise ``groups`` of ``model`` in place (call it on a copy; :func:`randomised_copy`
    does both).

    Args:
        model: the model to change (a copy of the trained one).
        groups: the groups to randomise now.
        init: ``"reset"`` or ``"shuffle"`` (module docstring).
        bn_stats: ``"recompute"``, ``"reset"`` or ``"keep"``; ``"keep"`` copies the running
            statistics back from ``reference`` (the trained model), ``"recompute"`` leaves them
            reset for :func:`recompute_bn_stats`.
        seed: randomness of the new values; group ``i`` of the model uses ``seed`` and ``i``.
        reference: the trained model, needed for ``bn_stats="keep"``.

    Returns:
        ``model``.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")
    if bn_stats not in BN_STATS:
        raise ValueError(f"bn_stats must be one of {BN_STATS}, got {bn_stats!r}.")
    if bn_stats == "keep" and reference is None:
        raise ValueError("bn_stats='keep' needs reference=the trained model to copy the statistics from.")
    order = {group.name: index for index, group in enumerate(parameter_groups(model))}
    device = next(model.parameters()).device
    for group in groups:
        generator = torch.Generator().manual_seed(seed * 1000 + order.get(group.name, len(order)))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            for path in group.modules:
                for module in model.get_submodule(path).modules():
                    own = list(module.parameters(recurse=False))
                    if init == "reset" and hasattr(module, "reset_parameters") and own:
                        module.reset_parameters()
                    else:
                        for param in own:
                            _shuffle_(param, generator)
                    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                        module.reset_running_stats()
        if bn_stats == "keep":
            for path in group.modules:
                trained = dict(reference.get_submodule(path).named_modules())
                for name, module in model.get_submodule(path).named_modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                            getattr(module, buffer).copy_(getattr(trained[name], buffer))
    return model


def randomised_copy(model: nn.Module, groups: Sequence[ParameterGroup], **options) -> nn.Module:
    """A deep copy of ``model`` with ``groups`` randomised (see :func:`randomise`); ``model`` is
    left exactly as it was."""
    return randomise(copy.deepcopy(model), groups, reference=model, **options)


def recompute_bn_stats(model: nn.Module, groups: Sequence[ParameterGroup], inputs: Tensor, *,
                       batch_size: int = 64) -> None:
    """Re-estimate the running statistics of the BatchNorm layers in ``groups`` on ``inputs``
    (normalised images), one pass, cumulative average; every other module stays in eval mode
    and every parameter unchanged."""
    norms = [module for group in groups for path in group.modules
             for module in model.get_submodule(path).modules()
             if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    device = next(model.parameters()).device
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative moving average: every batch counts the same
            norm.train()
        with torch.no_grad():
            for start in range(0, inputs.shape[0], batch_size):
                model(inputs[start:start + batch_size].to(device))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
