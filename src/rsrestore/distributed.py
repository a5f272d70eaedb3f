"""Data-parallel training across processes, as launched by ``torchrun``.

``torchrun --nproc_per_node N -m rsrestore.train CONFIG.yaml`` starts N copies of the trainer with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. :func:`setup` reads them,
joins the process group (gloo on the CPU, nccl on CUDA, one GPU per local rank) and returns a :class:`DistContext`;
without those variables everything here degrades to a single process and the collectives are no-ops, so the trainer
has one code path. Rank 0 alone writes files; the others wait at :func:`barrier`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistContext",
    "all_gather_object",
    "all_reduce_mean",
    "barrier",
    "cleanup",
    "env_world",
    "resolve_device",
    "setup",
    "unwrap",
    "wrap",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes, its device, and whether it joined (and so
    must leave) the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment; ``(0, 1, 0)`` outside it."""
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent distributed environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` (the GPU of this local rank) or a device."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use device 'cpu' or 'auto'")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"local rank {local_rank} has no GPU of its own: only {count} visible")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'")


def setup(device: str | torch.device = "auto", backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Read the torchrun environment, pick this process's device and, for more than one process, join the group.

    The backend defaults to nccl for CUDA devices and gloo otherwise. A group that is already initialised (by the
    caller) is used as it is and left for the caller to destroy.
    """
    rank, world, local = env_world()
    dev = resolve_device(device, local)
    if world == 1:
        return DistContext(device=dev)
    if dev.type == "cuda":
        # nccl binds a communicator to the current device; without this every rank would talk through GPU 0.
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        owns = True
    return DistContext(rank, world, local, dev, dist.get_backend(), owns)


def wrap(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when several processes train, else unchanged."""
    if not ctx.enabled:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (its state dict has no ``module.`` prefixes)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def barrier(ctx: DistContext) -> None:
    if not ctx.enabled:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def all_reduce_mean(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise mean of a list of floats over all ranks (every rank must pass the same length)."""
    if not ctx.enabled or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / ctx.world_size).tolist()


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` for a single process)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` joined it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
