"""Training methods around one torchvision Faster R-CNN: vanilla (`base.DetectionMethod` itself), SSD-Det
(`ssddet.SSDDetMethod`) and OA-MIL (`oamil.OAMILMethod`), built by name from the config."""
from __future__ import annotations

from torchvision.models.detection import FasterRCNN

from ...config import Config
from ...errors import UserError
from .base import DetectionMethod
from .oamil import OAMILMethod
from .ssddet import SSDDetMethod

METHODS = ("vanilla", "ssddet", "oamil")
BOX_LOSSES = ("smooth_l1", "l1")

__all__ = ["BOX_LOSSES", "METHODS", "DetectionMethod", "OAMILMethod", "SSDDetMethod", "build_method"]


def build_method(cfg: Config, detector: FasterRCNN, num_classes: int) -> DetectionMethod:
    """The training method `cfg.train.method` around `detector` (num_classes foreground classes)."""
    name = cfg.train.method
    if cfg.train.box_loss not in BOX_LOSSES:
        raise UserError(f"unknown train.box_loss '{cfg.train.box_loss}' (choose from {', '.join(BOX_LOSSES)})")
    if name == "oamil" and cfg.train.box_loss != "smooth_l1":  # its head pairs the loss with its box coder
        raise UserError("OA-MIL's box loss follows oamil.box_coder (xyxy: L1); leave train.box_loss at smooth_l1")
    if name == "vanilla":
        return DetectionMethod(detector, cfg.train.box_loss)
    if name == "ssddet":
        return SSDDetMethod(detector, cfg.ssddet, num_classes, cfg.train.box_loss)
    if name == "oamil":
        return OAMILMethod(detector, cfg.oamil)
    raise UserError(f"unknown method '{name}' (choose from {', '.join(METHODS)})")
