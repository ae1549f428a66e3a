"""Data-parallel training with torchrun: who am I (:class:`DistInfo`), the process group's
lifetime, and the few collectives the trainer needs.

Launch one process per GPU (or per CPU worker) with torchrun; ``fit`` reads the environment
variables torchrun sets and does the rest::

    torchrun --nproc_per_node 4 -m ltpa train --preset cifar100-vgg-att3 --out runs/c100
    # two nodes, 8 GPUs each (run on both, --node_rank 0 and 1):
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr HOST --master_port 29500 \\
        -m ltpa train --preset cifar100-vgg-att3 --out /shared/runs/c100

``config.batch_size`` is the global batch: each of the W processes gets ``batch_size / W``.
Nothing here touches global state other than the default process group; no ``print`` is
replaced and no logger is reconfigured: the trainer asks ``dist.is_main`` before it logs or
writes.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch import distributed as torch_dist

__all__ = ["DistInfo", "read_dist_env", "init_distributed", "cleanup_distributed", "distributed",
           "all_reduce_sum", "barrier", "broadcast_buffers", "gather_objects"]

_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a data-parallel job.

    Attributes:
        rank: global index of this process, ``0 <= rank < world_size``.
        local_rank: index on this node (picks the GPU).
        world_size: number of processes; 1 means no process group.
        device: the device this process trains on (``cuda:local_rank``, or the CPU).
        is_main: rank 0, the only process that logs, writes files and plots.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    is_main: bool = True

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def read_dist_env(device: str = "auto", env: dict[str, str] | None = None) -> DistInfo:
    """Read torchrun's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (absent: a single process).

    Args:
        device: the config's device; ``"auto"`` under torchrun means ``cuda:LOCAL_RANK`` when
            CUDA is available, else the CPU. An explicit ``"cuda"`` also becomes
            ``cuda:LOCAL_RANK``.
        env: the environment to read (default ``os.environ``).

    Raises:
        ValueError: malformed or inconsistent variables, or more local ranks than GPUs.
    """
    env = os.environ if env is None else env
    present = [k for k in _ENV if k in env]
    if not present:
        return DistInfo(device=_single_device(device))
    if len(present) != len(_ENV):
        raise ValueError(
            f"incomplete torchrun environment: {present} set but {sorted(set(_ENV) - set(present))} "
            f"missing. Launch with torchrun (python -m torch.distributed.run), or unset them."
        )
    try:
        rank, local_rank, world = (int(env[k]) for k in _ENV)
    except ValueError as err:
        raise ValueError(f"torchrun variables must be integers: {[env[k] for k in _ENV]}") from err
    if not (world >= 1 and 0 <= rank < world and 0 <= local_rank <= rank):
        raise ValueError(f"inconsistent torchrun variables RANK={rank} LOCAL_RANK={local_rank} "
                         f"WORLD_SIZE={world}")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} "
                             f"GPU(s); start at most that many processes per node")
        dev = torch.device("cuda", local_rank)
    else:
        dev = _single_device("cpu" if device == "auto" else device)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev,
                    is_main=rank == 0)


def _single_device(device: str) -> torch.device:
    from .precision import resolve_device

    return resolve_device(device)


def init_distributed(info: DistInfo, *, timeout_s: float = 1800) -> bool:
    """Create the default process group for ``info`` (NCCL on CUDA, gloo on CPU).

    Returns:
        True if this call created it (so the caller should destroy it), False when there is
        nothing to do: a single process, or a group that already exists.
    """
    if not info.enabled or torch_dist.is_initialized():
        return False
    backend = "nccl" if info.device.type == "cuda" else "gloo"
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    torch_dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                                  timeout=datetime.timedelta(seconds=timeout_s))
    return True


def cleanup_distributed() -> None:
    """Destroy the default process group, if any."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@contextmanager
def distributed(info: DistInfo) -> Iterator[DistInfo]:
    """Hold a process group for ``info`` while the block runs; one created here is destroyed
    afterwards, also when the block raises."""
    created = init_distributed(info)
    try:
        yield info
    finally:
        if created:
            cleanup_distributed()


def all_reduce_sum(tensor: Tensor, info: DistInfo) -> Tensor:
    """Sum ``tensor`` over all ranks, in place, and return it (unchanged for one process).

    Integer counts stay exact: gloo and NCCL both sum int64.
    """
    if info.enabled:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.enabled:
        if info.device.type == "cuda":
            torch_dist.barrier(device_ids=[info.device.index])
        else:
            torch_dist.barrier()


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    torch_dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last training step each
    rank holds the statistics of its own last batch; evaluating then would mix ranks' BN
    statistics. Call this after each training epoch, so every rank evaluates (and rank 0
    saves) the same model.
    """
    if not info.enabled:
        return
    for buffer in model.buffers():
        torch_dist.broadcast(buffer, src=0)
