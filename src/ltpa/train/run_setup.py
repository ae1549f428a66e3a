"""The pieces ``fit`` assembles a run from: run files, weight transfer and parameter groups,
head warm-up, the DDP / torch.compile wrappers, TensorBoard, and the lr schedule."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_write_bytes, atomic_write_json
from ..runs.config import TrainConfig
from .distributed import DistInfo
from .precision import Precision, describe_environment
from ..runs.layout import CLASSES_FILE, RUN_FORMAT, TENSORBOARD_DIR, ZCA_FILE
from ..runs.preprocess import save_whitening

logger = logging.getLogger(__name__)

__all__ = ["AttentionOverlays", "write_run_files", "load_transfer_source", "transfer_init", "param_groups", "make_optimizer", "head_only", "wrap", "tensorboard",
           "log_scalars", "make_lr_lambda"]


def write_run_files(out_dir: Path, config: TrainConfig, precision: Precision, dist: DistInfo, *,
                    zca: Any, class_names: tuple[str, ...] = (),
                    previous_environment: dict[str, Any] | None = None, transfer_report=None) -> None:
    """Write the run's records: config, classes, environment (``previous_environment``, read
    on resume, gets this session appended), the fitted ZCA and the transfer report."""
    atomic_write_json(out_dir / "config.json", config.to_dict(grouped=True))
    if class_names:  # so that `ltpa attend` and friends can name predictions
        atomic_write_json(out_dir / CLASSES_FILE, list(class_names))
    environment = {**describe_environment(precision), "world_size": dist.world_size}
    if previous_environment is not None:
        previous = dict(previous_environment)
        previous["resumed"] = [*previous.get("resumed", []), environment]
        atomic_write_json(out_dir / "environment.json", previous)
    else:
        atomic_write_json(out_dir / "environment.json", {"format": RUN_FORMAT, **environment})
    if zca is not None:
        save_whitening(zca, out_dir / ZCA_FILE)
    if transfer_report is not None:
        atomic_write_json(out_dir / "transfer_report.json", transfer_report.to_dict())
        atomic_write_bytes(out_dir / "transfer_report.txt", (transfer_report.format() + "\n").encode("utf-8"))


def load_transfer_source(config: TrainConfig, model: nn.Module):
    """The weights of ``config.init`` (read before the run folder is touched, so a bad path or
    file is rejected without writing anything), or None without ``init``."""
    if not config.init:
        return None
    from ltpa.transfer import load_source_state

    return load_source_state(config.init, model_hint=model)


def transfer_init(model: nn.Module, state, config: TrainConfig):
    """Load ``state`` (from :func:`load_transfer_source`) into ``model`` by the ``transfer``
    patterns. Returns the ``TransferReport`` (every tensor), for :func:`write_run_files`."""
    from ltpa.transfer import transfer_weights

    return transfer_weights(model, state, list(config.transfer) or ["all-but-head"])


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    if not (config.freeze or config.lr_multipliers):
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    try:
        from ltpa.transfer import param_groups
    except ImportError as err:
        raise ValueError("freeze/lr_multipliers need the ltpa.transfer package, which this "
                         "installation lacks") from err
    return param_groups(model, freeze=list(config.freeze),
                        lr_multipliers=dict(config.lr_multipliers), base_lr=config.lr)


def make_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD as the paper trains, or AdamW (``momentum`` as its beta1; decoupled weight decay)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999),
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, dampening=config.dampening,
                           weight_decay=config.weight_decay, nesterov=config.nesterov)


def head_only(model: nn.Module, trainable: set[str], head_only: bool) -> None:
    """During head warm-up only the classifier head (``head.*``) trains; frozen stays frozen.

    Parameters without gradients are skipped by the optimizer (no momentum, no weight decay)."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable and (not head_only or name.startswith("head.")))


def wrap(model: nn.Module, config: TrainConfig, dist: DistInfo) -> tuple[nn.Module, nn.Module]:
    """The module to train (DDP and/or torch.compile around ``model``) and the one to evaluate
    (no DDP: evaluation shards may differ by a batch, and DDP's forward would wait on peers)."""
    train_model: nn.Module = model
    if dist.enabled:
        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        # head warm-up leaves the trunk without gradients for some epochs
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=config.head_warmup_epochs > 0)
    if not config.compile:
        return train_model, model
    compiled = torch.compile(model)
    return (torch.compile(train_model) if dist.enabled else compiled), compiled


