"""The trainer, top to bottom: ``train_one_epoch``, ``evaluate``, ``fit``.

A run folder (``fit(config, out_dir)``) holds::

    config.json          the resolved TrainConfig (normalisation mean/std filled in)
    environment.json     versions, device, precision, git commit; resumes appended
    train.log            this run's log messages (logger "ltpa"), appended on resume
    metrics.jsonl        one JSON object per epoch
    curves.png           loss / accuracy / lr per epoch, redrawn every epoch
    checkpoints/         epoch_NNNN.{safetensors,json} (the last keep_last) and best.*
    final_metrics.json   test metrics, evaluated once after the last epoch
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .checkpoint import (atomic_write_bytes, atomic_write_json, latest_checkpoint, load_checkpoint,
                         load_model_state, prune_checkpoints, save_checkpoint)
from .config import TrainConfig, resume_config
from .data_setup import BatchLoader, build_data, channel_mean_std
from .meters import accuracy_ks, append_jsonl, read_jsonl, topk_correct
from .plots import plot_curves
from .precision import Precision, algorithm_settings, describe_environment, resolve_precision

__all__ = ["TrainingDiverged", "RunResult", "train_one_epoch", "evaluate", "fit", "make_lr_lambda"]

logger = logging.getLogger(__name__)

RUN_FORMAT = "ltpa-run"
CHECKPOINT_DIR = "checkpoints"
RUN_FILES = ("config.json", "environment.json", "train.log", "metrics.jsonl", "curves.png",
             "final_metrics.json")
class TrainingDiverged(RuntimeError):
    """Training stopped because the loss became NaN/inf or never left chance level."""


@dataclass
class RunResult:
    """What :func:`fit` returns. Accuracies are percentages.

    Attributes:
        out_dir: the run folder.
        config: the resolved config the run used.
        epochs_completed: epochs trained in total (including earlier sessions when resumed).
        test_weights: ``"best"`` (highest val top-1) or ``"final"``: which weights were tested.
        tested_epoch: the epoch those weights come from.
        val: validation metrics of the tested weights (empty without a validation split).
        test: ``loss``, ``acc1`` (and ``acc5`` with >= 5 classes), ``samples``.
        checkpoint: sidecar of the tested weights; last_checkpoint: of the final epoch.
        final_metrics_path, metrics_path, curves_path: the files written.
    """

    out_dir: Path
    config: TrainConfig
    epochs_completed: int
    test_weights: str
    tested_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    checkpoint: Path
    last_checkpoint: Path
    final_metrics_path: Path
    metrics_path: Path
    curves_path: Path


# ----------------------------------------------------------------------------- one epoch


def _hints(config: TrainConfig | None) -> str:
    lr = f" (now {config.lr:g})" if config is not None else ""
    return (
        f"Things to try: lower the learning rate{lr}, e.g. --set lr=0.01; for softmax-attention "
        "models trained with the official lr=1.0 recipe, enable the gradient averaging of the "
        "original code (--set model_options.grad_average=true) or use lr=0.1; add warm-up "
        "(--set warmup_epochs=1) or gradient clipping (--set grad_clip_norm=5); check the input "
        "normalisation (mean/std in config.json should match the data)."
    )


def train_one_epoch(
    model: nn.Module,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    *,
    epoch: int,
    grad_clip_norm: float = 0.0,
    log_every: int = 10,
    progress: bool = True,
    config: TrainConfig | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: cross-entropy on ``model(images).logits``, SGD step per batch,
    and a scheduler step per batch (the lr lambdas of :func:`make_lr_lambda` count steps).

    The loss is checked for NaN/inf at the first batch and every ``log_every`` batches (each
    check waits for the device; the accumulated sum means no bad batch goes unnoticed).

    Returns:
        ``loss`` (mean per image), ``acc1`` (%), ``samples``, ``steps``, ``seconds``,
        ``images_per_s``.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    model.train()
    device = precision.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = steps = 0
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}", disable=not progress, leave=False,
               dynamic_ncols=True, unit="batch")
    start = time.perf_counter()
    try:
        for i, (images, targets) in enumerate(loader):
            with precision.autocast():
                logits = model(images).logits  # (B, K)
                loss = F.cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip_norm > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            steps += 1
            seen += len(targets)
            loss_sum += loss.detach().double() * len(targets)
            correct += topk_correct(logits.detach(), targets, (1,))[0]
            if i == 0 or (i + 1) % log_every == 0 or i + 1 == len(loader):
                mean_loss = loss_sum.item() / seen  # waits for the device
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"the training loss became {mean_loss} in epoch {epoch} (batch {i + 1} of "
                        f"{len(loader)}): the weights have blown up, so the run was stopped. "
                        + _hints(config)
                    )
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{100.0 * correct.item() / seen:.1f}%",
                                img_s=f"{seen / max(elapsed, 1e-9):.0f}")
            bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return {
        "loss": loss_sum.item() / max(seen, 1),
        "acc1": 100.0 * correct.item() / max(seen, 1),
        "samples": seen,
        "steps": steps,
        "seconds": seconds,
        "images_per_s": seen / max(seconds, 1e-9),
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, precision: Precision, *,
             num_classes: int) -> dict[str, float]:
    """Mean cross-entropy and top-1 (top-5 with >= 5 classes) accuracy over every sample.

    The model runs in eval mode; its previous mode is restored afterwards.

    Returns:
        ``loss``, ``acc1`` (%), optionally ``acc5`` (%), ``samples``.
    """
    was_training = model.training
    model.eval()
    ks = accuracy_ks(num_classes)
    loss_sum = torch.zeros((), dtype=torch.float64, device=precision.device)
    correct = torch.zeros(len(ks), dtype=torch.int64, device=precision.device)
    seen = 0
    try:
        for images, targets in loader:
            with precision.autocast():
                logits = model(images).logits.float()  # (B, K)
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
            correct += topk_correct(logits, targets, ks)
            seen += len(targets)
    finally:
        model.train(was_training)
    if seen == 0:
        return {}
    out = {"loss": loss_sum.item() / seen}
    for k, c in zip(ks, correct.tolist()):
        out[f"acc{k}"] = 100.0 * c / seen
    out["samples"] = seen
    return out


# ----------------------------------------------------------------------------- schedule


def make_lr_lambda(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Factor on ``config.lr`` at optimizer step ``s`` (0-based), for ``LambdaLR``.

    Step decay happens at epoch boundaries: ``lr_gamma ** (epoch // lr_step_epochs)``, or, when
    ``lr_milestones`` is set, one factor per milestone reached (``lr_milestone_gammas`` or
    ``lr_gamma``). Warm-up multiplies by ``(s + 1) / (warmup_epochs * steps_per_epoch)`` until
    that reaches 1. A plain function, so the scheduler's state dict stays JSON-friendly.
    """
    milestones = tuple(config.lr_milestones)
    gammas = tuple(config.lr_milestone_gammas) or (config.lr_gamma,) * len(milestones)
    warm_steps = config.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        epoch = step // steps_per_epoch
        if milestones:
            value = 1.0
            for milestone, gamma in zip(milestones, gammas):
                if epoch >= milestone:
                    value *= gamma
        elif config.lr_step_epochs > 0:
            value = config.lr_gamma ** (epoch // config.lr_step_epochs)
        else:
            value = 1.0
        if warm_steps > 0:
            value *= min(1.0, (step + 1) / warm_steps)
        return value

    return factor


# ----------------------------------------------------------------------------- run folder


def _is_run(out_dir: Path) -> bool:
    try:
        env = json.loads((out_dir / "environment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(env, dict) and env.get("format") == RUN_FORMAT


def _remove_run_files(out_dir: Path) -> None:
    """Delete a previous run's own files only; anything else in the folder stays."""
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    ckpt_dir = out_dir / CHECKPOINT_DIR
    if ckpt_dir.is_dir():
        for pattern in ("epoch_*.json", "epoch_*.safetensors", "best.json", "best.safetensors",
                        ".*.tmp"):
            for path in ckpt_dir.glob(pattern):
                path.unlink()
        with contextlib.suppress(OSError):
            ckpt_dir.rmdir()  # only if nothing foreign is left in it


def _check_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> str:
    """Decide what to do with ``out_dir`` without changing anything: ``"new"``, ``"resume"``,
    ``"overwrite"`` (a previous run's files are removed) or ``"beside"`` (write next to foreign
    files). Raises ValueError when the folder may not be used."""
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; choose one")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a folder; choose another path")
    contents = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    if resume:
        if not _is_run(out_dir):
            raise ValueError(
                f"cannot resume: {out_dir} does not hold an ltpa run (no environment.json of one). "
                f"Start a new run without resume=True."
            )
        if latest_checkpoint(out_dir / CHECKPOINT_DIR) is None:
            raise ValueError(
                f"cannot resume: {out_dir} holds a run but no epoch checkpoint (it stopped before "
                f"finishing its first epoch). Start it again with overwrite=True."
            )
        return "resume"
    if not contents:
        return "new"
    if not overwrite:
        what = "already holds an ltpa run" if _is_run(out_dir) else "is not empty"
        raise ValueError(
            f"output folder {out_dir} {what} ({', '.join(contents[:6])}"
            f"{', ...' if len(contents) > 6 else ''}). Pass resume=True to continue that run, "
            f"overwrite=True to replace it, or choose a new folder. Nothing was changed."
        )
    if _is_run(out_dir):
        return "overwrite"
    clashes = [name for name in (*RUN_FILES, CHECKPOINT_DIR) if (out_dir / name).exists()]
    if clashes:
        raise ValueError(
            f"overwrite=True, but {out_dir} is not an ltpa run and holds files a run would replace "
            f"({', '.join(clashes)}); refusing to delete them. Choose another folder."
        )
    return "beside"


@contextlib.contextmanager
def _run_logging(out_dir: Path) -> Iterator[None]:
    """Copy the "ltpa" logger's INFO messages into ``out_dir/train.log`` for the run."""
    root = logging.getLogger("ltpa")
    handler = logging.FileHandler(out_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


# ----------------------------------------------------------------------------- fit


def fit(config: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False,
        overwrite: bool = False, progress: bool = True) -> RunResult:
    """Train ``config.model`` on ``config.data``, validating every epoch, and test once at the end.

    The test set is evaluated once, after the last epoch, with the weights of the epoch with
    the best validation top-1 (``test_weights="auto"``/``"best"``; ties keep the earlier epoch)
    or of the final epoch (``"final"``, and ``"auto"`` without a validation split). Which one is
    recorded in ``final_metrics.json``.

    Args:
        config: the run's settings; validated, and ``mean``/``std`` computed on the train split
            when None.
        out_dir: the run folder (layout in this module's docstring). Must be new or empty
            unless ``resume`` or ``overwrite``.
        resume: continue the run in ``out_dir`` from its last epoch checkpoint (model,
            optimizer, scheduler, scaler, epoch, step and RNG states), with ``config.epochs``
            possibly raised. Only the settings in ``RESUMABLE_CHANGES`` may differ from the run's.
        overwrite: delete a previous run's files in ``out_dir`` first (other files are kept).
        progress: show a tqdm bar per epoch (loss, accuracy, images/s) on stderr.

    Returns:
        A :class:`RunResult`.

    Side effects: a fresh run seeds torch, numpy and ``random`` globally from ``config.seed``
    (a resumed one restores their saved states); ``deterministic``/``cpu_threads`` apply only
    while ``fit`` runs. Messages go to the ``"ltpa"`` logger (raised to INFO for the run) and
    to ``train.log``.

    Raises:
        ValueError: bad config or a folder that may not be written (nothing is changed then).
        TrainingDiverged: NaN/inf loss, or a loss stuck at ln(num_classes) after
            ``stuck_warmup_epochs`` (checkpoints up to the previous epoch are kept).
    """
    config = TrainConfig.from_dict(config.to_dict()).validate()
    out_dir = Path(out_dir)
    # Everything that can reject the request runs before the folder is touched.
    action = _check_out_dir(out_dir, resume=resume, overwrite=overwrite)
    if resume:
        saved = TrainConfig.from_dict(json.loads((out_dir / "config.json").read_text(encoding="utf-8")))
        config = resume_config(saved, config).validate()
    precision = resolve_precision(config.precision, config.channels_last, config.device)
    if not resume:
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
    from ltpa.models import create_model

    options = {"input_size": config.image_size, **config.model_options}
    model = create_model(config.model, num_classes=config.num_classes, **options)
    data = build_data(config)
    if data.num_classes != config.num_classes:
        raise ValueError(f"data has {data.num_classes} classes but num_classes={config.num_classes}")
    if config.mean is None or config.std is None:
        mean, std = channel_mean_std(data.train_images)
        config = dataclasses.replace(config, mean=config.mean or mean, std=config.std or std)
    resume_from = load_checkpoint(latest_checkpoint(out_dir / CHECKPOINT_DIR)) if resume else None
    if resume_from is not None and resume_from.epoch > config.epochs:
        raise ValueError(f"cannot resume {out_dir} at epoch {resume_from.epoch} with epochs="
                         f"{config.epochs}; epochs may only stay or grow on resume")

    if action == "overwrite":
        _remove_run_files(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    with _run_logging(out_dir), algorithm_settings(config.deterministic, precision.device,
                                                      config.cpu_threads):
        logger.info("%s run in %s (%s)", "resuming" if resume else "starting", out_dir,
                    precision.describe())
        if action == "overwrite":
            logger.info("overwrite=True: removed the previous run's files in %s", out_dir)
        elif action == "beside":
            logger.warning("writing the run into non-empty folder %s; its other files are left "
                           "as they are", out_dir)
        logger.info("data: %s", data.describe())
        logger.info("config: %s", json.dumps(config.to_dict(), sort_keys=True))
        atomic_write_json(out_dir / "config.json", config.to_dict())
        environment = describe_environment(precision)
        if resume:
            previous = json.loads((out_dir / "environment.json").read_text(encoding="utf-8"))
            previous.setdefault("resumed", []).append(environment)
            atomic_write_json(out_dir / "environment.json", previous)
        else:
            atomic_write_json(out_dir / "environment.json", {"format": RUN_FORMAT, **environment})

        model.to(precision.device, memory_format=precision.memory_format)
        logger.info("model %s: %.3f M parameters", config.model,
                    sum(p.numel() for p in model.parameters()) / 1e6)

        common = dict(mean=config.mean, std=config.std, device=precision.device,
                      memory_format=precision.memory_format)
        train_loader = BatchLoader(
            data.train_images, data.train_targets, batch_size=config.batch_size, shuffle=True,
            drop_last=config.drop_last, augment=True, hflip=config.hflip,
            crop_padding=config.crop_padding, seed=config.seed,
            limit_batches=config.limit_train_batches, name="train", **common)
        val_loader = BatchLoader(data.val_images, data.val_targets, batch_size=config.eval_batch_size,
                                 name="val", **common)
        test_loader = BatchLoader(data.test_images, data.test_targets,
                                  batch_size=config.eval_batch_size, name="test", **common)
        has_val = len(data.val_targets) > 0

        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay, nesterov=config.nesterov)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, make_lr_lambda(config, len(train_loader)))
        scaler = precision.grad_scaler()

        start_epoch, step = 0, 0
        best_acc, best_epoch = -math.inf, 0
        if resume_from is not None:
            ckpt = resume_from
            load_model_state(model, ckpt)
            saved_scaler = ckpt.states.get("scaler")
            ckpt.restore_training_state(optimizer, scheduler,
                                        scaler if scaler.is_enabled() and saved_scaler else None)
            ckpt.restore_rng()
            start_epoch, step = ckpt.epoch, ckpt.step
            if ckpt.metrics.get("best_val_acc1") is not None:
                best_acc = ckpt.metrics["best_val_acc1"]
            best_epoch = ckpt.metrics.get("best_epoch", 0)
            logger.info("resumed from %s: epoch %d, step %d", ckpt.path, start_epoch, step)
        metrics_path = out_dir / "metrics.jsonl"
        records = read_jsonl(metrics_path, up_to_epoch=start_epoch)
        if resume:  # drop lines of epochs after the checkpoint (a crash between the two writes)
            atomic_write_bytes(metrics_path, "".join(json.dumps(r) + "\n" for r in records).encode())
        curves_path = out_dir / "curves.png"

        for epoch in range(start_epoch + 1, config.epochs + 1):
            train_loader.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]  # at the epoch's first step
            train = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, precision,
                                    epoch=epoch, grad_clip_norm=config.grad_clip_norm,
                                    log_every=config.log_every, progress=progress, config=config)
            step += train["steps"]
            val = evaluate(model, val_loader, precision, num_classes=config.num_classes) if has_val else {}
            record = {"epoch": epoch, "step": step, "lr": lr,
                      "train_loss": train["loss"], "train_acc1": train["acc1"],
                      **{f"val_{k}": v for k, v in val.items() if k != "samples"},
                      "images_per_s": train["images_per_s"], "seconds": train["seconds"]}
            records.append(record)
            append_jsonl(metrics_path, record)
            logger.info("epoch %d/%d  lr %.4g  train loss %.4f acc %.2f%%  %s %.0f img/s  %.1f s",
                        epoch, config.epochs, lr, train["loss"], train["acc1"],
                        f"val loss {val['loss']:.4f} acc {val['acc1']:.2f}%" if val else "(no val)",
                        train["images_per_s"], train["seconds"])
            is_best = has_val and val["acc1"] > best_acc
            if is_best:
                best_acc, best_epoch = val["acc1"], epoch
            ckpt_metrics = {**{k: v for k, v in record.items() if k not in ("epoch", "step")},
                            "best_val_acc1": best_acc if has_val else None, "best_epoch": best_epoch}
            saved = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                         config=config.to_dict(), epoch=epoch, step=step, metrics=ckpt_metrics)
            save_checkpoint(ckpt_dir, f"epoch_{epoch:04d}", **saved)
            if is_best:
                save_checkpoint(ckpt_dir, "best", **saved)
            prune_checkpoints(ckpt_dir, config.keep_last)
            plot_curves(records, curves_path, title=f"{config.model} on {config.data}")
            _check_stuck(config, epoch, train["loss"])

        return _final_test(config, out_dir, model, test_loader, precision, records,
                           has_val=has_val, best_epoch=best_epoch)


