"""build_detector: a plain torchvision Faster R-CNN (the deployed model of every method).

From scratch by default (no download is ever attempted). A local weights file can initialise the backbone
(an ImageNet classification checkpoint of the same architecture) or the whole detector.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import ModelConfig
from ..data.errors import DataError

log = logging.getLogger(__name__)

BACKBONES = ("mobilenet_v3_large_fpn", "resnet18_fpn", "resnet34_fpn", "resnet50_fpn", "resnet101_fpn")


def _frcnn_kwargs(cfg: ModelConfig) -> dict:
    return dict(
        min_size=cfg.min_size, max_size=cfg.max_size,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img, box_score_thresh=cfg.box_score_thresh,
    )


def _trainable_layers(cfg: ModelConfig, max_layers: int) -> int:
    if cfg.trainable_backbone_layers is not None:
        return cfg.trainable_backbone_layers
    # From scratch every layer must learn; with pretrained weights freeze the stem like the papers.
    return max_layers if cfg.backbone_weights is None and cfg.weights is None else 3


def _load_file(path: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: weights file not found") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad user file
        raise DataError(f"{path}: cannot load weights ({e})") from None
    for key in ("model", "state_dict", "detector"):  # common checkpoint wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a state_dict, got {type(obj).__name__}")
    return obj


def load_backbone_weights(model: FasterRCNN, path: str) -> None:
    """Load an ImageNet classification state_dict (torchvision key names) into the FPN backbone's body."""
    body = model.backbone.body
    own = body.state_dict()
    src = {k.removeprefix("features."): v for k, v in _load_file(path).items()}
    matched = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    if len(matched) < 0.5 * len(own):
        raise DataError(f"{path}: only {len(matched)}/{len(own)} backbone tensors match this backbone "
                        "(wrong architecture?)")
    body.load_state_dict(matched, strict=False)
    freeze_batchnorm(body)
    log.info("backbone weights: %d/%d tensors loaded from %s", len(matched), len(own), path)


def freeze_batchnorm(module: nn.Module) -> None:
    """Pretrained statistics must not be overwritten by batch-2 estimates: swap BatchNorm2d for torchvision's
    FrozenBatchNorm2d (what torchvision does for pretrained detection backbones)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)


def load_detector_weights(model: FasterRCNN, path: str) -> None:
    """Load a whole-detector state_dict; class-dependent layers of another class count are skipped."""
    own = model.state_dict()
    src = _load_file(path)
    matched = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    skipped = [k for k in src if k in own and k not in matched]
    if len(matched) < 0.5 * len(own):
        raise DataError(f"{path}: only {len(matched)}/{len(own)} detector tensors match (wrong backbone?)")
    model.load_state_dict(matched, strict=False)
    log.info("detector weights: %d/%d tensors loaded from %s%s", len(matched), len(own), path,
             f"; shape mismatch skipped: {skipped}" if skipped else "")


def _freeze_mobilenet(model: FasterRCNN, trainable: int) -> None:
    """Freeze all but the last `trainable` of MobileNetV3's 6 stages (torchvision's stage split)."""
    if trainable >= 6:
        return
    body = model.backbone.body
    stage_indices = [0] + [i for i, b in enumerate(body.values()) if getattr(b, "_is_cn", False)] + [len(body) - 1]
    freeze_before = stage_indices[len(stage_indices) - trainable] if trainable > 0 else len(body)
    for i, b in enumerate(body.values()):
        if i < freeze_before:
            b.requires_grad_(False)


def build_detector(cfg: ModelConfig, num_classes: int) -> FasterRCNN:
    """Faster R-CNN with `num_classes` foreground classes (+ background). Tensor-only; reads no file unless
    `cfg.backbone_weights` / `cfg.weights` name a local file."""
    if cfg.backbone not in BACKBONES:
        raise DataError(f"unknown backbone '{cfg.backbone}' (choose from {', '.join(BACKBONES)})")
    if num_classes < 1:
        raise DataError("the dataset has no categories")
    if cfg.backbone == "mobilenet_v3_large_fpn":
        model = fasterrcnn_mobilenet_v3_large_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes + 1,
            # torchvision itself trains every layer of a from-scratch backbone (and warns if told a number)
            trainable_backbone_layers=None, **_frcnn_kwargs(cfg))
        _freeze_mobilenet(model, _trainable_layers(cfg, 6))
    else:
        backbone = resnet_fpn_backbone(
            backbone_name=cfg.backbone.removesuffix("_fpn"), weights=None, norm_layer=nn.BatchNorm2d,
            trainable_layers=_trainable_layers(cfg, 5))
        model = FasterRCNN(backbone, num_classes=num_classes + 1, **_frcnn_kwargs(cfg))
    if cfg.backbone_weights:
        load_backbone_weights(model, cfg.backbone_weights)
    if cfg.weights:
        load_detector_weights(model, cfg.weights)
    return model


def build_trained_detector(cfg: ModelConfig, num_classes: int) -> FasterRCNN:
    """The architecture a run trained, ready for its saved state_dict: no weight file is read (the state_dict
    replaces them), and a run that started from a local backbone file gets that run's frozen BatchNorm."""
    model = build_detector(dataclasses.replace(cfg, weights=None, backbone_weights=None), num_classes)
    if cfg.backbone_weights:
        freeze_batchnorm(model.backbone.body)
    return model
