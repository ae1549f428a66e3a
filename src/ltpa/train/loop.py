"""The trainer, top to bottom: ``train_one_epoch``, ``make_lr_lambda``, ``fit``.

``fit`` writes a run folder (layout in :mod:`ltpa.runs.layout`). Under torchrun it trains
data-parallel (:mod:`ltpa.train.distributed`): every rank trains on its shard, rank 0 alone
logs and writes, and evaluation counts every sample once across ranks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .._files import atomic_write_json
from ..runs.checkpoints import CheckpointStore, latest_checkpoint, load_checkpoint, load_model_state
from ..runs.config import TrainConfig
from ..runs.layout import trainer_wrote
from ..runs.run import Run
from .data_setup import BatchLoader
from .distributed import DistInfo, all_reduce_sum, barrier, distributed, read_dist_env
from .evaluation import classification_report, evaluate, predict, write_report
from .failures import DISK_FULL_ERRNOS, DiskFull, TrainingDiverged, check_stuck, diverged, disk_full
from .interrupt import TrainingInterrupted
from .meters import topk_correct
from .precision import Precision, algorithm_settings
from .run_dir import CHECKPOINT_DIR, run_logging
from .run_plan import RunPlan, plan_run, saved_config
from .run_setup import make_lr_lambda, write_run_files
from .state import TrainState

__all__ = ["TrainingDiverged", "TrainingInterrupted", "RunResult", "train_one_epoch", "evaluate", "fit",
           "make_lr_lambda"]

logger = logging.getLogger(__name__)
_SINGLE = DistInfo()


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
        test_report_path: per-class accuracy and confusion matrix of the test set.
        model: the trained model (unwrapped, on the run's device) holding the tested weights.
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
    test_report_path: Path | None = None
    model: nn.Module | None = dataclasses.field(default=None, repr=False)


# ----------------------------------------------------------------------------- one epoch


def _accumulate(model: nn.Module, images: Tensor, targets: Tensor, precision: Precision,
                scaler: torch.amp.GradScaler, micro_batches: int, *,
                label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Forward and backward of one batch in ``micro_batches`` chunks, gradients summed as for
    the whole batch (each chunk's mean loss weighted by its share). Under DDP the gradients are
    all-reduced once, after the last chunk. BatchNorm sees each chunk as its own batch.

    Chunk sizes differ by one image at most, and a short batch (the last of an epoch) gets
    fewer chunks so that none holds a single image, which BatchNorm cannot train on.

    Returns the batch's logits (B, K) and mean loss, detached.
    """
    parts = max(1, min(micro_batches, len(targets) // 2))
    chunks = list(zip(images.tensor_split(parts), targets.tensor_split(parts)))
    logits_parts, loss_total = [], torch.zeros((), device=images.device)
    for index, (chunk_images, chunk_targets) in enumerate(chunks):
        last = index == len(chunks) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast():
                logits = model(chunk_images).logits  # (b, K)
                loss = F.cross_entropy(logits.float(), chunk_targets, label_smoothing=label_smoothing)
                loss = loss * (len(chunk_targets) / len(targets))
            scaler.scale(loss).backward()
        logits_parts.append(logits.detach())
        loss_total = loss_total + loss.detach()
    return torch.cat(logits_parts), loss_total


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
    dist: DistInfo | None = None,
    position: dict[str, Any] | None = None,
    after_step: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: cross-entropy on ``model(images).logits``, optimizer step per batch,
    and a scheduler step per batch (the lr lambdas of :func:`make_lr_lambda` count steps).

    The loss is checked for NaN/inf at the first batch and every ``log_every`` batches (each
    check waits for the device; the accumulated sum means no bad batch goes unnoticed). With
    several ranks the checks and the returned numbers use the sums over all ranks, so every
    rank takes the same decision.

    ``position`` (from a mid-epoch checkpoint: ``batch``, ``sums``, ``steps``, ``seconds``)
    continues an epoch part-way; the loader must have been set to that batch. ``after_step`` is
    called after every step with the current position and stops the epoch when it returns True.

    Returns:
        ``loss`` (mean per image), ``acc1`` (%), ``samples``, ``steps``, ``seconds``,
        ``images_per_s`` (all ranks together), ``stopped`` (after_step said stop).

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    dist = dist or _SINGLE
    accumulate = config.accumulate_steps if config is not None else 1
    smoothing = config.label_smoothing if config is not None else 0.0
    model.train()
    device = precision.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
    steps, first, earlier, stopped = 0, 0, 0.0, False
    if position is not None:
        sums = position["sums"].to(device=device, dtype=torch.float64).clone()
        steps, first, earlier = int(position["steps"]), int(position["batch"]), float(position["seconds"])
    bar = tqdm(total=len(loader), initial=first, desc=f"epoch {epoch}", disable=not (progress and dist.is_main),
               leave=False, dynamic_ncols=True, unit="batch")
    start = time.perf_counter() - earlier
    try:
        for i, (images, targets) in enumerate(loader, start=first):
            optimizer.zero_grad(set_to_none=True)
            logits, loss = _accumulate(model, images, targets, precision, scaler, accumulate,
                                       label_smoothing=smoothing)
            if grad_clip_norm > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            steps += 1
            sums[0] += loss.detach().double() * len(targets)
            sums[1] += topk_correct(logits.detach(), targets, (1,))[0]
            sums[2] += len(targets)
            if i == 0 or (i + 1) % log_every == 0 or i + 1 == len(loader):
                _check_loss(sums, dist, bar, time.perf_counter() - start, config,
                            where=f"in epoch {epoch} (batch {i + 1} of {len(loader)})")
            bar.update(1)
            if after_step is not None and after_step(
                    {"batch": i + 1, "sums": sums, "steps": steps, "seconds": time.perf_counter() - start}):
                stopped = True
                break
    finally:
        bar.close()
    all_reduce_sum(sums, dist)
    seconds = time.perf_counter() - start
    loss_sum, correct, seen = sums[0].item(), sums[1].item(), int(sums[2].item())
    return {
        "loss": loss_sum / max(seen, 1),
        "acc1": 100.0 * correct / max(seen, 1),
        "samples": seen,
        "steps": steps,
        "seconds": seconds,
        "images_per_s": seen / max(seconds, 1e-9),
        "stopped": stopped,
    }


def _check_loss(sums: Tensor, dist: DistInfo, bar, elapsed: float, config: TrainConfig | None, *,
                where: str) -> None:
    """Stop on a NaN/inf loss (summed over every rank, so all take the same decision) and show
    loss, accuracy and speed so far on the progress bar."""
    total = all_reduce_sum(sums.clone(), dist)
    mean_loss, correct, seen = total[0].item() / total[2].item(), total[1].item(), total[2].item()
    if not math.isfinite(mean_loss):
        raise diverged(mean_loss, where, config)
    bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{100.0 * correct / seen:.1f}%",
                    img_s=f"{seen / max(elapsed, 1e-9):.0f}")


# ----------------------------------------------------------------------------- fit


def fit(config: TrainConfig | None, out_dir: str | os.PathLike, *, resume: bool = False,
        overwrite: bool = False, progress: bool = True) -> RunResult:
    """Train ``config.model`` on ``config.data``, validating every epoch, and test once at the end.

    The test set is evaluated once, after the last epoch, with the weights of the epoch with
    the best validation top-1 (``test_weights="auto"``/``"best"``; ties keep the earlier epoch)
    or of the final epoch (``"final"``, and ``"auto"`` without a validation split). Which one is
    recorded in ``final_metrics.json``; ``test_report.json`` and ``confusion_matrix.{csv,png}``
    add per-class accuracy.

    Started by torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set), ``fit`` joins or creates
    the process group, trains with DistributedDataParallel on ``batch_size / world_size``
    images per rank, and only rank 0 logs and writes files. Every rank returns the same result.

    Args:
        config: the run's settings; validated, and ``mean``/``std`` computed on the train split
            when None. With ``resume``, None continues the run's saved plan (its config.json,
            epochs included); a config given then may differ only in ``RESUMABLE_CHANGES``.
        out_dir: the run folder (see :mod:`ltpa.runs.layout`). Must be new or empty unless
            ``resume`` or ``overwrite``.
        resume: continue the run in ``out_dir`` from its last checkpoint (model, optimizer,
            scheduler, scaler, epoch, step and RNG states; ZCA from the run), with
            ``config.epochs`` possibly raised. Only ``RESUMABLE_CHANGES`` may differ. A run
            stopped before its first checkpoint starts again from epoch 1.
        overwrite: delete a previous run's files in ``out_dir`` first (other files are kept).
        progress: show a tqdm bar per epoch (loss, accuracy, images/s) on stderr (rank 0).

    Returns:
        A :class:`RunResult`.

    Side effects: seeds torch, numpy and ``random`` globally (from ``config.seed``, and torch
    again at every epoch start from (seed, epoch, rank), so that a resumed run draws the same
    dropout noise); ``deterministic``/``cpu_threads`` apply only while ``fit`` runs. Messages go
    to the ``"ltpa"`` logger (raised to INFO for the run) and to ``train.log``.

    Raises:
        ValueError: anything :func:`~ltpa.train.run_plan.plan_run` rejects: bad config, data,
            patterns, batch sizes, run files or a folder that may not be written. These are all
            checked before the folder is touched, so nothing is written or deleted then.
        FileNotFoundError: a missing ``config.init``.
        OSError: a write failed; a full disk (or quota, or file size limit) names the file and
            says whether to resume or start again.
        TrainingDiverged: NaN/inf loss, or a loss stuck at ln(num_classes) after
            ``stuck_warmup_epochs`` (checkpoints up to the previous epoch are kept).
    """
    if config is None:
        if not resume:
            raise TypeError("fit needs a TrainConfig; config=None is only for resume=True, which "
                            "continues the run's saved config")
        config = saved_config(out_dir)
    config = TrainConfig.from_dict(config.to_dict()).validate()
    dist = read_dist_env(config.device)
    if config.batch_size % dist.world_size:
        raise ValueError(f"batch_size={config.batch_size} is the global batch and must divide "
                         f"evenly over {dist.world_size} processes; change batch_size or nproc")
    with distributed(dist):
        return _fit(config, Path(out_dir), dist, resume=resume, overwrite=overwrite,
                    progress=progress)


def _fit(config: TrainConfig, out_dir: Path, dist: DistInfo, *, resume: bool, overwrite: bool,
         progress: bool) -> RunResult:
    # Every check that can reject the request runs, on every rank, before the folder is touched.
    plan = plan_run(config, out_dir, dist, resume=resume, overwrite=overwrite)
    barrier(dist)
    try:
        return _train(plan, dist, progress=progress)
    except OSError as err:
        if err.errno not in DISK_FULL_ERRNOS or isinstance(err, DiskFull):
            raise
        raise disk_full(err, out_dir, latest_checkpoint(out_dir / CHECKPOINT_DIR),
                        resumable=trainer_wrote(out_dir)) from err


def _train(plan: RunPlan, dist: DistInfo, *, progress: bool) -> RunResult:
    """Create the run (rank 0 holds its folder: a second writer fails at once with FolderBusy,
    and the manifest marks it as a run the analysis commands refuse to write into), build the
    train state, loop over the epochs, test."""
    config, main = plan.config, dist.is_main
    mode = {"new": "new", "beside": "overwrite", "resume": "resume", "overwrite": "overwrite"}[plan.action]
    run = Run.create(config, plan.out_dir, mode, command="ltpa train") if main else None
    with run or contextlib.nullcontext():
        barrier(dist)
        log_to_file = run_logging(plan.out_dir, plan.log_records) if main else contextlib.nullcontext()
        with log_to_file, algorithm_settings(config.deterministic, plan.precision.device, config.cpu_threads):
            _begin(plan, dist, run.stale_temporaries if run is not None else [])
            state = TrainState(plan, dist, progress=progress, train_one_epoch=train_one_epoch, evaluate=evaluate)
            try:
                for epoch in range(plan.start_epoch + 1, config.epochs + 1):
                    train = state.train_epoch(epoch)
                    val = state.validate()
                    state.end_epoch(epoch, train, val)
                    check_stuck(config, epoch, train["loss"])
                state.stop.uninstall()  # a signal during the final test stops it the usual way
                barrier(dist)  # the checkpoints rank 0 wrote are complete
                return _final_test(config, plan.out_dir, plan.model, state.eval_model, plan.test_loader,
                                   plan.precision, state.records, plan.data.class_names, dist,
                                   has_val=state.has_val, best_epoch=state.best_epoch)
            finally:
                state.close()


def _begin(plan: RunPlan, dist: DistInfo, stale: list[Path]) -> None:
    """Log what the run is, repair the checkpoints of a resumed run, write the run's records."""
    config, out_dir, main = plan.config, plan.out_dir, dist.is_main
    say = logger.info if main else _quiet
    say("%s run in %s (%s, %d process(es))", "resuming" if plan.action == "resume" else "starting",
        out_dir, plan.precision.describe(), dist.world_size)
    if main and stale:
        logger.warning("removed %d temporary file(s) left by an interrupted write: %s",
                       len(stale), ", ".join(p.name for p in stale))
    if main and plan.action == "resume":
        for repaired in CheckpointStore(out_dir / CHECKPOINT_DIR).repair(plan.records):
            logger.warning("checkpoints: %s", repaired)
    if plan.action == "overwrite":
        say("overwrite=True: removed the previous run's files in %s", out_dir)
    elif plan.action == "beside" and main:
        logger.warning("writing the run into non-empty folder %s; its other files are left as they are", out_dir)
    say("data: %s", plan.data.describe())
    say("config: %s", json.dumps(config.to_dict(), sort_keys=True))
    if main:
        write_run_files(out_dir, config, plan.precision, dist, zca=plan.zca,
                        class_names=tuple(plan.data.class_names),
                        previous_environment=plan.previous_environment, transfer_report=plan.transfer_report)
    say("model %s: %.3f M parameters", config.model, sum(p.numel() for p in plan.model.parameters()) / 1e6)
    if plan.transfer_report is not None:
        say("initialised from %s:\n%s", config.init, plan.transfer_report.format())
    if plan.resumed is not None:
        say("resumed from %s: epoch %d, step %d", plan.resumed.path, plan.start_epoch, plan.step)


def _quiet(*_args: Any) -> None:
    """Logging on ranks other than 0: nothing."""


def _final_test(config: TrainConfig, out_dir: Path, model: nn.Module, eval_model: nn.Module,
                test_loader: BatchLoader, precision: Precision, records: list[dict[str, Any]],
                class_names: tuple[str, ...], dist: DistInfo, *, has_val: bool,
                best_epoch: int) -> RunResult:
    ckpt_dir = out_dir / CHECKPOINT_DIR
    last = latest_checkpoint(ckpt_dir)
    choice = config.test_weights if config.test_weights != "auto" else ("best" if has_val else "final")
    if choice == "best" and (ckpt_dir / "best.json").exists():
        chosen = ckpt_dir / "best.json"
        best = load_checkpoint(chosen)
        load_model_state(model, best)
        tested_epoch = best.epoch  # from the weights themselves, even after a kill between saves
    else:
        choice, chosen = "final", last
        tested_epoch = records[-1]["epoch"] if records else 0
    record = next((r for r in records if r["epoch"] == tested_epoch), {})
    val = {k[4:]: v for k, v in record.items() if k.startswith("val_")}
    report = classification_report(predict(eval_model, test_loader, precision, dist=dist),
                                   class_names)
    test = {"loss": report["loss"], **{k: report[k] for k in ("acc1", "acc5") if k in report},
            "samples": report["samples"]}
    final_path, report_path = out_dir / "final_metrics.json", out_dir / "test_report.json"
    if dist.is_main:
        logger.info("test (%s weights, epoch %d): loss %.4f  acc1 %.2f%%%s", choice, tested_epoch,
                    test["loss"], test["acc1"], f"  acc5 {test['acc5']:.2f}%" if "acc5" in test else "")
        atomic_write_json(final_path, {
            "test_weights": choice, "tested_epoch": tested_epoch,
            "checkpoint": str(chosen.relative_to(out_dir)), "epochs_completed": config.epochs,
            "val": val, "test": test,
        })
        write_report({"test_weights": choice, "tested_epoch": tested_epoch, **report}, out_dir,
                     title=f"{config.model} on {config.data}: test, {choice} weights")
    return RunResult(out_dir=out_dir, config=config, epochs_completed=config.epochs,
                     test_weights=choice, tested_epoch=tested_epoch, val=val, test=test,
                     checkpoint=chosen, last_checkpoint=last, final_metrics_path=final_path,
                     metrics_path=out_dir / "metrics.jsonl", curves_path=out_dir / "curves.png",
                     test_report_path=report_path, model=model)
