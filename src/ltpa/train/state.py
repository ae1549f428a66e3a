"""The state of a run while it trains (Lightning's split: state on an object; the loop in
:mod:`ltpa.train.loop` stays one readable page).

:class:`TrainState` is built from a checked :class:`~ltpa.train.run_plan.RunPlan` once the
folder is ready, and holds what changes from epoch to epoch (step, best validation top-1, the
metrics records, a mid-epoch position to continue from) next to what the epochs use (wrapped
models, checkpoint store, TensorBoard writer, overlays, the signal handlers). An epoch is
:meth:`TrainState.train_epoch`, :meth:`TrainState.validate`, :meth:`TrainState.end_epoch`.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_write_bytes
from ..runs.checkpoints import CheckpointStore
from .data_setup import DROPOUT_STREAM, derive_seed
from .distributed import DistInfo, all_reduce_sum, broadcast_buffers
from .interrupt import StopRequest, TrainingInterrupted
from .meters import append_jsonl
from .plots import plot_curves
from ..runs.layout import CHECKPOINT_DIR
from .run_plan import RunPlan
from .run_setup import AttentionOverlays, head_only, log_scalars, tensorboard, wrap

__all__ = ["TrainState"]

logger = logging.getLogger(__name__)


class TrainState:
    """Everything an epoch reads and updates. ``train_one_epoch``/``evaluate`` are the loop's
    functions (passed in, so the loop module stays the one place that names them)."""

    def __init__(self, plan: RunPlan, dist: DistInfo, *, progress: bool,
                 train_one_epoch: Callable[..., dict[str, Any]], evaluate: Callable[..., dict[str, Any]]) -> None:
        self.plan, self.dist, self.progress, self.config = plan, dist, progress, plan.config
        self._train_one_epoch, self._evaluate = train_one_epoch, evaluate
        self.store = CheckpointStore(plan.out_dir / CHECKPOINT_DIR)
        self.train_model, self.eval_model = wrap(plan.model, plan.config, dist)
        self.has_val = len(plan.data.val_targets) > 0
        self.step, self.best_acc, self.best_epoch = plan.step, plan.best_acc, plan.best_epoch
        self.records = list(plan.records)
        self.saved_at = time.monotonic()  # of the last checkpoint (checkpoint_every_minutes counts from it)
        self.position = plan.position  # a mid-epoch checkpoint's: the first epoch continues there
        self.metrics_path = plan.out_dir / "metrics.jsonl"
        resume = plan.action == "resume"
        if resume and dist.is_main:  # drop lines of epochs after the checkpoint (killed between writes)
            atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.records).encode())
        self.writer = tensorboard(plan.out_dir, plan.config, dist.is_main,
                                  purge_step=plan.start_epoch + 1 if resume else None)
        self.overlays = AttentionOverlays(plan.data.val_images, plan.data.val_targets,
                                          plan.val_loader.preprocess, tuple(plan.data.class_names))
        self.stop = StopRequest().install()

    def close(self) -> None:
        self.stop.uninstall()
        if self.writer is not None:
            self.writer.close()

    def _say(self, *args: Any) -> None:
        if self.dist.is_main:
            logger.info(*args)

    # -- one epoch
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train epoch ``epoch`` (or its rest, after a mid-epoch checkpoint).

        Raises:
            TrainingInterrupted: a SIGTERM/SIGINT arrived; a checkpoint was saved after the step.
        """
        plan, config, position = self.plan, self.config, self.position
        loader = plan.train_loader
        if position is None:
            torch.manual_seed(derive_seed(config.seed, epoch, DROPOUT_STREAM + self.dist.rank))
            loader.set_epoch(epoch)
            lr = plan.optimizer.param_groups[0]["lr"]  # at the epoch's first step
        else:  # the RNG states came back with the checkpoint
            loader.set_epoch(epoch, start_batch=int(position["batch"]), generator_state=position.get("generator"))
            lr = position["lr"]
        head_only(plan.model, plan.trainable, epoch <= config.head_warmup_epochs)
        saver = _StepCheckpoints(self, epoch=epoch, lr=lr)
        train = self._train_one_epoch(
            self.train_model, loader, plan.optimizer, plan.scheduler, plan.scaler, plan.precision,
            epoch=epoch, grad_clip_norm=config.grad_clip_norm, log_every=config.log_every,
            progress=self.progress, config=config, dist=self.dist, position=position, after_step=saver)
        self.position = None
        if train["stopped"]:
            self._say("stopped by %s in epoch %d after step %d: saved %s; resume to continue",
                      signal.Signals(self.stop.signum).name, epoch, self.step + train["steps"],
                      saver.last.name if saver.last else "nothing")
            raise TrainingInterrupted(self.stop.signum, saver.last, plan.out_dir)
        self.step += train["steps"]
        return {**train, "lr": lr}

    def validate(self) -> dict[str, Any]:
        """Validation metrics of the current weights (empty without a validation split)."""
        broadcast_buffers(self.plan.model, self.dist)  # every rank evaluates rank 0's BN statistics
        if not self.has_val:
            return {}
        return self._evaluate(self.eval_model, self.plan.val_loader, self.plan.precision,
                              num_classes=self.config.num_classes, dist=self.dist)

    def end_epoch(self, epoch: int, train: dict[str, Any], val: dict[str, Any]) -> dict[str, Any]:
        """Record the epoch (metrics.jsonl, TensorBoard, log), commit its checkpoint, redraw the curves."""
        config, plan = self.config, self.plan
        record = {"epoch": epoch, "step": self.step, "lr": train["lr"],
                  "train_loss": train["loss"], "train_acc1": train["acc1"],
                  **{f"val_{k}": v for k, v in val.items() if k != "samples"},
                  "images_per_s": train["images_per_s"], "seconds": train["seconds"]}
        self.records.append(record)
        self._say("epoch %d/%d  lr %.4g  train loss %.4f acc %.2f%%  %s %.0f img/s  %.1f s",
                  epoch, config.epochs, train["lr"], train["loss"], train["acc1"],
                  f"val loss {val['loss']:.4f} acc {val['acc1']:.2f}%" if val else "(no val)",
                  train["images_per_s"], train["seconds"])
        if self.has_val and val["acc1"] > self.best_acc:
            self.best_acc, self.best_epoch = val["acc1"], epoch
        if not self.dist.is_main:
            return record
        append_jsonl(self.metrics_path, record)
        log_scalars(self.writer, record)
        self.overlays.log(self.writer, plan.model, epoch)  # after validation: the same images every epoch
        metrics = {**{k: v for k, v in record.items() if k not in ("epoch", "step")}, **self.best_metrics()}
        # one commit: the epoch's pair, then the record naming latest and best
        self.saved_at = time.monotonic()
        self.store.save(f"epoch_{epoch:04d}", best_metric=val["acc1"] if self.has_val else None,
                        keep_last=config.keep_last, model=plan.model, optimizer=plan.optimizer,
                        scheduler=plan.scheduler, scaler=plan.scaler, config=config.to_dict(),
                        epoch=epoch, step=self.step, metrics=metrics)
        plot_curves(self.records, plan.out_dir / "curves.png", title=f"{config.model} on {config.data}")
        return record

    def best_metrics(self) -> dict[str, Any]:
        return {"best_val_acc1": self.best_acc if self.has_val else None, "best_epoch": self.best_epoch}


