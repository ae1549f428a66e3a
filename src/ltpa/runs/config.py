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

__all__ = ["TrainConfig", "apply_overrides", "resume_config", "RESUMABLE_CHANGES"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESIZE_MODES = ("resize_crop", "bbox_crop", "squash")
TEST_WEIGHTS = ("auto", "best", "final")
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max
MAX_CPU_THREADS = 1024


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` and in every checkpoint.

    The defaults are a small, quick synthetic run; the paper's recipes are presets that override
    them (see PAPER.md). Accuracies everywhere in ltpa's run files are percentages (0-100).
    """

    # model
    model: str = "vgg_att3"
    model_options: dict[str, Any] = field(default_factory=dict)  # passed to ltpa.create_model
    # data
    data: str = "synthetic"  # a source known to ltpa.train.data_setup.build_data
    image_size: int = 32
    num_classes: int = 10
    num_train: int = 5000  # before the validation split is carved out of it
    num_test: int = 1000
    val_fraction: float = 0.1  # class-stratified, taken from the train split, never the test set
    data_seed: int = 0
    mean: tuple[float, ...] | None = None  # per channel, pixel values in [0, 1]; None: train split
    std: tuple[float, ...] | None = None
    hflip: bool = True
    crop_padding: int = 4  # random crop after zero padding by this many pixels; 0 = off
    zca: bool = False  # ZCA-whiten inputs (fitted on the train split) instead of mean/std
    zca_epsilon: float = 1e-2  # added to the covariance eigenvalues, in [0, 1] pixel units
    resize_mode: str = "resize_crop"  # for file-based data: "resize_crop" | "bbox_crop" | "squash"
    subset_train: int = 0  # > 0: a class-stratified subset of the real train split (CPU runs)
    subset_test: int = 0  # > 0: the same for the test split
    # optimisation
    epochs: int = 30
    batch_size: int = 128
    drop_last: bool = True  # the official code drops the last partial batch
    eval_batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    dampening: float = 0.0  # Torch7's optim.sgd defaults it to the momentum (the official code)
    lr_step_epochs: int = 25  # multiply the lr by lr_gamma every this many epochs; 0 = never
    lr_milestones: tuple[int, ...] = ()  # if set: multiply at these epochs instead
    lr_milestone_gammas: tuple[float, ...] = ()  # optional per-milestone factors (else lr_gamma)
    lr_gamma: float = 0.5
    warmup_epochs: float = 0.0  # linear warm-up from ~0 to lr, per optimizer step
    grad_clip_norm: float = 0.0  # 0 = no clipping
    accumulate_steps: int = 1  # split each batch into this many micro-batches (less memory, same step)
    # transfer (ltpa.transfer): start from another run's weights
    init: str | None = None  # checkpoint (or state dict) to initialise from
    transfer: tuple[str, ...] = ()  # patterns or a preset name; () = "all-but-head" with init
    freeze: tuple[str, ...] = ()  # parameter patterns never trained
    lr_multipliers: dict[str, float] = field(default_factory=dict)  # pattern -> lr factor
    head_warmup_epochs: int = 0  # train only the classifier head for this many epochs
    # reproducibility and speed
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms during fit
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16"
    channels_last: Union[str, bool] = "auto"  # "auto" | True | False
    limit_train_batches: int = 0  # > 0: stop each epoch after this many batches (dry runs)
    cpu_threads: int = 0  # > 0: torch.set_num_threads during the run; 0 = torch's default
    compile: bool = False  # torch.compile the model (checkpoints hold the unwrapped module)
    # monitoring
    log_every: int = 10  # batches between progress updates and NaN checks
    divergence_check: bool = True
    stuck_warmup_epochs: int = 5  # after this many epochs, a loss still at ln(K) stops the run
    stuck_tolerance: float = 0.01  # |train loss - ln(num_classes)| below this counts as stuck
    # outputs
    keep_last: int = 2  # epoch checkpoints kept (plus the best one); 0 = keep all
    checkpoint_every_steps: int = 0  # > 0: also a mid-epoch checkpoint every this many steps
    tensorboard: bool = True  # TensorBoard event files in RUN/tb (rank 0)
    test_weights: str = "auto"  # "best" (by val acc), "final", or "auto" = best if val set

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists) that :meth:`from_dict` turns back."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = json.loads(json.dumps(value))
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict such as ``json.load(open("config.json"))``.

        Raises:
            ValueError: unknown keys (named, with the valid keys listed) or values of the wrong
                type.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a TrainConfig needs a dict, got {type(data).__name__}")
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
            return ValueError(
                f"config {key}={getattr(self, key)!r} is invalid: expected {allowed}. "
                f"Fix it with --set {key}=..."
            )

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
        for key in ("momentum", "weight_decay", "warmup_epochs", "grad_clip_norm"):
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
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "a fraction in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise bad("nesterov", "False when momentum is 0 (Nesterov needs momentum > 0)")
        if not 0.0 <= self.dampening < 1.0 or (self.nesterov and self.dampening != 0):
            raise bad("dampening", "a number in [0, 1), and 0 with nesterov")
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
            raise ValueError(
                f"config: the learning rate would reach about 10^{peak / math.log(10):.0f} (lr={self.lr:g} "
                f"times the lr_gamma/lr_milestone_gammas and lr_multipliers factors above 1), more than "
                f"float32 can hold; factors above 1 raise the lr. Fix it with --set lr=... or smaller factors"
            )
        try:
            json.dumps(self.to_dict(), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"config is not plain JSON ({err}); config.json and every checkpoint store it. "
                f"Use numbers, strings, true/false and lists only (NaN and Infinity are not allowed), "
                f"e.g. --set model_options.width=0.5"
            ) from None
        return self

    def _log_peak_lr(self) -> float:
        """Natural log of the largest lr any parameter group reaches (warm-up only lowers it)."""
        if self.lr_milestones:
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
    """Return a copy of ``config`` with ``"key=value"`` strings applied, each parsed by type.

    Values are parsed against the field's annotation: ``int``, ``float`` (``1e-3``, ``inf`` is
    rejected), ``bool`` (``true/false/1/0/yes/no``), ``str``, tuples (``60,120,160`` or JSON
    ``[60, 120]``), ``None`` for optional fields (``none``/``null``), dicts as JSON. A nested key
    sets one entry of a dict field, its value parsed as JSON when it is valid JSON, else kept as
    a string: ``model_options.width=0.25``, ``model_options.compat=dp``.

    Raises:
        ValueError: the key, the value, the expected type and the valid keys; an unknown key
            suggests the closest one.
    """
    hints = _field_types()
    values = config.to_dict()
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(
                f"override {item!r} is not of the form key=value, e.g. lr=0.05 or "
                f"model_options.width=0.5"
            )
        key, raw = item.split("=", 1)
        key, raw = key.strip(), raw.strip()
        top, _, sub = key.partition(".")
        if top not in hints:
            close = difflib.get_close_matches(top, hints, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown config key {top!r} in override {item!r}.{hint} "
                f"Valid keys: {', '.join(hints)}."
            )
        if sub:
            if hints[top] is not dict and typing.get_origin(hints[top]) is not dict:
                raise ValueError(
                    f"override {item!r}: {top!r} is a {_type_name(hints[top])}, not a dict, so "
                    f"it has no sub-key {sub!r}; write {top}=<value>"
                )
            nested = dict(values[top])
            nested[sub] = _parse_json_or_str(raw)
            values[top] = nested
        else:
            values[top] = _parse(top, raw, hints[top])
    return TrainConfig.from_dict(values)


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


def _parse_json_or_str(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _no_constant(name: str) -> Any:
    """``parse_constant`` for json.loads: config.json is strict JSON, so no NaN or Infinity."""
    raise ValueError(f"{name} is not a finite number")


def _parse(key: str, raw: str, tp: Any) -> Any:
    """Parse the command-line string ``raw`` for field ``key`` of type ``tp``."""
    def fail(detail: str = "") -> ValueError:
        return ValueError(
            f"cannot set {key}={raw!r}: expected {_type_name(tp)}{detail}. "
            f"Example: --set {key}={_example(tp)}"
        )

    if _is_union(tp):
        options = typing.get_args(tp)
        if type(None) in options and raw.lower() in ("none", "null"):
            return None
        # bool before str so that "true" in Union[str, bool] means True
        ordered = sorted(options, key=lambda t: (t is str, t is type(None)))
        for option in ordered:
            if option is type(None):
                continue
            try:
                return _parse(key, raw, option)
            except ValueError:
                continue
        raise fail()
    origin = typing.get_origin(tp)
    if tp is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise fail(" (true/false)")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise fail() from None
    if tp is float:
        try:
            value = float(raw)
        except ValueError:
            raise fail() from None
        if not math.isfinite(value):
            raise fail(" (a finite number)")
        return value
    if tp is str:
        return raw
    if tp is dict or origin is dict:
        try:
            value = json.loads(raw, parse_constant=_no_constant)
        except json.JSONDecodeError as err:
            raise fail(f" as a JSON object ({err.msg})") from None
        except ValueError as err:
            raise fail(f" as a JSON object ({err})") from None
        if not isinstance(value, dict):
            raise fail(" as a JSON object")
        return value
    if origin is tuple:
        (item_tp, *_) = typing.get_args(tp) or (str,)
        text = raw.strip()
        if text in ("", "()", "[]"):
            return ()
        if text.startswith("["):
            try:
                items = json.loads(text, parse_constant=_no_constant)
            except json.JSONDecodeError as err:
                raise fail(f" as a JSON list ({err.msg})") from None
            except ValueError as err:
                raise fail(f" as a JSON list ({err})") from None
            if not isinstance(items, list):
                raise fail(" as a JSON list")
            return tuple(_coerce(key, v, item_tp) for v in items)
        return tuple(_parse(key, part.strip(), item_tp) for part in text.strip("()").split(","))
    raise fail()


def _example(tp: Any) -> str:
    examples = {int: "3", float: "0.05", bool: "true", str: "name", dict: '\'{"width": 0.5}\''}
    if _is_union(tp):
        return _example(next(t for t in typing.get_args(tp) if t is not type(None)))
    if typing.get_origin(tp) is tuple:
        return "60,120,160" if typing.get_args(tp)[0] is int else "0.5,0.5,0.5"
    if typing.get_origin(tp) is dict:
        return examples[dict]
    return examples.get(tp, "...")


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


# Settings that may differ when a run is resumed: they change neither the model, the data nor
# the optimisation path of the epochs already trained.
RESUMABLE_CHANGES = ("epochs", "device", "precision", "channels_last", "log_every", "keep_last",
                     "divergence_check", "stuck_warmup_epochs", "stuck_tolerance", "test_weights",
                     "eval_batch_size", "deterministic", "cpu_threads", "compile", "tensorboard",
                     "checkpoint_every_steps")


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
    if differences:
        raise ValueError(
            "cannot resume with a different config (" + "; ".join(differences)
            + f"). Only {', '.join(RESUMABLE_CHANGES)} may change on resume. Use the run's own "
            "config (TrainConfig.from_dict of its config.json) or start a new run."
        )
    return dataclasses.replace(saved, **{k: getattr(given, k) for k in RESUMABLE_CHANGES})
