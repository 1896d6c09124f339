"""Accelerator options of a training run: mixed precision (`--amp`, `--amp-dtype`), SyncBatchNorm (`--sync-bn`)
and the linear LR scaling rule (`train.lr_ref_batch`), each saying in one log line what it does on this device;
and the SGD with the device's faster kernel (`build_sgd`)."""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import UserError

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast dtype and GradScaler of a run. `--amp` on CUDA: bf16 autocast (fp32's exponent range, so no loss
    scaling) or fp16 autocast with a GradScaler. Without --amp, or off CUDA (said in one line), fp32 and a
    disabled scaler (its scale/unscale_/step are then plain backward/no-op/optimizer.step). The refiner's MIL and
    SISD losses run in fp32 either way (method.md §3.5; models/ssddet/mil.py `_no_autocast`)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, verbose: bool = True):
        if cfg.amp_dtype not in AMP_DTYPES:
            raise UserError(f"unknown train.amp_dtype '{cfg.amp_dtype}' (choose from {', '.join(AMP_DTYPES)})")
        self.device_type = device.type
        self.dtype: torch.dtype | None = None
        say = log.warning if verbose else log.debug
        if cfg.amp and device.type != "cuda":
            say("--amp needs CUDA: training on %s in float32", device)
        elif cfg.amp:
            self.dtype = AMP_DTYPES[cfg.amp_dtype]
            if self.dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
                say("--amp-dtype bf16: this GPU has no bfloat16, using fp16 with loss scaling")
                self.dtype = torch.float16
            (log.info if verbose else log.debug)("mixed precision: %s autocast%s", self.dtype,
                                                  " + GradScaler" if self.dtype is torch.float16 else "")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype is torch.float16)

    @property
    def scaling(self) -> bool:
        """True when a GradScaler guards the step (fp16): it skips steps with inf/NaN gradients itself."""
        return self.scaler.is_enabled()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def load_scaler(self, state: dict) -> None:
        """Restore the scaler state of a checkpoint; an fp32 run's (empty) state leaves a fresh scaler."""
        if state and self.scaling:
            self.scaler.load_state_dict(state)


def trainable_batchnorm_count(module: nn.Module) -> int:
    """BatchNorm layers that update statistics in training (FrozenBatchNorm2d is not one)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def maybe_sync_batchnorm(module: nn.Module, enabled: bool, device: torch.device, world: int,
                         verbose: bool = True) -> nn.Module:
    """`--sync-bn`: BatchNorm statistics over all processes' images instead of each GPU's 2, for backbones that
    train their BatchNorm (from-scratch mobilenet_v3 / resnet). One log line says what happened. Parameters are
    kept (same objects, same state_dict keys), so call it before building the optimizer and the DDP wrapper."""
    if not enabled:
        return module
    say = log.info if verbose else log.debug
    n = trainable_batchnorm_count(module)
    if n == 0:
        say("--sync-bn: nothing to convert, no BatchNorm layer trains (a pretrained backbone's are frozen)")
        return module
    if world == 1:
        say("--sync-bn: one process, nothing to synchronise (%d BatchNorm layers unchanged)", n)
        return module
    if device.type != "cuda":
        say("--sync-bn: SyncBatchNorm needs CUDA; the %d BatchNorm layers stay per process on %s", n, device)
        return module
    say("--sync-bn: %d BatchNorm layers -> SyncBatchNorm over %d processes", n, world)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def scaled_lr(cfg: TrainConfig, world: int, verbose: bool = True) -> float:
    """Linear scaling rule (Goyal et al. 2017; torchvision's detection references): the LR grows with the total
    batch, batch_size x processes. `train.lr` is the LR for a total batch of `train.lr_ref_batch` images (the
    defaults were tuned at 2); lr_ref_batch 0 uses train.lr as given."""
    total = cfg.batch_size * world
    if cfg.lr_ref_batch < 0:
        raise UserError(f"train.lr_ref_batch must be >= 0, got {cfg.lr_ref_batch}")
    if not cfg.lr_ref_batch or total == cfg.lr_ref_batch:
        return cfg.lr
    lr = cfg.lr * total / cfg.lr_ref_batch
    if verbose:
        log.info("learning rate %g: --lr %g is for %d images per step, this run takes %d (%d process%s x %d); "
                 "linear scaling (--lr-ref-batch 0 uses --lr as given)", lr, cfg.lr, cfg.lr_ref_batch, total,
                 world, "" if world == 1 else "es", cfg.batch_size)
    return lr


def build_sgd(param_groups: list[dict], lr: float, cfg: TrainConfig, device: torch.device) -> torch.optim.SGD:
    """The run's SGD (momentum, weight decay). On the CPU its fused kernel (torch >= 2.4): one pass over each
    parameter instead of foreach's several, ~8 ms instead of ~40 ms per step for the Lite0 detector's ~20 M
    parameters at 2 threads, the same update up to float rounding (tests/test_train_optimizer.py). CUDA keeps
    torch's default (foreach), which its step was measured with (docs/benchmarks.md, GPU)."""
    fused = True if device.type == "cpu" else None
    return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