def _check_stuck(config: TrainConfig, epoch: int, train_loss: float) -> None:
    chance = math.log(config.num_classes)
    if (config.divergence_check and epoch >= max(config.stuck_warmup_epochs, 1)
            and abs(train_loss - chance) < config.stuck_tolerance):
        raise TrainingDiverged(
            f"after {epoch} epoch(s) the training loss is {train_loss:.4f}, within "
            f"{config.stuck_tolerance} of ln({config.num_classes}) = {chance:.4f}, the loss of a "
            f"uniform guess: the model is not learning, so the run was stopped (its checkpoints "
            f"are kept). " + _hints(config)
            + f" To allow more epochs at chance, raise stuck_warmup_epochs (now "
            f"{config.stuck_warmup_epochs}) or set divergence_check=false."
        )


def _final_test(config: TrainConfig, out_dir: Path, model: nn.Module, test_loader: BatchLoader,
                precision: Precision, records: list[dict[str, Any]], *, has_val: bool,
                best_epoch: int) -> RunResult:
    ckpt_dir = out_dir / CHECKPOINT_DIR
    last = latest_checkpoint(ckpt_dir)
    choice = config.test_weights if config.test_weights != "auto" else ("best" if has_val else "final")
    if choice == "best" and (ckpt_dir / "best.json").exists():
        chosen = ckpt_dir / "best.json"
        load_model_state(model, load_checkpoint(chosen))
        tested_epoch = best_epoch
    else:
        choice, chosen = "final", last
        tested_epoch = records[-1]["epoch"] if records else 0
    record = next((r for r in records if r["epoch"] == tested_epoch), {})
    val = {k[4:]: v for k, v in record.items() if k.startswith("val_")}
    test = evaluate(model, test_loader, precision, num_classes=config.num_classes)
    logger.info("test (%s weights, epoch %d): loss %.4f  acc1 %.2f%%%s", choice, tested_epoch,
                test["loss"], test["acc1"], f"  acc5 {test['acc5']:.2f}%" if "acc5" in test else "")
    final_path = out_dir / "final_metrics.json"
    atomic_write_json(final_path, {
        "test_weights": choice, "tested_epoch": tested_epoch,
        "checkpoint": str(chosen.relative_to(out_dir)), "epochs_completed": config.epochs,
        "val": val, "test": test,
    })
    return RunResult(out_dir=out_dir, config=config, epochs_completed=config.epochs,
                     test_weights=choice, tested_epoch=tested_epoch, val=val, test=test,
                     checkpoint=chosen, last_checkpoint=last, final_metrics_path=final_path,
                     metrics_path=out_dir / "metrics.jsonl", curves_path=out_dir / "curves.png")
