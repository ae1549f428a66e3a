"""Training: config, trainer loop, checkpoints, data setup for runs."""
from .checkpoint import (Checkpoint, CheckpointError, latest_checkpoint, list_checkpoints,
                         load_checkpoint, load_model_state, prune_checkpoints, save_checkpoint)
from .config import TrainConfig, apply_overrides
from .data_setup import BatchLoader, DataSplits, augment_batch, build_data, stratified_split
from .loop import RunResult, TrainingDiverged, evaluate, fit, train_one_epoch
from .meters import SmoothedValue, topk_correct
from .plots import plot_curves
from .precision import Precision, resolve_precision

__all__ = [
    "BatchLoader", "Checkpoint", "CheckpointError", "DataSplits", "Precision", "RunResult",
    "SmoothedValue", "TrainConfig", "TrainingDiverged", "apply_overrides", "augment_batch",
    "build_data", "evaluate", "fit", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
    "load_model_state", "plot_curves", "prune_checkpoints", "resolve_precision", "save_checkpoint",
    "stratified_split", "topk_correct", "train_one_epoch",
]
