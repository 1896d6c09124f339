"""SPSD: spatial position self-distillation regressor (method.md 3.1 steps 2 and 4).

Shapes: M objects, P proposals per bag, D trunk width (1024).

A class-agnostic Linear(D, 4) predicts XYWH deltas of every bag proposal towards one target box per object
(the noisy box for SPSD-I, the stage-I refined box for SPSD-II). Regressing many objects whose noise is
roughly zero-mean teaches the "statistical" object extent, so the decoded boxes drift towards the true object.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder

# mmdet DeltaXYWH stds (0.1, 0.1, 0.2, 0.2) == torchvision weights (10, 10, 5, 5) (method.md 5 item 8)
SPSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# the same log-size clamp torchvision uses (mmdet's max_ratio is |log(16/1000)|, the same value)
SPSD_CLIP = math.log(1000.0 / 16)


class SPSDRegressor(nn.Module):
    """Linear(D, 4) delta head plus its box coder.

    Args:
        in_dim: D, width of the trunk features.
    """

    def __init__(self, in_dim: int = 1024) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, 4)
        self.coder = BoxCoder(weights=SPSD_WEIGHTS, bbox_xform_clip=SPSD_CLIP)

    def forward(self, feats: Tensor) -> Tensor:
        """feats: Tensor[..., D] -> deltas Tensor[..., 4] (dx, dy, dw, dh) in the coder's weighted units."""
        return self.fc(feats)

    def decode(self, deltas: Tensor, proposals: Tensor) -> Tensor:
        """Apply deltas to their proposals.

        Args:
            deltas: Tensor[M, P, 4].
            proposals: Tensor[M, P, 4] xyxy.

        Returns:
            Tensor[M, P, 4] xyxy float32, detached: the boxes only become RoIs of the next step, and RoIAlign
            passes no gradient to box coordinates anyway (method.md 3.1 step 4, "detach explicitly"). Not
            clipped.
        """
        shape = proposals.shape
        with torch.no_grad():
            boxes = self.coder.decode_single(
                deltas.detach().float().reshape(-1, 4), proposals.float().reshape(-1, 4)
            )
        return boxes.reshape(shape)

    def loss(
        self, deltas: Tensor, proposals: Tensor, targets: Tensor, weight: Tensor | None = None
    ) -> Tensor:
        """L1 between predicted and target deltas, summed over the 4 deltas, averaged over all M*P proposals.

        Args:
            deltas: Tensor[M, P, 4] predictions.
            proposals: Tensor[M, P, 4] xyxy, the boxes the deltas are relative to. Every proposal (invalid
                ones included) regresses to its object's target, as in the code (method.md 5 item 9).
            targets: Tensor[M, 4] xyxy, one target per object.
            weight: optional Tensor[M] per-object weight (omega for SPSD-II), detached by the caller.

        Returns:
            scalar float32 (unweighted; the training total applies w_spsd*). 0 (graph-connected) for
            M*P == 0.
        """
        m, p = proposals.shape[:2]
        with torch.no_grad():
            tgt = self.coder.encode_single(
                targets.float()[:, None, :].expand(m, p, 4).reshape(-1, 4), proposals.float().reshape(-1, 4)
            ).reshape(m, p, 4)
        per = (deltas.float() - tgt).abs().sum(dim=-1)  # [M, P]
        if weight is not None:
            per = per * weight.float()[:, None]
        return per.sum() / max(m * p, 1)
