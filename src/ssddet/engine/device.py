"""The one place that turns a `--device` / `train.device` string into a torch.device."""
from __future__ import annotations

import torch

from ..errors import UserError


def resolve_device(name: str) -> torch.device:
    """"auto": CUDA if available, else the CPU; otherwise the device torch names so ("cpu", "cuda", "cuda:N").
    An unknown name, or CUDA on a machine without it, is a UserError naming the value."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (choose auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}': CUDA is not available on this machine (use cpu or auto)")
    return device


def trains_on_cpu(name: str) -> bool:
    """Whether a run with `train.device` = `name` trains on the CPU (a bad name: no; the Trainer reports it)."""
    try:
        return resolve_device(name).type == "cpu"
    except UserError:
        return False
