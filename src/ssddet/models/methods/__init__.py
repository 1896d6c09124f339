"""Training methods around one torchvision Faster R-CNN: vanilla (`base.DetectionMethod` itself), SSD-Det
(`ssddet.SSDDetMethod`) and OA-MIL (`oamil.OAMILMethod`), built by name from the config."""
from __future__ import annotations

from torchvision.models.detection import FasterRCNN

from ...config import Config
from ...errors import UserError
from .base import DetectionMethod, weighted_total
from .oamil import OAMILMethod
from .ssddet import SSDDetMethod

METHODS = ("vanilla", "ssddet", "oamil")
BOX_LOSSES = ("smooth_l1", "l1")

__all__ = ["BOX_LOSSES", "METHODS", "DetectionMethod", "OAMILMethod", "SSDDetMethod", "build_method",
           "loss_weights", "weighted_total"]


def loss_weights(cfg: Config) -> dict[str, float]:
    """The one dictionary of loss weights (DETR's `weight_dict`): loss term -> its weight in the optimised
    total, read from the config; the modules return their terms unweighted and a term not listed weighs 1.
    The run log keeps every unweighted term (`loss_*`) next to the weighted total (`loss`)."""
    if cfg.train.method == "ssddet":
        s = cfg.ssddet  # method.md 3.2
        det = {"loss_objectness": s.w_det, "loss_classifier": s.w_det, "loss_box_reg": s.w_det,
               "loss_rpn_box_reg": s.w_rpn_box}  # the released det_loss_weight is 4.0 (method.md 4)
        return {"loss_spsd1": s.w_spsd1, "loss_mil1": s.w_mil1, "loss_spsd2": s.w_spsd2, "loss_mil2": s.w_mil2,
                "loss_neg": s.w_neg, "loss_sisd": s.w_sisd, **det}
    if cfg.train.method == "oamil":
        return {"loss_oamil": cfg.oamil.oamil_lambda}  # method.md 2.3
    return {}


def build_method(cfg: Config, detector: FasterRCNN, num_classes: int) -> DetectionMethod:
    """The training method `cfg.train.method` around `detector` (num_classes foreground classes)."""
    name = cfg.train.method
    if cfg.train.box_loss not in BOX_LOSSES:
        raise UserError(f"unknown train.box_loss '{cfg.train.box_loss}' (choose from {', '.join(BOX_LOSSES)})")
    if name == "oamil" and cfg.train.box_loss != "smooth_l1":  # its head pairs the loss with its box coder
        raise UserError("OA-MIL's box loss follows oamil.box_coder (xyxy: L1); leave train.box_loss at smooth_l1")
    weights = loss_weights(cfg)
    if name == "vanilla":
        return DetectionMethod(detector, cfg.train.box_loss, weights)
    if name == "ssddet":
        return SSDDetMethod(detector, cfg.ssddet, num_classes, cfg.train.box_loss, weights)
    if name == "oamil":
        return OAMILMethod(detector, cfg.oamil, weights)
    raise UserError(f"unknown method '{name}' (choose from {', '.join(METHODS)})")
