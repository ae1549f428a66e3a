"""Training: config and presets, trainer loop, checkpoints, data setup, distributed runs and
evaluation of finished runs."""
from ..runs.checkpoints import (Checkpoint, CheckpointError, latest_checkpoint, list_checkpoints,
                         load_checkpoint, load_model_state, prune_checkpoints, save_checkpoint)
from ..runs.config import TrainConfig, apply_overrides
from .data_setup import BatchLoader, DataSplits, augment_batch, build_data, stratified_split
from .distributed import DistInfo, read_dist_env
from .evaluation import classification_report, evaluate, evaluate_checkpoint, format_report
from .loop import RunResult, TrainingDiverged, fit, train_one_epoch
from .meters import SmoothedValue, topk_correct
from .plots import plot_confusion, plot_curves
from .precision import Precision, resolve_precision
from .presets import describe_preset, get_preset, list_presets

__all__ = [
    "BatchLoader", "Checkpoint", "CheckpointError", "DataSplits", "DistInfo", "Precision",
    "RunResult", "SmoothedValue", "TrainConfig", "TrainingDiverged", "apply_overrides",
    "augment_batch", "build_data", "classification_report", "describe_preset", "evaluate",
    "evaluate_checkpoint", "fit", "format_report", "get_preset", "latest_checkpoint",
    "list_checkpoints", "list_presets", "load_checkpoint", "load_model_state", "plot_confusion",
    "plot_curves", "prune_checkpoints", "read_dist_env", "resolve_precision", "save_checkpoint",
    "stratified_split", "topk_correct", "train_one_epoch",
]
