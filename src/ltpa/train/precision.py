"""Device, mixed-precision and memory-format choices, made once per run, and the other
settings a run's reproducibility depends on (deterministic kernels, RNG states, environment).

There is one AMP path (STYLE.md): every forward runs under ``torch.autocast(device_type, dtype,
enabled=...)`` and every backward goes through a ``torch.amp.GradScaler`` that is enabled only
for fp16. fp32 is simply autocast disabled, not a separate branch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import platform
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..runs._state import library_versions, rng_state, set_rng_state

__all__ = ["Precision", "CpuBf16", "resolve_device", "resolve_precision", "cpu_bf16_support",
           "cpu_supports_bf16", "cpu_model_name", "describe_cpu",
           "algorithm_settings", "rng_state", "set_rng_state", "library_versions", "git_commit",
           "describe_environment"]

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """The resolved numeric setup of a run.

    Attributes:
        device: where the model and the data live.
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: whether the model and its input batches use ``torch.channels_last``.
        reason: why ``auto`` resolved to ``name`` (empty when the precision was given).
    """

    device: torch.device
    name: str
    channels_last: bool
    reason: str = dataclasses.field(default="", compare=False)

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def amp_enabled(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for forward passes (a no-op for fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp_enabled)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is active only for fp16 (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        return f"device={self.device} precision={self.name} channels_last={self.channels_last}"


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else must be a usable device.

    Raises:
        ValueError: a malformed device string or a CUDA device that is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"device {name!r} is not a valid torch device: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but CUDA is not available; use 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} "
                f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type not in ("cpu", "mps"):
        raise ValueError(f"device {name!r} is not supported: use 'auto', 'cpu' or 'cuda[:N]'")
    return device


# oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_MAX_CPU_ISA``) below AVX512_CORE_BF16:
# under any of them oneDNN may not use the bf16 instructions and emulates bf16 convolutions.
_ONEDNN_BELOW_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_MIC",
                                "AVX512_MIC_4OPS", "AVX512_CORE", "AVX512_CORE_VNNI"})


@dataclass(frozen=True)
class CpuBf16:
    """What ``auto`` precision knows about this CPU's bf16 support.

    Attributes:
        capability: ATen's CPU kernel level, ``torch.backends.cpu.get_cpu_capability()``
            (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"`` on x86; others elsewhere).
        hardware: the CPU reports AVX-512 BF16 or AMX and bf16 autocast runs on this build.
        restriction: how the user restricted the kernels below the bf16 level (e.g.
            ``"ATEN_CPU_CAPABILITY=avx2"``), or None.
        native: bf16 is native *and* not restricted away: the only case where ``auto`` picks bf16.
    """

    capability: str
    hardware: bool
    restriction: str | None

    @property
    def native(self) -> bool:
        return self.hardware and self.restriction is None

    def explain(self) -> str:
        """Why ``auto`` picks what it picks on this CPU, e.g. ``"this CPU (ATen capability
        AVX2) has no native bf16"``."""
        if not self.hardware:
            return f"this CPU (ATen capability {self.capability}) has no native bf16"
        if self.restriction is not None:
            return (f"this CPU (ATen capability {self.capability}) has no native bf16: kernels restricted "
                    f"by {self.restriction} (the hardware has AVX-512 BF16)")
        return f"this CPU (ATen capability {self.capability}) has native bf16 (AVX-512 BF16)"


@functools.lru_cache(maxsize=None)
def _cpu_bf16_hardware() -> bool:
    """Whether the CPU reports AVX-512 BF16 or AMX and bf16 autocast runs on this build."""
    native = False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)  # private helpers; absent in some builds
        if check is not None:
            try:
                native = native or bool(check())
            except RuntimeError:
                pass
    if not native:
        return False
    try:  # confirm the autocast path actually runs on this build
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.ones(8, 8) @ torch.ones(8, 8)
        return out.dtype == torch.bfloat16 and bool(torch.all(out == 8))
    except RuntimeError:
        return False


def _kernel_restriction(capability: str) -> str | None:
    """The user's restriction of CPU kernels below the bf16 level, as a readable string, or None."""
    reasons = []
    if not capability.upper().startswith("AVX512"):
        requested = os.environ.get("ATEN_CPU_CAPABILITY")
        reasons.append(f"ATEN_CPU_CAPABILITY={requested}" if requested
                       else f"ATen capability {capability}")
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(variable)
        if value:  # oneDNN reads ONEDNN_ first and falls back to DNNL_
            if value.strip().upper() in _ONEDNN_BELOW_BF16:
                reasons.append(f"{variable}={value}")
            break
    return ", ".join(reasons) or None


