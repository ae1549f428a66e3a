"""The training configuration: one dataclass of plain typed defaults, JSON round-trip and
type-checked ``key=value`` overrides (the CLI's ``--set``)."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from ..errors import Setting, UserError

__all__ = ["TrainConfig", "apply_overrides", "resume_config", "RESUMABLE_CHANGES"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESIZE_MODES = ("resize_crop", "bbox_crop", "squash")
TEST_WEIGHTS = ("auto", "best", "final")
LR_SCHEDULES = ("step", "cosine", "linear")
OPTIMIZERS = ("sgd", "adamw")
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max
MAX_CPU_THREADS = 1024


SECTIONS = ("model", "data", "optimisation", "run")


def _in(section: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING):
    """A config field of ``section`` (one of :data:`SECTIONS`), recorded in its metadata."""
    assert section in SECTIONS, section
    return field(default=default, default_factory=factory, metadata={"section": section})


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` and in every checkpoint.

    The defaults are a small, quick synthetic run; the paper's recipes are presets that override
    them (see PAPER.md). Accuracies everywhere in ltpa's run files are percentages (0-100).
    """

    # model
    model: str = _in("model", "vgg_att3")
    model_options: dict[str, Any] = _in("model", factory=dict)  # passed to ltpa.create_model
    # data
    data: str = _in("data", "synthetic")  # a source known to ltpa.train.data_setup.build_data
    image_size: int = _in("model", 32)
    num_classes: int = _in("model", 10)
    num_train: int = _in("data", 5000)  # before the validation split is carved out of it
    num_test: int = _in("data", 1000)
    val_fraction: float = _in("data", 0.1)  # class-stratified, taken from the train split, never the test set
    data_seed: int = _in("data", 0)
    mean: tuple[float, ...] | None = _in("data", None)  # per channel, pixel values in [0, 1]; None: train split
    std: tuple[float, ...] | None = _in("data", None)
    hflip: bool = _in("data", True)
    crop_padding: int = _in("data", 4)  # random crop after zero padding by this many pixels; 0 = off
    zca: bool = _in("data", False)  # ZCA-whiten inputs (fitted on the train split) instead of mean/std
    zca_epsilon: float = _in("data", 1e-2)  # added to the covariance eigenvalues, in [0, 1] pixel units
    resize_mode: str = _in("data", "resize_crop")  # for file-based data: "resize_crop" | "bbox_crop" | "squash"
    subset_train: int = _in("data", 0)  # > 0: a class-stratified subset of the real train split (CPU runs)
    subset_test: int = _in("data", 0)  # > 0: the same for the test split
    # optimisation
    epochs: int = _in("optimisation", 30)
    batch_size: int = _in("optimisation", 128)
    drop_last: bool = _in("optimisation", True)  # the official code drops the last partial batch
    eval_batch_size: int = _in("run", 256)
    # "sgd" (the paper) or "adamw" (torch.optim.AdamW: momentum is its beta1, beta2 0.999, decoupled
    # weight decay, typically lr 1e-3 and weight_decay 0.05)
    optimizer: str = _in("optimisation", "sgd")
    lr: float = _in("optimisation", 0.1)
    momentum: float = _in("optimisation", 0.9)
    weight_decay: float = _in("optimisation", 5e-4)
    nesterov: bool = _in("optimisation", False)
    dampening: float = _in("optimisation", 0.0)  # Torch7's optim.sgd defaults it to the momentum (the official code)
    lr_step_epochs: int = _in("optimisation", 25)  # multiply the lr by lr_gamma every this many epochs; 0 = never
    lr_milestones: tuple[int, ...] = _in("optimisation", ())  # if set: multiply at these epochs instead
    lr_milestone_gammas: tuple[float, ...] = _in("optimisation", ())  # optional per-milestone factors (else lr_gamma)
    lr_gamma: float = _in("optimisation", 0.5)
    warmup_epochs: float = _in("optimisation", 0.0)  # linear warm-up from ~0 to lr, per optimizer step
    # "step": lr_step_epochs / lr_milestones (the paper); "cosine" or "linear": from lr after the
    # warm-up towards 0 at the end of the last epoch (short budgets; linear + warm-up is a one-cycle
    # triangle; epochs then cannot change on resume)
    lr_schedule: str = _in("optimisation", "step")
    label_smoothing: float = _in("optimisation", 0.0)  # cross-entropy target smoothing in [0, 1)
    grad_clip_norm: float = _in("optimisation", 0.0)  # 0 = no clipping
    accumulate_steps: int = _in("optimisation", 1)  # split each batch into this many micro-batches (less memory, same step)
    # transfer (ltpa.transfer): start from another run's weights
    init: str | None = _in("optimisation", None)  # checkpoint (or state dict) to initialise from
    transfer: tuple[str, ...] = _in("optimisation", ())  # patterns or a preset name; () = "all-but-head" with init
    freeze: tuple[str, ...] = _in("optimisation", ())  # parameter patterns never trained
    lr_multipliers: dict[str, float] = _in("optimisation", factory=dict)  # pattern -> lr factor
    head_warmup_epochs: int = _in("optimisation", 0)  # train only the classifier head for this many epochs
    # reproducibility and speed
    seed: int = _in("optimisation", 0)
    deterministic: bool = _in("run", False)  # torch.use_deterministic_algorithms during fit
    device: str = _in("run", "auto")  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = _in("run", "auto")  # "auto" | "fp32" | "bf16" | "fp16"
    channels_last: Union[str, bool] = _in("run", "auto")  # "auto" | True | False
    limit_train_batches: int = _in("optimisation", 0)  # > 0: stop each epoch after this many batches (dry runs)
    cpu_threads: int = _in("run", 0)  # > 0: torch.set_num_threads during the run; 0 = torch's default
    compile: bool = _in("run", False)  # torch.compile the model (checkpoints hold the unwrapped module)
    # monitoring
    log_every: int = _in("run", 10)  # batches between progress updates and NaN checks
    divergence_check: bool = _in("run", True)
    stuck_warmup_epochs: int = _in("run", 5)  # after this many epochs, a loss still at ln(K) stops the run
    stuck_tolerance: float = _in("run", 0.01)  # |train loss - ln(num_classes)| below this counts as stuck
    # outputs
    keep_last: int = _in("run", 2)  # epoch checkpoints kept (plus the best one); 0 = keep all
    checkpoint_every_steps: int = _in("run", 0)  # > 0: also a mid-epoch checkpoint every this many steps
    checkpoint_every_minutes: float = _in("run", 0.0)  # > 0: also one when this long passed since the last save
    tensorboard: bool = _in("run", True)  # TensorBoard event files in RUN/tb (rank 0)
    test_weights: str = _in("run", "auto")  # "best" (by val acc), "final", or "auto" = best if val set

    def to_dict(self, *, grouped: bool = False) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists) that :meth:`from_dict` turns back: flat
        (``{"lr": 0.1, ...}``), or with ``grouped`` one dict per section
        (``{"model": {...}, "data": {...}, "optimisation": {...}, "run": {...}}``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = json.loads(json.dumps(value))
            out[f.name] = value
        if not grouped:
            return out
        return {section: {k: v for k, v in out.items() if SECTION_OF[k] == section} for section in SECTIONS}

    @staticmethod
    def section_of(key: str) -> str:
        """The section of field ``key``: ``"model"``, ``"data"``, ``"optimisation"`` or ``"run"``."""
        return SECTION_OF[key]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict such as ``json.load(open("config.json"))``: flat, or
        grouped by section (see :meth:`to_dict`); a grouped key must be in its own section.

        Raises:
            ValueError: unknown keys (named, with the valid keys listed) or values of the wrong
                type.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a TrainConfig needs a dict, got {type(data).__name__}")
        data = flat_config(data)
        hints = _field_types()
        unknown = sorted(set(data) - set(hints))
        if unknown:
            hint = "".join(
                f" ({k!r}: did you mean {c[0]!r}?)"
                for k in unknown
                if (c := difflib.get_close_matches(k, hints, n=1))
            )
            raise ValueError(
                f"unknown TrainConfig key(s) {unknown}{hint}. Valid keys: {', '.join(hints)}."
            )
        values = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
        return cls(**values)

    def validate(self) -> TrainConfig:
        """Check value ranges and choices; returns ``self`` so it can be chained.

        Raises:
            ValueError: the first bad value, saying what is allowed.
        """
        def bad(key: str, allowed: str) -> ValueError:
            return UserError(f"config {key}={getattr(self, key)!r} is invalid: expected {allowed}. Fix it: ",
                             Setting(key))

        positive = ("image_size", "num_train", "num_test", "epochs", "batch_size", "accumulate_steps",
                    "eval_batch_size", "log_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise bad(key, "an integer >= 1")
        non_negative = ("crop_padding", "lr_step_epochs", "limit_train_batches", "cpu_threads",
                        "stuck_warmup_epochs", "keep_last", "subset_train", "subset_test",
                        "head_warmup_epochs", "checkpoint_every_steps")
        for key in non_negative:
            if getattr(self, key) < 0:
                raise bad(key, "an integer >= 0")
        for key in ("lr", "lr_gamma", "stuck_tolerance", "zca_epsilon"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise bad(key, "a finite number > 0")
        for key in ("momentum", "weight_decay", "warmup_epochs", "grad_clip_norm", "checkpoint_every_minutes"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise bad(key, "a finite number >= 0")
        # The optimizer multiplies float32 tensors by these: a larger value overflows mid-step.
        for key in ("lr", "weight_decay", "grad_clip_norm"):
            if getattr(self, key) > FLOAT32_MAX:
                raise bad(key, f"a number float32 can hold (<= {FLOAT32_MAX:.3g}); "
                               f"typical values are lr 0.01-1, weight_decay 5e-4")
        if self.momentum >= 1:
            # with momentum >= 1 the velocity never decays: each step adds to all the past ones
            raise bad("momentum", "a number in [0, 1), usually 0.9")
        if self.num_classes < 2:
            raise bad("num_classes", "an integer >= 2")
        if self.cpu_threads > MAX_CPU_THREADS:
            # OpenMP fails to create that many threads and the process dies (segfault)
            raise bad("cpu_threads", f"at most {MAX_CPU_THREADS}; this machine has {os.cpu_count()} CPU(s)")
        if self.crop_padding >= self.image_size:
            # the random crop could then miss the image entirely (and padding costs memory)
            raise bad("crop_padding", f"less than image_size={self.image_size} (usually 4 for 32 px)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"one of {LR_SCHEDULES}")
        if not (math.isfinite(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0):
            raise bad("label_smoothing", "a fraction in [0, 1), e.g. 0.1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "a fraction in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {OPTIMIZERS}")
        if self.nesterov and self.momentum == 0:
            raise bad("nesterov", "False when momentum is 0 (Nesterov needs momentum > 0)")
        if not 0.0 <= self.dampening < 1.0 or (self.nesterov and self.dampening != 0):
            raise bad("dampening", "a number in [0, 1), and 0 with nesterov")
        # SGD-only settings would be silently ignored by AdamW
        for key in ("nesterov", "dampening"):
            if self.optimizer != "sgd" and getattr(self, key):
                raise bad(key, f"false/0 with optimizer={self.optimizer!r} (an SGD setting; AdamW has none)")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"one of {PRECISIONS}")
        if self.channels_last not in ("auto", True, False):
            raise bad("channels_last", '"auto", true or false')
        if self.test_weights not in TEST_WEIGHTS:
            raise bad("test_weights", f"one of {TEST_WEIGHTS}")
        if self.test_weights == "best" and self.val_fraction == 0:
            raise bad("test_weights", '"final" or "auto" when val_fraction=0 (no validation set)')
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)) or any(
            m < 1 for m in self.lr_milestones
        ):
            raise bad("lr_milestones", "strictly increasing epochs >= 1, e.g. (60, 120, 160)")
        if self.lr_milestone_gammas and len(self.lr_milestone_gammas) != len(self.lr_milestones):
            raise bad("lr_milestone_gammas", f"{len(self.lr_milestones)} factors, one per milestone")
        if any(not (math.isfinite(g) and g > 0) for g in self.lr_milestone_gammas):
            raise bad("lr_milestone_gammas", "finite factors > 0, e.g. 0.1,0.1")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and (len(value) != 3 or not all(math.isfinite(v) for v in value)):
                raise bad(key, "None or 3 finite per-channel values")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise bad("std", "values > 0")
        if not isinstance(self.model_options, dict):
            raise bad("model_options", "a dict of create_model keyword options")
        if self.resize_mode not in RESIZE_MODES:
            raise bad("resize_mode", f"one of {RESIZE_MODES}")
        if any(not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)
               for v in self.lr_multipliers.values()):
            raise bad("lr_multipliers", 'finite factors >= 0, e.g. {"trunk": 0.1}')
        if self.transfer and not self.init:
            raise bad("transfer", "() unless init is set (transfer patterns pick what init loads)")
        if self.head_warmup_epochs >= self.epochs:
            raise bad("head_warmup_epochs", f"fewer than epochs={self.epochs}")
        if self.stuck_tolerance >= math.log(self.num_classes):
            # |loss - ln K| < ln K holds for every loss in (0, 2 ln K): the check would stop
            # runs that learn perfectly well
            raise bad("stuck_tolerance", f"less than ln(num_classes) = {math.log(self.num_classes):.4f} "
                                         f"(default 0.01), or the run counts as stuck while it learns")
        peak = self._log_peak_lr()
        if peak > math.log(FLOAT32_MAX):
            raise UserError(
                f"config: the learning rate would reach about 10^{peak / math.log(10):.0f} (lr={self.lr:g} "
                f"times the lr_gamma/lr_milestone_gammas and lr_multipliers factors above 1), more than "
                f"float32 can hold; factors above 1 raise the lr. Fix it: ", Setting("lr"), " or smaller factors"
            )
        try:
            json.dumps(self.to_dict(), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise UserError(
                f"config is not plain JSON ({err}); config.json and every checkpoint store it. "
                f"Use numbers, strings, true/false and lists only (NaN and Infinity are not allowed), "
                f"e.g. ", Setting("model_options.width", 0.5)
            ) from None
        return self

    def _log_peak_lr(self) -> float:
        """Natural log of the largest lr any parameter group reaches (warm-up only lowers it)."""
        if self.lr_schedule != "step":
            peak = 0.0  # cosine and linear only decay
        elif self.lr_milestones:
            gammas = self.lr_milestone_gammas or (self.lr_gamma,) * len(self.lr_milestones)
            running = peak = 0.0
            for gamma in gammas:
                running += math.log(gamma)
                peak = max(peak, running)
        elif self.lr_step_epochs > 0:
            peak = max(0.0, (self.epochs // self.lr_step_epochs) * math.log(self.lr_gamma))
        else:
            peak = 0.0
        multipliers = [m for m in self.lr_multipliers.values() if isinstance(m, (int, float)) and m > 0]
        return math.log(self.lr) + peak + max([0.0, *(math.log(m) for m in multipliers)])


def apply_overrides(config: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """``key=value`` overrides (the CLI's ``--set``); see :func:`ltpa.runs.overrides.apply_overrides`."""
    from .overrides import apply_overrides as apply

    return apply(config, overrides)


def flat_config(data: dict[str, Any]) -> dict[str, Any]:
    """The grouped form (``{"model": {...}, ...}``) as flat keys; a flat dict is returned as is.
    The field ``model`` (a name) and the section ``model`` (a dict) are told apart by type."""
    if not any(k in SECTIONS and isinstance(v, dict) for k, v in data.items()):
        return data
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub, item in value.items():
                if sub in SECTION_OF and SECTION_OF[sub] != key:
                    raise ValueError(f"config key {sub!r} belongs to section {SECTION_OF[sub]!r}, "
                                     f"not {key!r}; move it there")
                flat[sub] = item
        else:
            flat[key] = value
    return flat


# ----------------------------------------------------------------------------- type plumbing


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check (and gently convert: list -> tuple, int -> float) a JSON value for field ``key``."""
    def fail() -> ValueError:
        return ValueError(
            f"config key {key!r} got {value!r} ({type(value).__name__}); expected {_type_name(tp)}"
        )

    if _is_union(tp):
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option)
            except ValueError:
                continue
        raise fail()
    if tp is type(None):
        if value is None:
            return None
        raise fail()
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise fail()
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            item_tp = typing.get_args(tp)[0]
            return tuple(_coerce(key, v, item_tp) for v in value)
        raise fail()
    raise fail()


SECTION_OF = {f.name: f.metadata["section"] for f in dataclasses.fields(TrainConfig)}
# Settings that may differ when a run is resumed: the "run" section (how it runs, not what it
# computes) and epochs, which may only grow. They change neither the model, the data nor the
# optimisation path of the epochs already trained.
RESUMABLE_CHANGES = ("epochs", *(name for name, section in SECTION_OF.items() if section == "run"))


def resume_config(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The config to resume a run with: ``saved`` (the run's own), with the settings in
    ``RESUMABLE_CHANGES`` taken from ``given``. ``given.mean``/``std`` of None mean "as saved".

    Raises:
        ValueError: any other setting differs; every difference is listed.
    """
    differences = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES or (f.name in ("mean", "std") and getattr(given, f.name) is None):
            continue
        if getattr(saved, f.name) != getattr(given, f.name):
            differences.append(f"{f.name}: run has {getattr(saved, f.name)!r}, given {getattr(given, f.name)!r}")
    if saved.lr_schedule != "step" and given.epochs != saved.epochs:
        # the decay is laid out over the planned epochs: more of them would raise the lr again
        differences.append(f"epochs: run has {saved.epochs}, given {given.epochs} (lr_schedule={saved.lr_schedule!r} "
                           f"decays to 0 over the planned epochs, so their number is part of the run)")
    if differences:
        raise ValueError(
            "cannot resume with a different config (" + "; ".join(differences)
            + f"). Only epochs (up) and the run section ({', '.join(RESUMABLE_CHANGES[1:])}) may "
            f"change on resume; the model, data and optimisation sections are the run's. Use the run's own "
            "config (TrainConfig.from_dict of its config.json) or start a new run."
        )
    return dataclasses.replace(saved, **{k: getattr(given, k) for k in RESUMABLE_CHANGES})
