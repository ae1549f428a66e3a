"""Weight transfer between models and checkpoints: choose tensors by pattern, report every one.

The paper's CUB model is fine-tuned from the CIFAR-100 model of the same architecture (all conv,
global and attention weights loaded, the classifier re-initialised). This package does that and
the variants around it::

    from ltpa.transfer import load_source_state, transfer_weights, param_groups

    state = load_source_state("runs/c100_att2/checkpoints/best.json")
    report = transfer_weights(model, state, ["all-but-head"])
    print(report.format())
    groups = param_groups(model, freeze=["trunk.conv1-7"], lr_multipliers={"trunk": 0.1}, base_lr=0.1)
"""
from .foreign import FOREIGN_FORMATS, SourceState, load_source_state, map_foreign_state
from .groups import param_groups
from .report import STATUSES, TransferEntry, TransferReport
from .select import TRANSFER_PRESETS, PatternSet, resolve_patterns, transfer_weights

__all__ = [
    "FOREIGN_FORMATS", "PatternSet", "STATUSES", "SourceState", "TRANSFER_PRESETS",
    "TransferEntry", "TransferReport", "load_source_state", "map_foreign_state", "param_groups",
    "resolve_patterns", "transfer_weights",
]