def tensorboard(out_dir: Path, config: TrainConfig, main: bool, *, purge_step: int | None):
    if not (main and config.tensorboard):
        return None
    from torch.utils.tensorboard import SummaryWriter

    # purge_step drops events of epochs after the checkpoint a resumed run restarts from
    return SummaryWriter(log_dir=str(out_dir / TENSORBOARD_DIR), purge_step=purge_step)


def log_scalars(writer, record: dict[str, Any]) -> None:
    if writer is None:
        return
    epoch = record["epoch"]
    for key, tag in (("train_loss", "train/loss"), ("train_acc1", "train/acc1"),
                     ("val_loss", "val/loss"), ("val_acc1", "val/acc1"), ("val_acc5", "val/acc5"),
                     ("lr", "lr"), ("images_per_s", "throughput/img_per_s")):
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(tag, value, epoch)
    writer.flush()


OVERLAY_TAG = "val/attention_mass"
OVERLAY_IMAGES = 8


class AttentionOverlays:
    """Every epoch, the attention overlays of one fixed validation batch (the same first
    ``OVERLAY_IMAGES`` validation images each epoch) on the mass scale, as the TensorBoard image
    ``val/attention_mass`` at step = epoch. Nothing without a writer, without validation images,
    or for a model without attention maps."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, prepare: Callable,
                 class_names: tuple[str, ...]) -> None:
        self.images, self.targets = images[:OVERLAY_IMAGES], targets[:OVERLAY_IMAGES]  # (B, 3, H, W) uint8
        self.prepare, self.class_names = prepare, class_names
        self.enabled = len(self.images) > 0

    def log(self, writer, model: nn.Module, epoch: int) -> None:
        if writer is None or not self.enabled or not getattr(model, "levels", None):
            return
        from ltpa.attention.tensorboard import log_attention_overlays

        device = next(model.parameters()).device
        try:
            log_attention_overlays(writer, model, self.images.to(device), prepare=self.prepare, step=epoch,
                                   tag=OVERLAY_TAG, targets=self.targets.to(device),
                                   class_names=self.class_names or None, mode="mass")
        except (RuntimeError, ValueError) as err:  # a picture must never stop a run
            logger.warning("attention overlays for TensorBoard failed (%s); no more are drawn in this run", err)
            self.enabled = False
        writer.flush()


# ----------------------------------------------------------------------------- schedule


def make_lr_lambda(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Factor on ``config.lr`` at optimizer step ``s`` (0-based), for ``LambdaLR``.

    ``lr_schedule="step"``: epochs are counted from 1 as in the official Lua code (``if epoch %
    epoch_step == 0`` at the start of an epoch): the lr is ``lr_gamma ** (epoch //
    lr_step_epochs)`` during epoch ``epoch``, so with a step of 25 epochs 1-24 run at the full lr
    and epoch 25 at half. Milestones likewise name the (1-based) epoch that starts with the new
    lr, one factor per milestone reached (``lr_milestone_gammas`` or ``lr_gamma``).
    ``"cosine"`` / ``"linear"``: from 1 after the warm-up towards 0 at the end of the last epoch
    (so a resume may not change ``epochs``: :func:`~ltpa.runs.config.resume_config` refuses it).
    Warm-up multiplies by ``(s + 1) / (warmup_epochs * steps_per_epoch)`` until that reaches 1.
    A plain function, so the scheduler's state dict stays JSON-friendly.
    """
    milestones = tuple(config.lr_milestones)
    gammas = tuple(config.lr_milestone_gammas) or (config.lr_gamma,) * len(milestones)
    warm_steps = config.warmup_epochs * steps_per_epoch
    total_steps = config.epochs * steps_per_epoch

    def decay(step: int) -> float:
        """The schedule's factor before the warm-up."""
        if config.lr_schedule != "step":
            start = min(warm_steps, total_steps - 1)
            done = min(1.0, max(0.0, (step - start) / max(1.0, total_steps - start)))
            return 0.5 * (1 + math.cos(math.pi * done)) if config.lr_schedule == "cosine" else 1 - done
        epoch = step // steps_per_epoch + 1  # 1-based, as the official code counts
        if milestones:
            return math.prod(gamma for milestone, gamma in zip(milestones, gammas) if epoch >= milestone)
        if config.lr_step_epochs > 0:
            return config.lr_gamma ** (epoch // config.lr_step_epochs)
        return 1.0

    def factor(step: int) -> float:
        value = decay(step)
        if warm_steps > 0:
            value *= min(1.0, (step + 1) / warm_steps)
        return value

    return factor
