"""Why a run stops before its end, and how to fix it, in the caller's terms: a loss that blew
up or never left chance level (:class:`TrainingDiverged`), and a write that found no room
(:func:`disk_full`). Fixes are :mod:`ltpa.errors` remedies, so the library names config keys and
arguments while ``ltpa train`` prints the same fixes as flags."""
from __future__ import annotations

import errno
import math
import shlex
from pathlib import Path

from ..errors import Phrase, Remedied, Setting
from ..runs.config import TrainConfig

__all__ = ["TrainingDiverged", "DiskFull", "diverged", "check_stuck", "disk_full", "DISK_FULL_ERRNOS"]


class TrainingDiverged(Remedied, RuntimeError):
    """Training stopped because the loss became NaN/inf or never left chance level. Its
    message holds remedies (``render(cli=True)`` gives them as flags)."""


class DiskFull(Remedied, OSError):
    """A run file could not be written for lack of room; ``errno`` and ``filename`` are the
    failed write's, the message says how to continue."""

    def __init__(self, *parts, errno_code: int = 0, filename: str | None = None):
        super().__init__(*parts)
        self.errno, self.filename = errno_code, filename
        self.strerror = self.render()

    def __reduce__(self):
        return (_rebuild_disk_full, (self.parts, self.errno, self.filename))


def _rebuild_disk_full(parts, errno_code, filename):
    return DiskFull(*parts, errno_code=errno_code, filename=filename)


def unusual_settings(config: TrainConfig) -> list[str]:
    """Settings far from the usual recipes that can make a run blow up or stall."""
    found = []
    adamw = config.optimizer == "adamw"
    if config.lr > (0.01 if adamw else 1.0):
        found.append(f"lr={config.lr:g} (" + ("AdamW usually trains with 1e-4 to 3e-3)" if adamw
                                            else "the paper's recipes use 0.1-1)"))
    if config.momentum > 0.95:
        found.append(f"momentum={config.momentum:g} (usually 0.9; near 1 every step adds up all the earlier ones)")
    if config.weight_decay > (0.3 if adamw else 0.01):
        found.append(f"weight_decay={config.weight_decay:g} (usually " + ("0.05 with AdamW)" if adamw else "5e-4)"))
    if config.lr_gamma > 1 or any(g > 1 for g in config.lr_milestone_gammas):
        found.append("an lr_gamma/lr_milestone_gammas above 1, which raises the lr at each step")
    found += [f"lr_multipliers {pattern!r}: {factor:g} (raises that group's lr)"
              for pattern, factor in config.lr_multipliers.items() if factor > 1]
    if config.std is not None and min(config.std) < 0.02:
        found.append(f"std={tuple(config.std)} (tiny values blow the inputs up; usually about 0.25)")
    return found


def _hints(config: TrainConfig | None) -> list[str | Setting]:
    """What to try, as message parts with remedies."""
    unusual = unusual_settings(config) if config is not None else []
    first = ("Unusual settings that can cause this: " + "; ".join(unusual) + ". Otherwise: "
             if unusual else "Things to try: ")
    adamw = config is not None and config.optimizer == "adamw"
    lr = f" (now {config.lr:g})" if config is not None else ""
    lower = 3e-4 if adamw else 0.01
    if config is not None and config.lr <= lower:  # a hint to lower the lr must not raise it
        lower = float(f"{config.lr / 10:.2g}")
    official = [] if adamw else [
        "; for softmax-attention models trained with the official lr=1.0 recipe, enable the gradient "
        "averaging of the original code (", Setting("model_options.grad_average", True), ") or use lr=0.1"]
    return [first, f"lower the learning rate{lr}: ", Setting("lr", lower), *official,
            "; add warm-up (", Setting("warmup_epochs", 1), ") or gradient clipping (", Setting("grad_clip_norm", 5),
            "); check the input normalisation (mean/std in config.json should match the data)."]


def diverged(mean_loss: float, where: str, config: TrainConfig | None) -> TrainingDiverged:
    """The error for a training loss that became NaN or infinite."""
    return TrainingDiverged(f"the training loss became {mean_loss} {where}: the weights have blown up, "
                            f"so the run was stopped. ", *_hints(config))


def check_stuck(config: TrainConfig, epoch: int, train_loss: float) -> None:
    """Stop a run whose training loss is still ln(K), a uniform guess, after
    ``stuck_warmup_epochs`` epochs.

    Raises:
        TrainingDiverged: the run is stuck at chance.
    """
    chance = math.log(config.num_classes)
    if (config.divergence_check and epoch >= max(config.stuck_warmup_epochs, 1)
            and abs(train_loss - chance) < config.stuck_tolerance):
        raise TrainingDiverged(
            f"after {epoch} epoch(s) the training loss is {train_loss:.4f}, within "
            f"{config.stuck_tolerance} of ln({config.num_classes}) = {chance:.4f}, the loss of a "
            f"uniform guess: the model is not learning, so the run was stopped (its checkpoints "
            f"are kept). ", *_hints(config),
            f" To allow more epochs at chance, raise stuck_warmup_epochs (now {config.stuck_warmup_epochs}: ",
            Setting("stuck_warmup_epochs"), ") or turn the check off (", Setting("divergence_check", False), ")."
        )


# A write that failed for lack of space: the run can continue once there is room again.
DISK_FULL_ERRNOS = {errno.ENOSPC: ("the disk is full", "free some space"),
                    errno.EDQUOT: ("the disk quota is used up", "free some space"),
                    errno.EFBIG: ("the file would exceed this system's file size limit",
                                  "raise the limit (ulimit -f)")}


def disk_full(err: OSError, out_dir: Path, latest: Path | None, *, resumable: bool) -> DiskFull:
    """The error for a run file that could not be written (``err.errno`` in
    :data:`DISK_FULL_ERRNOS`): what failed, and how to go on: resume when the run's records
    were written (``resumable``), else start it again."""
    where = err.filename or f"into {out_dir}"
    reason, remedy = DISK_FULL_ERRNOS[err.errno]
    head = f"cannot write {where}: {reason} ({err.strerror}). Files are written whole or not at all: {remedy}, then "
    quoted = shlex.quote(str(out_dir))
    if not resumable:  # its config.json/environment.json were not written: there is nothing to resume
        return DiskFull(head + "start the run again: ",
                        Phrase(f"fit(config, {str(out_dir)!r}, overwrite=True)",
                               f"ltpa train ... --out {quoted} --overwrite"),
                        errno_code=err.errno, filename=err.filename)
    since = (f"from the last complete checkpoint ({latest.stem})" if latest is not None
             else "from epoch 1 (no checkpoint was completed)")
    return DiskFull(head + f"continue the run {since}: ",
                    Phrase(f"fit(config, {str(out_dir)!r}, resume=True)", f"ltpa train --out {quoted} --resume"),
                    errno_code=err.errno, filename=err.filename)
