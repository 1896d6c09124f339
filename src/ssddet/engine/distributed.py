"""torch.distributed set-up for `torchrun` (one process per GPU). Single-process runs need nothing."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .device import resolve_device


def init_distributed(device: str) -> tuple[torch.device, int, int]:
    """Return (device, rank, world_size). Under torchrun (WORLD_SIZE>1) join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = str(resolve_device(device))
    if world <= 1:
        return torch.device(device), 0, 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return dev, dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (for logging only)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
