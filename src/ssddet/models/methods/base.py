"""The training seam shared by the methods (vanilla Faster R-CNN is this base class as it is).

Each method is an nn.Module with `.detector` (the deployed model, a plain FasterRCNN) and
`forward(images, targets, progress) -> (losses, stats)`: losses are already weighted and summed by the caller;
stats (IoU with clean boxes, ...) never enter the loss. `progress` in [0, 1] is the fraction of training done,
used for epoch-gated parts (OA-IS/OA-IE) and warm-ups, so short schedules still switch them on.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

from ..rcnn_head import rcnn_training_losses


def _scale_true_boxes(targets: list[dict], before: list[tuple[int, int]], after: list[tuple[int, int]]):
    """GeneralizedRCNNTransform resizes only `boxes`; the clean boxes must follow the same resize."""
    for t, (h0, w0), (h1, w1) in zip(targets, before, after):
        if "true_boxes" in t:
            s = torch.tensor([w1 / w0, h1 / h0, w1 / w0, h1 / h0], device=t["true_boxes"].device)
            t["true_boxes"] = t["true_boxes"] * s


class DetectionMethod(nn.Module):
    """Vanilla Faster R-CNN training, split at the seam where the other methods act:
    transform -> backbone -> [refine targets] -> RPN -> RoI heads."""

    def __init__(self, detector: FasterRCNN, box_loss: str = "smooth_l1"):
        super().__init__()
        self.detector = detector
        self.box_loss = box_loss

    def refine_targets(self, features, images, targets, progress: float):
        """Hook: return (targets for RPN/RoI heads, extra losses, stats). Vanilla trains on the given boxes."""
        return targets, {}, {}

    def weight_losses(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return losses

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups (trainable parameters only); one group at the base LR by default."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def forward(self, images: list[torch.Tensor], targets: list[dict], progress: float = 0.0):
        before = [tuple(img.shape[-2:]) for img in images]
        image_list, targets = self.detector.transform(images, targets)
        _scale_true_boxes(targets, before, image_list.image_sizes)
        features = self.detector.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        det_targets, losses, stats = self.refine_targets(features, image_list, targets, progress)
        proposals, rpn_losses = self.detector.rpn(image_list, features, det_targets)
        roi_losses = rcnn_training_losses(self.detector.roi_heads, features, proposals, image_list.image_sizes,
                                          det_targets, self.box_loss)
        losses = {**losses, **self.weight_losses({**rpn_losses, **roi_losses})}
        stats = {**stats, **self.detector_stats()}
        return losses, stats

    def detector_stats(self) -> dict[str, float]:
        return {}

