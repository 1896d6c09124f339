"""Accelerator options on the CPU: what --amp / --amp-dtype resolve to, the refiner's fp32 losses under autocast,
--sync-bn's conversion and its log lines, the linear LR scaling rule. (The CUDA side: tests/test_cuda.py.)"""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from helpers import CHEAP_MODEL_FIELDS, read_log, step_grad_norms, train_args, write_shapes_coco

from ssddet.cli import main
from ssddet.config import ModelConfig, SSDDetConfig, TrainConfig
from ssddet.engine import train as train_mod
from ssddet.engine.accel import Precision, maybe_sync_batchnorm, scaled_lr, trainable_batchnorm_count
from ssddet.errors import UserError
from ssddet.models.detector import build_detector
from ssddet.models.methods import SSDDetMethod

CUDA = torch.device("cuda", 0)  # only a name here: nothing is allocated on it


def test_amp_off_cuda_is_float32_and_says_so(caplog):
    caplog.set_level(logging.INFO)
    p = Precision(TrainConfig(amp=True), torch.device("cpu"))
    assert p.dtype is None and not p.scaling
    assert caplog.text.count("--amp needs CUDA: training on cpu in float32") == 1
    with p.autocast():
        assert not torch.is_autocast_enabled("cpu")
    caplog.clear()
    Precision(TrainConfig(amp=False), torch.device("cpu"))
    assert caplog.text == ""  # nothing to say without --amp
    with pytest.raises(UserError, match="amp_dtype 'fp8'"):
        Precision(TrainConfig(amp=True, amp_dtype="fp8"), torch.device("cpu"))


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
def test_amp_dtype_on_cuda(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert Precision(TrainConfig(amp=True), CUDA).dtype is torch.bfloat16  # bf16 by default, no loss scaling
    assert not Precision(TrainConfig(amp=True), CUDA).scaling
    assert Precision(TrainConfig(amp=True, amp_dtype="fp16"), CUDA).dtype is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert Precision(TrainConfig(amp=True), CUDA).dtype is torch.float16
    assert "this GPU has no bfloat16, using fp16" in caplog.text


def test_steps_the_grad_scaler_skips_are_logged(tmp_path, monkeypatch):
    """fp16's GradScaler skips a step whose scaled gradients overflow (by design on the first steps at 2^16): the
    train record keeps the inf/NaN norm and says amp_skipped=1, which tests/test_cuda.py accepts and nothing else.
    On the CPU: a CPU GradScaler whose first scaled backward overflows stands in for fp16's."""
    class FirstBackwardOverflows(torch.amp.GradScaler):
        calls = 0

        def scale(self, outputs):
            self.calls += 1
            return super().scale(outputs) * (math.inf if self.calls == 1 else 1.0)

    class ScaledOnCpu(Precision):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.scaler = FirstBackwardOverflows("cpu")

    monkeypatch.setattr(train_mod, "Precision", ScaledOnCpu)
    monkeypatch.setattr(train_mod, "LOG_EVERY", 1)
    data = write_shapes_coco(tmp_path / "data", n_train=4, n_val=2)
    assert main(train_args(data, tmp_path / "run", "vanilla", 1, 2)) == 0
    records = [r for r in read_log(tmp_path / "run") if r["kind"] == "train"]
    assert records[0]["amp_skipped"] == 1.0 and not math.isfinite(records[0]["grad_norm"])
    norms = step_grad_norms(tmp_path / "run")
    assert norms[0] is None and math.isfinite(norms[1]) and records[1]["amp_skipped"] == 0.0
    records[0]["amp_skipped"] = 0.0  # the same inf norm without the skip fails
    (tmp_path / "run" / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(AssertionError):
        step_grad_norms(tmp_path / "run")


def test_refiner_mil_and_sisd_losses_stay_float32_under_autocast():
    """method.md §3.5: under bf16 autocast the detector's layers run in bf16, the MIL/SISD losses in fp32."""
    torch.manual_seed(0)
    detector = build_detector(ModelConfig(backbone="mobilenet_v3_large_fpn", pretrained="none", min_size=64,
                                          max_size=96, **CHEAP_MODEL_FIELDS), 2)
    method = SSDDetMethod(detector, SSDDetConfig(trunk_dim=64, num_negatives=32, warmup_frac=0.0), 2).train()
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0], [50.0, 20.0, 90.0, 60.0]])
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2]), "ann_ids": torch.tensor([1, 2])},
               {"boxes": boxes[:1] + 5, "labels": torch.tensor([2]), "ann_ids": torch.tensor([3])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = method.detector.backbone(torch.rand(1, 3, 64, 96))
        losses, _ = method(images, targets, 0.5)
    assert next(iter(feats.values())).dtype is torch.bfloat16  # autocast did reach the network
    for k in ("loss_mil1", "loss_mil2", "loss_neg", "loss_sisd"):
        assert losses[k].dtype is torch.float32 and torch.isfinite(losses[k]), k
    sum(losses.values()).backward()


def _mobilenet(**kw):
    return build_detector(ModelConfig(backbone="mobilenet_v3_large_fpn", pretrained="none", min_size=64,
                                      max_size=96, **kw), 2)


def test_sync_bn_converts_trainable_batchnorm_only_where_it_can(caplog):
    caplog.set_level(logging.INFO)
    model = _mobilenet()
    n = trainable_batchnorm_count(model)
    assert n > 0  # from scratch: torchvision's mobilenet trains its BatchNorm
    keys, params = list(model.state_dict()), {id(p) for p in model.parameters()}
    synced = maybe_sync_batchnorm(model, True, CUDA, world=2)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == n
    assert trainable_batchnorm_count(synced) == n  # SyncBatchNorm is a _BatchNorm: nothing left unconverted
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    assert list(synced.state_dict()) == keys and {id(p) for p in synced.parameters()} == params
    assert f"{n} BatchNorm layers -> SyncBatchNorm over 2 processes" in caplog.text
    # on the CPU (gloo; SyncBatchNorm syncs GPU tensors only), with one process, or not asked: unchanged
    for device, world, enabled, line in ((torch.device("cpu"), 2, True, "SyncBatchNorm needs CUDA"),
                                         (CUDA, 1, True, "one process, nothing to synchronise"),
                                         (CUDA, 2, False, None)):
        caplog.clear()
        m = _mobilenet()
        assert maybe_sync_batchnorm(m, enabled, device, world) is m
        assert not any(isinstance(x, torch.nn.SyncBatchNorm) for x in m.modules())
        assert (line in caplog.text) if line else caplog.text == ""


def test_sync_bn_with_frozen_batchnorm_has_nothing_to_convert(caplog):
    caplog.set_level(logging.INFO)
    lite = build_detector(ModelConfig(min_size=64, max_size=96), 2)  # pretrained Lite0: FrozenBatchNorm2d
    assert trainable_batchnorm_count(lite) == 0
    assert maybe_sync_batchnorm(lite, True, CUDA, world=2) is lite
    assert caplog.text.count("--sync-bn: nothing to convert") == 1


@pytest.mark.parametrize(("batch", "world", "ref", "expected"), [
    (2, 1, 2, 0.01),  # the defaults' reference: unchanged
    (2, 4, 2, 0.04),  # 8 images per step
    (1, 1, 2, 0.005),
    (8, 8, 16, 0.04),
    (1, 4, 0, 0.01),  # 0: --lr as given
])
def test_linear_lr_scaling(batch, world, ref, expected):
    assert scaled_lr(TrainConfig(lr=0.01, batch_size=batch, lr_ref_batch=ref), world) == pytest.approx(expected)


def test_lr_ref_batch_must_not_be_negative():
    with pytest.raises(UserError, match="lr_ref_batch"):
        scaled_lr(TrainConfig(batch_size=2, lr_ref_batch=-1), 1)
