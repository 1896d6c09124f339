"""Atomic checkpoints (temp file + rename) that load with `torch.load(weights_only=True)`."""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


def atomic_save(obj, path: str | Path) -> None:
    """Write to a temp file in the same directory, fsync, then rename: a crash never leaves half a file, and a
    failed write (a full disk) leaves the previous file as it was and raises a one-line UserError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError as e:
        raise UserError(f"could not write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        kept = " (the previous one is kept)" if path.exists() else ""
        raise UserError(f"could not write {path}{kept}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict:
    """All RNG states as weights_only-safe objects (tensors, lists, ints)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": _py_state_to_list(random.getstate()),
    }


def _py_state_to_list(state):
    return [state[0], list(state[1]), state[2]]


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`. Its tensors may have been loaded onto another device (map_location): the torch
    and CUDA generators take CPU ByteTensors only, so they are moved back first."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].cpu().numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def deployable(detector, meta: dict) -> dict:
    """What `model_best.pt` / `model_final.pt` hold: a plain FasterRCNN state_dict + how to rebuild it."""
    return {"model": {k: v.detach().cpu() for k, v in detector.state_dict().items()}, "meta": meta}
