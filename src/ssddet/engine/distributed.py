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


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is set on any rank (so that all ranks take the same branch under DDP)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj) -> list:
    """Every process's `obj` (picklable), in rank order, on every process; [obj] without a process group."""
    if not dist.is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj) -> list | None:
    """Every process's `obj` in rank order on rank 0 (None elsewhere): for big payloads only rank 0 needs."""
    if not dist.is_initialized():
        return [obj]
    out: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj):
    """Rank 0's `obj` on every process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across_ranks(sums: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    """Means over all processes of per-process running sums and counts (for logging only).

    The processes need not hold the same keys or counts: non-finite values are dropped per process (log.py
    Averager) and some statistics exist only on some steps, so each key is averaged over the values actually
    added, wherever they were: sum of the sums / sum of the counts. -> {key: mean}, keys sorted."""
    total: dict[str, float] = {}
    n: dict[str, int] = {}
    for s, c in gather_objects((dict(sums), dict(counts))):
        for k, v in s.items():
            total[k] = total.get(k, 0.0) + v
            n[k] = n.get(k, 0) + c[k]
    return {k: total[k] / n[k] for k in sorted(total) if n[k]}


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
