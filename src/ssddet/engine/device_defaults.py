"""Defaults that follow the device. The defaults of `Config` are the CPU's (batch 2, 2 loader workers, a 100-
iteration warm-up). On a GPU a batch of 2 small images leaves it idle (BCCD at 320 px, batch 2: ~4 % busy,
docs/benchmarks.md#gpu), so when a run trains on CUDA the fields the user did not set take values sized to the
device (`gpu_defaults`, a pure function of the device's properties):

- train.batch_size: images per step (per process), from the GPU's memory: half of it over a per-image estimate
  scaled from a measurement (SSD-Det, ResNet-50-FPN at 800x1333, fp32: 19.1 GiB peak at batch 8, H200), by the
  pixels of model.min_size x model.max_size; at most 16 images over all processes (the total batch of the standard
  Faster R-CNN recipes, torchvision's and Detectron's 8 GPUs x 2, up to which the linear LR rule is established,
  and ~13 steps per epoch on a 205-image set like BCCD); a power of two; never below the CPU default. The LR
  follows through the linear scaling rule (`train.lr_ref_batch`, accel.scaled_lr).
- train.warmup_iters: the same number of warm-up images (Goyal et al. 2017 warm up over a fixed share of the data,
  not of steps): 100 iterations x 2 images become 13 x 16; without this a 4-epoch BCCD run would end before its
  warm-up. Only when the batch was chosen here.
- data.num_workers: the CPUs of this process (its share of the machine's under torchrun) less one for the
  training loop, at most 8, never below the CPU default.
- model.min_size / max_size: unchanged. The image size is a modelling choice, not a speed setting: it sets the
  smallest object the detector sees and the size the checkpoint predicts at, so a GPU run of a command must train
  the model its CPU run trains.

"The user set it" means: named on the command line, by `--set`, in a `--config` file or dict, by name in the
Python API, or by a `--refiner` preset (`given_fields`); a Config object passed as it is counts as setting every
field. `train_config` applies the result once, before config.json is written, so a resumed run reads the
resolved values back. On the CPU nothing changes."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable

from ..config import PAPER_REFINER, Config

log = logging.getLogger("ssddet")

GPU_FIELDS = ("train.batch_size", "train.warmup_iters", "data.num_workers")  # what `gpu_defaults` may set
# the per-image estimate: peak GiB / images of the measured step (docs/benchmarks.md#gpu), at its pixel count
MEASURED_GIB_PER_IMAGE = 19.1 / 8
MEASURED_PIXELS = 800 * 1333
MEMORY_SHARE = 0.5  # of the GPU's memory for the batch: the rest for fragmentation, evaluation, bigger images
MAX_TOTAL_BATCH = 16
MAX_WORKERS = 8


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What `gpu_defaults` needs of a GPU and its machine."""

    name: str
    total_memory: int  # bytes (torch.cuda.get_device_properties(i).total_memory)
    cpu_count: int  # CPUs this process may run on
    local_processes: int = 1  # processes on this machine sharing them (torchrun's LOCAL_WORLD_SIZE)
    world: int = 1  # processes in all (the total batch is batch_size x world)


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def gpu_defaults(device: DeviceInfo, given: Iterable[str], cfg: Config) -> dict[str, int]:
    """The values to apply on this GPU -> {"section.key": value}, only fields not in `given` and only values that
    differ from `cfg`'s (the defaults). `cfg` supplies the CPU defaults and the image size; it is not changed."""
    given = set(given)
    out: dict[str, int] = {}
    batch = cfg.train.batch_size
    if "train.batch_size" not in given:
        gib_per_image = MEASURED_GIB_PER_IMAGE * cfg.model.min_size * cfg.model.max_size / MEASURED_PIXELS
        fits = int(MEMORY_SHARE * device.total_memory / 2**30 / gib_per_image)
        cap = MAX_TOTAL_BATCH // max(device.world, 1)
        batch = max(cfg.train.batch_size, _pow2_floor(min(fits, cap)))
        if batch != cfg.train.batch_size:
            out["train.batch_size"] = batch
            if "train.warmup_iters" not in given and cfg.train.warmup_iters > 0:
                out["train.warmup_iters"] = math.ceil(cfg.train.warmup_iters * cfg.train.batch_size / batch)
    if "data.num_workers" not in given:
        cpus = device.cpu_count // max(device.local_processes, 1)
        workers = max(cfg.data.num_workers, min(MAX_WORKERS, cpus - 1))
        if workers != cfg.data.num_workers:
            out["data.num_workers"] = workers
    return out


# ------------------------------------------------------------------------------------------------ which fields
def all_fields() -> set[str]:
    cfg = Config()
    return {f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))}


def _field_name(name: str) -> str | None:
    """A field as `set_fields` names it ("section.key", or a key only one section has; "data": data.data_dir)
    -> "section.key" (None if unknown: `set_fields` has rejected it already)."""
    if "." in name:
        return name
    key = {"data": "data_dir"}.get(name, name)
    owners = [s for s in all_fields() if s.split(".", 1)[1] == key]
    return owners[0] if len(owners) == 1 else None


def given_fields(config=None, fields: dict | None = None, sets: Iterable[str] = (),
                 refiner: str | None = None) -> set[str]:
    """The fields the user set, as `train_config` receives them: a Config object (every field), a config dict or
    file (the keys it names), `fields` by name, `--set` items, the `--refiner` preset's fields."""
    if isinstance(config, Config):
        return all_fields()
    out: set[str] = set()
    if config is not None:
        from ..data.coco import read_json

        named = config if isinstance(config, dict) else read_json(config, what="config file")
        out |= {f"{section}.{key}" for section, keys in named.items() if isinstance(keys, dict) for key in keys}
    out |= {n for n in map(_field_name, fields or {}) if n}
    out |= {item.partition("=")[0].strip() for item in sets}
    if refiner:
        out |= {f"ssddet.{k}" for k in PAPER_REFINER}
    return out


# ------------------------------------------------------------------------------------------------ the device
def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cuda_device_info(device: str) -> DeviceInfo | None:
    """The GPU a run with `train.device` = `device` trains on (under torchrun: this process's, LOCAL_RANK), or
    None when it trains on the CPU (or the name is invalid: the Trainer reports that)."""
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            return None
        device = "cuda"
    try:
        dev = torch.device(device)
    except RuntimeError:
        return None
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    index = dev.index if dev.index is not None else (
        int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else torch.cuda.current_device())
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(name=props.name, total_memory=int(props.total_memory), cpu_count=cpu_count(),
                      local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")), world=world)


def apply_device_defaults(cfg: Config, given: Iterable[str]) -> dict[str, int]:
    """Set the fields `gpu_defaults` chooses for the run's device (nothing on the CPU) and say so in one log line
    (rank 0). -> what was set."""
    device = cuda_device_info(cfg.train.device)
    if device is None:
        return {}
    chosen = gpu_defaults(device, given, cfg)
    for name, value in chosen.items():
        section, key = name.split(".")
        setattr(getattr(cfg, section), key, value)
    if chosen and os.environ.get("RANK", "0") == "0":
        log.info("GPU defaults for %s (%.0f GiB, %d CPUs): %s; set one to keep your own (--batch-size, "
                 "--warmup-iters, --workers); the LR follows the batch (--lr-ref-batch)", device.name,
                 device.total_memory / 2**30, device.cpu_count,
                 ", ".join(f"{n.split('.')[1]} {v}" for n, v in chosen.items()))
    return chosen