class _StepCheckpoints:
    """``after_step`` of ``train_one_epoch``: a mid-epoch checkpoint every
    ``checkpoint_every_steps`` steps, when ``checkpoint_every_minutes`` passed since the last
    save (rank 0's clock decides for every rank), and when a stop was requested (then it says
    stop)."""

    def __init__(self, state: TrainState, *, epoch: int, lr: float) -> None:
        self.state, self.epoch, self.lr = state, epoch, lr
        self.last: Path | None = None

    def __call__(self, position: dict[str, Any]) -> bool:
        state, plan, config = self.state, self.state.plan, self.state.plan.config
        mid_epoch = position["batch"] < len(plan.train_loader)  # the epoch's own save follows otherwise
        stop = state.stop.signum is not None
        late = (config.checkpoint_every_minutes > 0 and state.dist.is_main and mid_epoch
                and time.monotonic() - state.saved_at >= 60 * config.checkpoint_every_minutes)
        if state.dist.enabled:  # every rank stops, and saves, after the same step
            flags = torch.tensor([float(stop), float(late)], dtype=torch.float64, device=plan.precision.device)
            stop, late = (bool(v > 0) for v in all_reduce_sum(flags, state.dist).tolist())
        every, step = config.checkpoint_every_steps, state.step + position["steps"]
        due = late or (every > 0 and step % every == 0 and mid_epoch)
        if not (stop or due):
            return False
        state.saved_at = time.monotonic()
        if state.dist.is_main:
            self.last = state.store.save(
                f"step_{step:08d}", keep_last=plan.config.keep_last, model=plan.model,
                optimizer=plan.optimizer, scheduler=plan.scheduler, scaler=plan.scaler,
                config=plan.config.to_dict(), epoch=self.epoch - 1, step=step, metrics=state.best_metrics(),
                position={**position, "epoch": self.epoch, "lr": self.lr,
                          "generator": plan.train_loader.generator_state()})
            logger.info("saved mid-epoch checkpoint %s (epoch %d, batch %d of %d)", self.last.stem,
                        self.epoch, position["batch"], len(plan.train_loader))
        return stop
