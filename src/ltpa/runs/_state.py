"""The states a checkpoint stores besides tensors of the model: RNG states and library versions."""
from __future__ import annotations

import importlib.metadata
import logging
import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "library_versions"]

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Torch (CPU, and CUDA once initialised), numpy and Python RNG states, as tensors and plain
    values only (numpy/Python states become int64 tensors), so they store without pickle."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured. CUDA states are skipped, with a warning, when
    the number of GPUs differs."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            logger.warning(
                "checkpoint holds CUDA RNG states for %d device(s) but this machine has %d; CUDA "
                "RNG not restored, so dropout noise will differ from the original run",
                len(state["cuda"]), torch.cuda.device_count(),
            )


def library_versions() -> dict[str, str | None]:
    """Versions of ltpa (None when run from an uninstalled source tree), torch, numpy, safetensors."""
    import safetensors

    try:
        ltpa_version = importlib.metadata.version("ltpa")
    except importlib.metadata.PackageNotFoundError:
        ltpa_version = None
    return {"ltpa": ltpa_version, "torch": torch.__version__, "numpy": np.__version__,
            "safetensors": safetensors.__version__}
