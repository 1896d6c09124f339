"""OA-MIL training (method.md section 2): the detector's RoI heads become `OAMILRoIHeads`, which add no
parameters, so the trained detector's state_dict is a plain FasterRCNN's."""
from __future__ import annotations

from torchvision.models.detection import FasterRCNN

from ...config import OAMILConfig
from ..oamil import OAMILRoIHeads
from .base import DetectionMethod


class OAMILMethod(DetectionMethod):
    def __init__(self, detector: FasterRCNN, cfg: OAMILConfig, loss_weights: dict[str, float] | None = None):
        detector.roi_heads = OAMILRoIHeads.from_roi_heads(detector.roi_heads, cfg)
        super().__init__(detector, loss_weights=loss_weights)

    def refine_targets(self, features, images, targets, progress: float):
        # The epoch gates (OA-IS, OA-IE) are fractions of the schedule; the head reads them per iteration.
        self.detector.roi_heads.progress = progress
        return targets, {}, {}

    def detector_stats(self) -> dict[str, float]:
        return dict(self.detector.roi_heads.last_stats)
