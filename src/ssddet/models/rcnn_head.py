"""What the R-CNN box head trains with, shared by the methods: box coders and box losses (method.md 2.1, 5 item 8).

Two coders share torchvision's ``BoxCoder`` API (``encode``, ``encode_single``, ``decode``,
``decode_single``), so either can sit in ``RoIHeads.box_coder`` and torchvision's own
``postprocess_detections`` decodes with it:

- ``"xywh"``: torchvision's centre/size coder (weights (10, 10, 5, 5)) + smooth-L1 (beta 1/9), its default.
- ``"xyxy"``: the official OA-MIL DeltaXYXY coder, corner offsets over the proposal size with std 0.1
  (weights 10): dx1 = 10 * (gx1 - px1) / pw, ..., + L1. Both losses are summed and divided by the number of
  sampled RoIs, as torchvision's ``fastrcnn_loss`` and the official head do.

A detector trained with ``"xyxy"`` predicts corner deltas, so it must decode with ``XYXYBoxCoder`` at
inference: record the coder name in the checkpoint meta and set
``detector.roi_heads.box_coder = make_box_coder("xyxy")`` after loading a plain torchvision ``FasterRCNN``.

``rcnn_losses`` is the box head's loss pair with either box loss; ``rcnn_training_losses`` runs a plain
torchvision ``RoIHeads`` with it (vanilla and SSD-Det; OA-MIL's head calls ``rcnn_losses`` itself).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import box_iou

from ..data.boxes import box_wh

BOX_CODERS = ("xywh", "xyxy")


class XYXYBoxCoder:
    """Corner-offset coder (mmdet ``DeltaXYXYBBoxCoder`` with means 0, stds 1/weights), torchvision API.

    No clamping anywhere: corner deltas cannot overflow like exp(dw), and the official decode has no clip.
    """

    def __init__(self, weights: tuple[float, float, float, float] = (10.0, 10.0, 10.0, 10.0)) -> None:
        self.weights = weights

    def encode(self, reference_boxes: list[Tensor], proposals: list[Tensor]) -> tuple[Tensor, ...]:
        """Per image: deltas Tensor[R_i,4] moving proposals Tensor[R_i,4] onto reference_boxes (targets)."""
        sizes = [len(b) for b in reference_boxes]
        codes = self.encode_single(torch.cat(reference_boxes, 0), torch.cat(proposals, 0))
        return codes.split(sizes, 0)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """reference_boxes (targets) Tensor[N,4], proposals Tensor[N,4] -> deltas Tensor[N,4]."""
        w = torch.as_tensor(self.weights, dtype=reference_boxes.dtype, device=reference_boxes.device)
        proposals = proposals.to(reference_boxes.dtype)
        size = box_wh(proposals).repeat(1, 2)  # (pw, ph, pw, ph)
        return w * (reference_boxes - proposals) / size

    def decode(self, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
        """rel_codes Tensor[N,4K] against concat(boxes) Tensor[N,4] -> Tensor[N,K,4] (torchvision layout)."""
        concat = torch.cat(boxes, 0)
        n = concat.shape[0]
        if n > 0:
            rel_codes = rel_codes.reshape(n, -1)
        pred = self.decode_single(rel_codes, concat)
        return pred.reshape(n, -1, 4) if n > 0 else pred

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """rel_codes Tensor[N,4K], boxes Tensor[N,4] -> decoded Tensor[N,4K] (xyxy per class)."""
        boxes = boxes.to(rel_codes.dtype)
        w = torch.as_tensor(self.weights, dtype=rel_codes.dtype, device=rel_codes.device)
        k = rel_codes.shape[-1] // 4
        deltas = rel_codes.reshape(-1, k, 4) / w
        size = box_wh(boxes).repeat(1, 2)[:, None, :]
        return (boxes[:, None, :] + deltas * size).reshape(rel_codes.shape)


def make_box_coder(name: str, xywh_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)):
    """Coder by name: "xywh" -> torchvision ``BoxCoder(xywh_weights)``; "xyxy" -> ``XYXYBoxCoder()``."""
    if name == "xywh":
        return det_utils.BoxCoder(tuple(xywh_weights))
    if name == "xyxy":
        return XYXYBoxCoder()
    raise ValueError(f"unknown box coder {name!r}; expected one of {BOX_CODERS}")


def rcnn_losses(
    class_logits: Tensor, box_regression: Tensor, labels: Tensor, regression_targets: Tensor, box_loss: str
) -> tuple[Tensor, Tensor]:
    """R-CNN losses over all sampled RoIs.

    class_logits Tensor[R,K+1], box_regression Tensor[R,4(K+1)], labels Tensor[R] (0 = background),
    regression_targets Tensor[R,4] -> (cross-entropy, box loss). box_loss "smooth_l1" is exactly torchvision's
    ``fastrcnn_loss`` (beta 1/9); "l1" is the released OA-MIL/SSD-Det configs' L1, same normaliser (R).
    """
    if box_loss == "smooth_l1":
        return fastrcnn_loss(class_logits, box_regression, [labels], [regression_targets])
    if box_loss != "l1":
        raise ValueError(f"unknown box loss '{box_loss}' (choose from smooth_l1, l1)")
    loss_cls = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    pred = box_regression.reshape(labels.shape[0], -1, 4)[pos, labels[pos]]
    loss_box = F.l1_loss(pred, regression_targets[pos], reduction="sum") / max(labels.numel(), 1)
    return loss_cls, loss_box


# A background RoI that overlaps every annotated box of its image below this IoU is far from them: if the detector
# scores it as an object, it is more likely an object nobody annotated than a poor localisation of one that was
UNANNOTATED_MAX_IOU = 0.2


@torch.no_grad()
def ignore_unannotated(class_logits: Tensor, labels: list[Tensor], proposals: list[Tensor], gt_boxes: list[Tensor],
                       min_score: float) -> tuple[Tensor, int]:
    """The R-CNN's labels with the background RoIs that look like unannotated objects left out of its loss.

    A sampled background RoI is left out (label -100, `F.cross_entropy`'s ignore index) when the detector's own
    score for some class (softmax, as its detections are scored) is >= `min_score` and its IoU with every
    annotated box of its image is < UNANNOTATED_MAX_IOU. Why: an object without an annotation is otherwise taught
    as background at every visit, which is what missing annotations cost a detector (docs/method.md §3.2).

    class_logits Tensor[R, K+1], labels / proposals per image (Tensor[R_i], Tensor[R_i, 4], R = sum R_i),
    gt_boxes per image Tensor[G_i, 4] -> (labels Tensor[R], number left out).
    """
    fg = class_logits.detach().float().softmax(-1)[:, 1:].amax(-1)
    far = torch.cat([_far_from_every_box(p, g) for p, g in zip(proposals, gt_boxes)])
    labels = torch.cat(labels)
    out = (labels == 0) & far & (fg >= min_score)
    if bool(out.all()):  # nothing left to learn from (and a cross-entropy over no RoI is NaN): leave all in
        return labels, 0
    return labels.masked_fill(out, -100), int(out.sum())


def _far_from_every_box(rois: Tensor, boxes: Tensor) -> Tensor:
    """Bool[R]: IoU < UNANNOTATED_MAX_IOU with each of Tensor[G, 4] `boxes` (every RoI of an image without boxes)."""
    if len(boxes) == 0:
        return torch.ones(len(rois), dtype=torch.bool, device=rois.device)
    return box_iou(rois, boxes.to(rois)).amax(1) < UNANNOTATED_MAX_IOU


def rcnn_training_losses(roi_heads, features, proposals, image_sizes, targets, box_loss: str,
                         unannotated_score: float = 0.0) -> tuple[dict, dict]:
    """The R-CNN head's training losses with the chosen box loss: "smooth_l1" is torchvision's RoIHeads as is;
    "l1" is the released SSD-Det config's (docs/method.md §5.8), computed on the same sampled RoIs.
    `unannotated_score` > 0: background RoIs the detector scores at least this high, far from every annotated box,
    are left out of the classification loss (`ignore_unannotated`). -> (losses, stats)."""
    if box_loss == "smooth_l1" and unannotated_score <= 0:
        return roi_heads(features, proposals, image_sizes, targets)[1], {}
    proposals, _, labels, reg_targets = roi_heads.select_training_samples(proposals, targets)
    x = roi_heads.box_head(roi_heads.box_roi_pool(features, proposals, image_sizes))
    class_logits, box_regression = roi_heads.box_predictor(x)
    stats = {}
    if unannotated_score > 0:
        labels, n = ignore_unannotated(class_logits, labels, proposals, [t["boxes"] for t in targets],
                                       unannotated_score)
        stats["rcnn_unannotated"] = float(n)
    else:
        labels = torch.cat(labels)
    loss_cls, loss_box = rcnn_losses(class_logits, box_regression, labels, torch.cat(reg_targets), box_loss)
    return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}, stats
