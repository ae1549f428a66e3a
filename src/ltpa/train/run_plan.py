"""Every check a training run must pass, done before its folder is touched.

:func:`plan_run` builds the whole run in memory (config, data, model with its transferred and
frozen weights, loaders, optimizer, the resumed state) and raises on anything that would
reject it. ``fit`` then only writes and trains, so a refused request (bad value, bad pattern, a
batch larger than the data set, a corrupt run file) leaves the folder exactly as it was, and
``overwrite=True`` deletes nothing until the new run is known to start.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..runs.checkpoints import Checkpoint, latest_checkpoint, load_checkpoint, load_model_state
from ..runs.config import TrainConfig, resume_config
from ..runs.preprocess import fit_whitening, load_whitening_state
from ..data.sources import parse_data_spec
from .data_setup import BatchLoader, DataSplits, build_data, channel_mean_std
from .distributed import DistInfo
from .evaluation import build_model
from .precision import Precision, resolve_precision
from ..runs.layout import CHECKPOINT_DIR, ZCA_FILE, check_run_folder
from .failures import unusual_settings
from .run_dir import collect_log_records
from .run_setup import load_transfer_source, make_lr_lambda, make_optimizer, param_groups, transfer_init
from ..errors import Option, Setting, UserError

__all__ = ["RunPlan", "plan_run", "saved_config"]

logger = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """What :func:`plan_run` decided and built; nothing of it is on disk yet.

    Attributes:
        config: the resolved config (the run's own on resume; mean/std filled in).
        out_dir: the run folder; action: ``"new"``, ``"resume"``, ``"overwrite"`` or
            ``"beside"`` (see :func:`~ltpa.runs.layout.check_run_folder`).
        precision: device and numerics.
        data: the splits; model: on the device, ``config.init`` loaded, ``freeze`` applied.
        zca: the whitening fitted on the train split, to save (None on resume or without ZCA);
            whiten: the batch function the loaders apply (None without ZCA).
        transfer_report: what ``config.init`` loaded, to save (None without init or on resume).
        trainable: names of the parameters the optimizer trains.
        train_loader, val_loader, test_loader: batches ready for the model.
        optimizer, scheduler, scaler: holding the checkpoint's states on resume.
        resumed: the checkpoint a resumed run continues from, else None.
        start_epoch, step, best_acc, best_epoch: where training continues (``step``: at the
            start of the epoch after ``start_epoch``).
        position: from a mid-epoch checkpoint, where in epoch ``start_epoch + 1`` it was taken.
        records: the ``metrics.jsonl`` records up to ``start_epoch``.
        previous_environment: the run's ``environment.json`` on resume.
        log_records: log records of the planning, for ``train.log``.
    """

    config: TrainConfig
    out_dir: Path
    action: str
    precision: Precision
    data: DataSplits
    model: nn.Module
    zca: Any
    whiten: Any
    transfer_report: Any
    trainable: set[str]
    train_loader: BatchLoader
    val_loader: BatchLoader
    test_loader: BatchLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    resumed: Checkpoint | None = None
    start_epoch: int = 0
    step: int = 0
    best_acc: float = float("-inf")
    best_epoch: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    position: dict[str, Any] | None = None
    previous_environment: dict[str, Any] | None = None
    log_records: list[logging.LogRecord] = field(default_factory=list, repr=False)


def plan_run(config: TrainConfig, out_dir: Path, dist: DistInfo, *, resume: bool,
             overwrite: bool) -> RunPlan:
    """Check a training request and build everything the run needs, writing nothing.

    Runs on every rank. Seeds torch, numpy and ``random`` from ``config.seed`` for a new run;
    on resume the checkpoint's RNG states are restored last.

    Raises:
        ValueError: anything that would stop the run before its first step: the folder (see
            ``check_run_folder``), an unreadable run file on resume, a config that differs from the
            run's, data with another number of classes or an empty split, a bad transfer or
            freeze pattern, a batch larger than the training set, micro-batches BatchNorm cannot
            train on, a checkpoint whose states do not fit.
        FileNotFoundError: a missing ``init`` source.
    """
    with collect_log_records() as records:
        plan = _plan(config, out_dir, dist, resume=resume, overwrite=overwrite)
    plan.log_records = records
    return plan


def _plan(config: TrainConfig, out_dir: Path, dist: DistInfo, *, resume: bool, overwrite: bool) -> RunPlan:
    action = check_run_folder(out_dir, resume=resume, overwrite=overwrite)
    previous_environment = None
    if resume:
        config = resume_config(saved_config(out_dir), config).validate()
        previous_environment = _read_json(out_dir / "environment.json")
    _check_tensorboard(config)
    _warn_sgd_values_with_adamw(config)
    precision = resolve_precision(config.precision, config.channels_last,
                                  str(dist.device) if dist.enabled else config.device)
    latest = latest_checkpoint(out_dir / CHECKPOINT_DIR) if resume else None
    fresh = latest is None  # a new run, or a resumed one that never reached a checkpoint
    if resume and fresh:
        logger.info("%s has no checkpoint yet (stopped during its first epoch): starting it again "
                    "from epoch 1 with its saved config", out_dir)
    if fresh:
        torch.manual_seed(config.seed)
        random.seed(config.seed + dist.rank)
        np.random.seed((config.seed + dist.rank) % 2**32)
    _refuse_evaluation_only_data(config)
    model = build_model(config)
    data = build_data(config)
    _check_data(config, data)
    if config.mean is None or config.std is None:
        mean, std = channel_mean_std(data.train_images)
        config = dataclasses.replace(config, mean=config.mean or mean, std=config.std or std)
    zca = whiten = None
    if config.zca and not fresh:
        whiten = load_whitening_state(out_dir / ZCA_FILE).to(precision.device)
    elif config.zca:
        zca = fit_whitening(data.train_images, epsilon=config.zca_epsilon)  # train split only
        whiten = zca.to(precision.device)
    source = load_transfer_source(config, model) if fresh else None
    resumed = None if fresh else load_checkpoint(latest)
    if resumed is not None and resumed.epoch > config.epochs:
        raise ValueError(f"cannot resume {out_dir} at epoch {resumed.epoch} with epochs="
                         f"{config.epochs}; epochs may only stay or grow on resume")

    model.to(precision.device, memory_format=precision.memory_format)
    transfer_report = transfer_init(model, source, config) if source is not None else None
    groups = param_groups(model, config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}

    train_loader, val_loader, test_loader = _loaders(config, data, precision, whiten, dist)
    _check_micro_batches(config, model, train_loader, dist)

    optimizer = make_optimizer(groups, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_lr_lambda(config, len(train_loader)))
    scaler = precision.grad_scaler()
    plan = RunPlan(config=config, out_dir=out_dir, action=action, precision=precision, data=data,
                   model=model, zca=zca, whiten=whiten, transfer_report=transfer_report,
                   trainable=trainable, train_loader=train_loader, val_loader=val_loader,
                   test_loader=test_loader, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                   previous_environment=previous_environment)
    if resumed is not None:
        _restore(plan, resumed)
    return plan


def _loaders(config: TrainConfig, data: DataSplits, precision: Precision, whiten: Any,
             dist: DistInfo) -> tuple[BatchLoader, BatchLoader, BatchLoader]:
    """The train (shuffled, augmented, this rank's shard), validation and test loaders."""
    common = dict(mean=config.mean, std=config.std, device=precision.device,
                  memory_format=precision.memory_format, whiten=whiten,
                  rank=dist.rank, world_size=dist.world_size)
    train_loader = BatchLoader(
        data.train_images, data.train_targets, batch_size=config.batch_size // dist.world_size,
        shuffle=True, drop_last=config.drop_last, augment=True, hflip=config.hflip,
        crop_padding=config.crop_padding, seed=config.seed,
        limit_batches=config.limit_train_batches, name="train", **common)
    val_loader = BatchLoader(data.val_images, data.val_targets, batch_size=config.eval_batch_size,
                             name="val", **common)
    test_loader = BatchLoader(data.test_images, data.test_targets,
                              batch_size=config.eval_batch_size, name="test", **common)
    return train_loader, val_loader, test_loader


def _restore(plan: RunPlan, resumed: Checkpoint) -> None:
    """Load a checkpoint's weights and states into ``plan`` and say where training continues."""
    load_model_state(plan.model, resumed)
    scaler = plan.scaler
    saved_scaler = resumed.states.get("scaler")
    resumed.restore_training_state(plan.optimizer, plan.scheduler,
                                   scaler if scaler.is_enabled() and saved_scaler else None)
    plan.records = _read_metrics(plan.out_dir / "metrics.jsonl", up_to_epoch=resumed.epoch)
    resumed.restore_rng()  # last: nothing after it may draw random numbers before training
    plan.resumed, plan.start_epoch, plan.step = resumed, resumed.epoch, resumed.step
    plan.position = resumed.position
    if plan.position is not None:  # a mid-epoch checkpoint: its epoch started this many steps ago
        plan.step -= int(plan.position["steps"])
    if resumed.metrics.get("best_val_acc1") is not None:
        plan.best_acc = resumed.metrics["best_val_acc1"]
    plan.best_epoch = resumed.metrics.get("best_epoch", 0)


def saved_config(out_dir: str | Path) -> TrainConfig:
    """The config a run in ``out_dir`` was started with (its ``config.json``, as saved), the
    plan a resumed run continues.

    Raises:
        ValueError: no run there, or a config.json that is unreadable or not a TrainConfig.
    """
    config_path = Path(out_dir) / "config.json"
    if not config_path.exists() and not (Path(out_dir) / "environment.json").exists():
        raise ValueError(f"cannot resume: {out_dir} does not hold an ltpa run (no config.json); "
                         f"start a new run without resume=True")
    try:
        return TrainConfig.from_dict(_read_json(config_path))
    except ValueError as err:
        if str(err).startswith(str(config_path)):
            raise
        raise ValueError(f"{config_path}: {err}") from None


def _read_json(path: Path) -> Any:
    """A run file, or a ValueError that names it and says how to recover."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing, so the run cannot be resumed; restore it from a copy "
                        "of the run, or start a new run (", Option("overwrite"), ")") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}), so the run cannot be resumed; restore "
                        "the file from a copy of the run, or start a new run (", Option("overwrite"),
                        ")") from None


def _read_metrics(path: Path, *, up_to_epoch: int) -> list[dict[str, Any]]:
    """The ``metrics.jsonl`` records of epochs up to ``up_to_epoch``. A last line cut short (the
    disk filled up while it was appended) belongs to an epoch after the checkpoint and is dropped."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                logger.warning("%s: dropped its last line, cut short by an interrupted write", path)
                break
            raise ValueError(f"{path} line {number} is not valid JSON ({err}); delete that line (the "
                             f"checkpoints hold the training state) and resume again") from None
        if isinstance(record, dict) and record.get("epoch", 0) <= up_to_epoch:
            records.append(record)
    return records


def _warn_sgd_values_with_adamw(config: TrainConfig) -> None:
    # `--set optimizer=adamw` alone keeps a preset's SGD lr and weight decay, which AdamW would
    # blow up on or barely use
    if config.optimizer == "adamw" and (unusual := unusual_settings(config)):
        logger.warning("optimizer=adamw with %s: set lr and weight_decay for AdamW too (typically "
                       "lr=0.001, weight_decay=0.05)", "; ".join(unusual))


def _check_tensorboard(config: TrainConfig) -> None:
    if not config.tensorboard:
        return
    try:
        importlib.import_module("torch.utils.tensorboard")
    except ImportError as err:
        raise UserError(f"tensorboard=true needs the tensorboard package ({err}); install it "
                        "(pip install tensorboard) or ", Setting("tensorboard", False)) from err


def _check_data(config: TrainConfig, data: DataSplits) -> None:
    if data.num_classes != config.num_classes:
        raise UserError(f"{config.data} has {data.num_classes} classes but num_classes={config.num_classes}; ",
                        Setting("num_classes", data.num_classes))
    for split, targets in (("train", data.train_targets), ("test", data.test_targets)):
        if len(targets) == 0:
            raise ValueError(f"data {config.data!r}: the {split} split is empty after subset_{split}/"
                             f"val_fraction ({data.describe()}); give it images or change those settings")


def _refuse_evaluation_only_data(config: TrainConfig) -> None:
    """``masks:`` folders hold ground truth to score attention on (every image is in their test
    split), so there is nothing to train on: say that, not "num_classes" or "empty split"."""
    try:
        spec = parse_data_spec(config.data)
    except ValueError:
        return  # build_data reports a malformed spec with its own message
    if spec.name == "masks":
        raise UserError(f"data={config.data!r} is a folder of images with ground-truth masks, for scoring "
                        f"attention with localise; it has no train split. Train on the "
                        f"labelled data the images come from: ", Setting("data", "cifar100:PATH"),
                        ", cub:PATH, folder:PATH, synthetic")


def _check_micro_batches(config: TrainConfig, model: nn.Module, loader: BatchLoader, dist: DistInfo) -> None:
    """BatchNorm cannot train on one image (one value per channel), so every micro-batch needs
    two: a full batch split ``accumulate_steps`` ways, and the last batch of an epoch."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    per_rank = config.batch_size // dist.world_size
    ranks = f" per process ({dist.world_size} processes)" if dist.world_size > 1 else ""
    if per_rank < 2:
        raise UserError(f"batch_size={config.batch_size} gives batches of one image{ranks}, which "
                        f"BatchNorm cannot train on: ", Setting("batch_size", 2 * dist.world_size), " or more")
    if per_rank < 2 * config.accumulate_steps:
        raise UserError(
            f"accumulate_steps={config.accumulate_steps} splits each batch of {per_rank} images{ranks} into "
            f"micro-batches of fewer than 2 images, which BatchNorm cannot train on: ",
            Setting("accumulate_steps", per_rank // 2), " or less, or a larger batch_size")
    last = loader.num_samples - (len(loader) - 1) * loader.batch_size
    if last == 1:
        raise UserError(
            f"the last training batch of every epoch would hold a single image ({loader.num_samples} "
            f"train images{ranks}, batch_size {per_rank}), which BatchNorm cannot train on; drop it (",
            Setting("drop_last", True), "), or change batch_size")
