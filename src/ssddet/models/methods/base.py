"""The training seam shared by the methods (vanilla Faster R-CNN is this base class as it is).

Each method is an nn.Module with `.detector` (the deployed model, a plain FasterRCNN) and
`forward(images, targets, progress) -> (losses, stats)`: losses are the UNWEIGHTED terms, and
`total_loss(losses)` weighs them with the method's `loss_weights` (built from the config by
`methods.loss_weights`, the only place loss weights are applied) into the loss that is optimised; stats (IoU
with clean boxes, ...) never enter the loss. `progress` in [0, 1] is the fraction of training done,
used for epoch-gated parts (OA-IS/OA-IE) and warm-ups, so short schedules still switch them on.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.transform import resize_boxes

from ..profiling import scope
from ..rcnn_head import rcnn_training_losses


def _scale_true_boxes(targets: list[dict], before: list[tuple[int, int]], after: list[tuple[int, int]]):
    """GeneralizedRCNNTransform resizes only `boxes`; the clean boxes follow the same resize (its own
    `resize_boxes`), and `resize` records the factor, so statistics can bin objects by their size in the
    source image (COCO's small / medium / large)."""
    for t, size0, size1 in zip(targets, before, after):
        t["resize"] = size1[0] / size0[0]
        if "true_boxes" in t:
            t["true_boxes"] = resize_boxes(t["true_boxes"], list(size0), list(size1))


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum_k weights[k] * losses[k], a term without a weight counting once (DETR's `weight_dict`)."""
    return sum(weights[k] * v if k in weights else v for k, v in losses.items())


class DetectionMethod(nn.Module):
    """Vanilla Faster R-CNN training, split at the seam where the other methods act:
    transform -> backbone -> [refine targets] -> RPN -> RoI heads."""

    def __init__(self, detector: FasterRCNN, box_loss: str = "smooth_l1",
                 loss_weights: dict[str, float] | None = None):
        super().__init__()
        self.detector = detector
        self.box_loss = box_loss
        self.loss_weights = dict(loss_weights or {})  # loss term -> weight; absent terms weigh 1
        # > 0: the R-CNN leaves background RoIs it scores this high, far from every annotation, out of its loss
        # (`rcnn_head.ignore_unannotated`); vanilla Faster R-CNN: 0
        self.unannotated_score = 0.0

    def refine_targets(self, features, images, targets, progress: float):
        """Hook: return (targets for RPN/RoI heads, extra losses, stats). Vanilla trains on the given boxes."""
        return targets, {}, {}

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss that is optimised: the `forward` terms weighed by `loss_weights`."""
        return weighted_total(losses, self.loss_weights)

    def param_groups(self, lr: float, train=None) -> list[dict]:
        """Optimizer parameter groups (trainable parameters only); one group at the base LR by default.
        `train`: the run's TrainConfig, for methods whose groups follow their own schedule."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def forward(self, images: list[torch.Tensor], targets: list[dict], progress: float = 0.0):
        before = [tuple(img.shape[-2:]) for img in images]
        with scope("transform"):
            image_list, targets = self.detector.transform(images, targets)
            _scale_true_boxes(targets, before, image_list.image_sizes)
        with scope("backbone"):
            features = self.detector.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        det_targets, losses, stats = self.refine_targets(features, image_list, targets, progress)
        with scope("rpn"):
            proposals, rpn_losses = self.detector.rpn(image_list, features, det_targets)
        with scope("rcnn"):
            roi_losses, roi_stats = rcnn_training_losses(self.detector.roi_heads, features, proposals,
                                                         image_list.image_sizes, det_targets, self.box_loss,
                                                         self.unannotated_score)
        losses = {**losses, **rpn_losses, **roi_losses}
        stats = {**stats, **roi_stats, **self.detector_stats()}
        return losses, stats

    def detector_stats(self) -> dict[str, float]:
        return {}

