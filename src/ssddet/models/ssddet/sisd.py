"""SISD: spatial identity self-distillation, an IoU predictor re-ranking the stage-II bag (method.md 3.1 6-7).

Shapes: M objects, P proposals per bag, C channels (256), R RoI resolution (7), D trunk width (1024).
 The head predicts how well each B2 proposal overlaps the stage-I box b̂. It has its OWN 2-FC trunk: sharing
the MIL trunk costs 4.6 AP in the paper (Table 5), because the MIL features are trained to be
class-discriminative
rather than localisation-aware. ORE adds the bag's mean feature so each proposal is judged relative to its own
object (this helps separate neighbouring objects of the same class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from ...data.boxes import aligned_iou

IOU_MEAN, IOU_STD = 0.5, 0.5  # IoU targets are normalised to [-1, 1] as (T - 0.5) / 0.5


class SISDHead(nn.Module):
    """Separate 2-FC trunk (C*R*R -> D -> D, ReLU) + optional ORE + Linear(D, 1) IoU head.

    Args:
        in_features: C*R*R (12544 for 256 x 7 x 7).
        dim: D.
        trunk: optional replacement trunk (pooled features -> D), e.g. the reduced one of `trunk.py`.
        ore: add the bag-mean feature (G* = G + mean_p G, the mean NOT detached, as in the code).
    """

    def __init__(self, in_features: int = 256 * 7 * 7, dim: int = 1024, ore: bool = True,
                 trunk: nn.Module | None = None) -> None:
        super().__init__()
        self.trunk = trunk if trunk is not None else TwoMLPHead(in_features, dim)
        self.iou = nn.Linear(dim, 1)
        self.ore = ore

    def forward(self, roi_feats: Tensor, num_objects: int) -> Tensor:
        """Predict the normalised IoU of every proposal.

        Args:
            roi_feats: Tensor[M*P, C, R, R] pooled B2 features, object-major (the P proposals of object 0
                first).
            num_objects: M.

        Returns:
            U: Tensor[M, P], predictions of (IoU - 0.5) / 0.5.
        """
        g = self.embed(roi_feats, num_objects)
        return self.predict(g, self.context(g))

    def embed(self, roi_feats: Tensor, num_objects: int) -> Tensor:
        """Trunk features Tensor[M, P, D] of pooled Tensor[M*P, C, R, R] (object-major)."""
        g = self.trunk(roi_feats)  # [M*P, D]
        return g.reshape(num_objects, -1, g.shape[-1])

    def context(self, g: Tensor) -> Tensor | None:
        """ORE's per-object context, the bag-mean feature Tensor[M, 1, D] (None without ORE)."""
        return g.mean(dim=1, keepdim=True) if self.ore else None

    def predict(self, g: Tensor, context: Tensor | None) -> Tensor:
        """U Tensor[M, J] of features g Tensor[M, J, D] judged relative to their object's bag `context`: the
        bag itself (J = P), or other candidate boxes of the same objects (the keep-the-box step)."""
        if context is not None:
            g = g + context
        return self.iou(g).squeeze(-1)


def sisd_targets(bag: Tensor, ref_boxes: Tensor) -> Tensor:
    """Normalised IoU targets T' = (IoU(B2_p, b̂_j) - 0.5) / 0.5.

    Args:
        bag: Tensor[M, P, 4] xyxy.
        ref_boxes: Tensor[M, 4] xyxy, the stage-I refined boxes b̂.

    Returns:
        Tensor[M, P] in [-1, 1], detached.
    """
    with torch.no_grad():
        t = aligned_iou(bag, ref_boxes[:, None, :])
        return (t - IOU_MEAN) / IOU_STD


def sisd_loss(pred: Tensor, target: Tensor) -> Tensor:
    """SmoothL1 (beta = 1) averaged over all M*P entries; not omega-weighted, not valid-masked (as in the
    code).

    Args:
        pred: Tensor[M, P]; target: Tensor[M, P].

    Returns:
        scalar float32 (not multiplied by w_sisd).
    """
    with torch.autocast(device_type=pred.device.type, enabled=False):
        if pred.numel() == 0:
            return pred.float().sum() * 0.0
        return F.smooth_l1_loss(pred.float(), target.float(), beta=1.0, reduction="mean")


def spatial_confidence(pred: Tensor) -> Tensor:
    """U' = 0.5 * U + 0.5 (back to IoU units), then min-max normalised within each bag to [0, 1].

    A bag whose predictions are all equal (max = min) gets all ones, i.e. SISD then leaves the ranking to the
    class score.

    Args:
        pred: Tensor[M, P] normalised IoU predictions.

    Returns:
        Tensor[M, P] in [0, 1], detached.
    """
    with torch.no_grad():
        u = pred.float() * IOU_STD + IOU_MEAN
        lo = u.min(dim=1, keepdim=True).values
        hi = u.max(dim=1, keepdim=True).values
        span = hi - lo
        out = (u - lo) / span.clamp(min=torch.finfo(u.dtype).tiny)
        return torch.where(span > 0, out, torch.ones_like(out))