def cpu_bf16_support() -> CpuBf16:
    """This CPU's bf16 support as ``auto`` precision sees it.

    A user who restricts the kernels (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``)
    is emulating a CPU without AVX-512, usually to see what users of such CPUs see, while the
    CPU flags still report AVX-512 BF16. ``auto`` then treats the CPU as one without native bf16
    and picks fp32, as it would on that CPU: a run under restricted kernels makes the same
    choice as the CPU it emulates. (With oneDNN capped below AVX512_CORE_BF16, bf16 convolutions
    are also emulated and slower than fp32.) An explicit ``precision="bf16"`` is still honoured.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    hardware = _cpu_bf16_hardware()
    return CpuBf16(capability=capability, hardware=hardware,
                   restriction=_kernel_restriction(capability) if hardware else None)


def cpu_supports_bf16() -> bool:
    """Whether ``auto`` may pick bf16 on this CPU: native bf16 matmuls (AVX-512 BF16 or AMX),
    working autocast, and kernels not restricted below that level (see :func:`cpu_bf16_support`).

    Without native support oneDNN emulates bf16 and it is slower than fp32, so ``auto`` only
    chooses bf16 on CPUs that have it.
    """
    return cpu_bf16_support().native


def cpu_model_name() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, sysctl on macOS), else the
    processor/machine string Python knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            result = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                    text=True, timeout=5, check=False)
            if result.returncode == 0 and result.stdout.strip():
                return result.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def describe_cpu() -> dict[str, Any]:
    """The CPU facts a run or benchmark records: model name, ATen capability, bf16 support."""
    support = cpu_bf16_support()
    return {"cpu_model": cpu_model_name(), "cpu_capability": support.capability,
            "cpu_bf16_hardware": support.hardware, "cpu_native_bf16": support.native,
            "cpu_kernel_restriction": support.restriction}


def resolve_precision(
    precision: str = "auto", channels_last: str | bool = "auto", device: str = "auto"
) -> Precision:
    """Turn the config's ``precision``/``channels_last``/``device`` choices into a decision.

    ``auto`` precision: bf16 on GPUs that support it, else fp16 (with a GradScaler); bf16 on
    CPUs with native bf16 and unrestricted kernels (see :func:`cpu_bf16_support`), else fp32. The
    choice and its reason are logged (``precision auto -> fp32: this CPU (ATen capability AVX2)
    has no native bf16``) and kept in ``Precision.reason``. ``auto`` channels_last is on, since
    ltpa's models are conv nets and cuDNN / oneDNN prefer NHWC.

    Raises:
        ValueError: unknown choice, or bf16/fp16 asked for where the device cannot run it.
    """
    dev = resolve_device(device)
    reason = ""
    if precision == "auto":
        if dev.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            name = "bf16" if bf16 else "fp16"
            reason = f"{torch.cuda.get_device_name(dev)} {'supports' if bf16 else 'has no'} bf16"
        elif dev.type == "cpu":
            support = cpu_bf16_support()
            name = "bf16" if support.native else "fp32"
            reason = support.explain()
        else:
            name = "fp32"
            reason = f"no mixed precision on {dev.type}"
        reason = f"precision auto -> {name}: {reason}"
        logger.info("%s", reason)
    elif precision in _DTYPES:
        name = precision
    else:
        raise ValueError(
            f"precision {precision!r} is not one of 'auto', 'fp32', 'bf16', 'fp16'"
        )
    if name == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bf16' is not supported on {dev}; use 'fp16' or 'auto'")
    if name == "fp16" and dev.type == "cpu":
        raise ValueError(
            "precision 'fp16' is not supported for training on CPU (no fast fp16 kernels and "
            "no GradScaler benefit); use 'bf16', 'fp32' or 'auto'"
        )
    if channels_last == "auto":
        use_cl = dev.type in ("cuda", "cpu")
    elif isinstance(channels_last, bool):
        use_cl = channels_last
    else:
        raise ValueError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
    return Precision(device=dev, name=name, channels_last=use_cl, reason=reason)


# ----------------------------------------------------------------------------- reproducibility


@contextlib.contextmanager
def algorithm_settings(deterministic: bool, device: torch.device, threads: int = 0) -> Iterator[None]:
    """For the duration of a run: deterministic kernels if asked (warnings, not errors, for ops
    without a deterministic version), else cuDNN autotuning on CUDA; ``threads > 0`` sets
    torch's intra-op CPU threads (small models on a busy machine run far faster on one).
    Restores the old settings afterwards."""
    was_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_benchmark = torch.backends.cudnn.benchmark
    if deterministic:
        # cuBLAS needs this to be deterministic; it only takes effect before cuBLAS starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        torch.backends.cudnn.benchmark = was_benchmark
        torch.set_num_threads(was_threads)


# ----------------------------------------------------------------------------- environment


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the source tree ltpa runs from, or None (no git, no repo,
    no commit yet)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def describe_environment(precision: Precision) -> dict[str, Any]:
    """What a run's ``environment.json`` records: time, versions, device, numerics (with why
    ``auto`` chose them), the CPU (model, ATen capability, native bf16: see :func:`describe_cpu`),
    git commit."""
    cpu = describe_cpu()
    if precision.device.type == "cuda":
        device_name = torch.cuda.get_device_name(precision.device)
    else:
        device_name = cpu["cpu_model"]
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **library_versions(), "python": platform.python_version(),
        "platform": platform.platform(), "cuda": torch.version.cuda,
        "device": str(precision.device), "device_name": device_name,
        "precision": precision.name, "channels_last": precision.channels_last,
        "precision_choice": precision.reason or f"precision {precision.name} as configured", **cpu,
        "torch_threads": torch.get_num_threads(), "git_commit": git_commit(),
    }
