"""Keep the box (method.md 3.1 step 8): the given box b* against the merged box b̃, per object.

Shapes: M objects; candidates Tensor[M, 2, 4] = (b*, b̃) xyxy.

Without this step a correct box survives the refiner only if the whole bag collapses onto it, so exact boxes come
back moved by the refiner's own error. Two arms keep b*: the refiner's scores prefer it (ties included), or b̃ is
within `keep_iou` of it, i.e. the proposed move is no larger than what the refiner does to exact boxes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...data.boxes import aligned_iou

# IoU-arm thresholds whose outcome is logged beside the one in use (with clean boxes: `iou_keep_tXX`, the mean IoU
# with the clean box had b* been kept wherever IoU(b*, b̃) >= 0.XX, and `keep_tXX`, the share kept), so one run
# shows what every threshold would have given at its noise level (docs/method.md 3.1 step 8)
PROBE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@torch.no_grad()
def keep_the_box(cand: Tensor, cls: Tensor, iou: Tensor | None, keep_iou: float,
                 clean: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Choose b* or b̃ for every object.

    Args:
        cand: Tensor[M, 2, 4], (b*, b̃).
        cls: Tensor[M, 2] stage-II class scores sigma(cls1) of the GT class.
        iou: Tensor[M, 2] SISD's IoU estimates (IoU units), or None without SISD (then 1).
        keep_iou: b* is also kept where IoU(b*, b̃) >= keep_iou (<= 0: that arm is off).
        clean: optional Tensor[M, 4] clean boxes: adds what other rules would have given (statistics only).

    Returns:
        (Tensor[M, 4] the kept boxes, stats: keep_rate, iou_given_merged and with `clean` iou_merged,
        iou_keep_oracle, iou_keep_cls, iou_keep_sisd and per PROBE_THRESHOLDS iou_keep_tXX, keep_tXX as 0-dim
        Tensors).
    """
    u = iou.clamp(0, 1) if iou is not None else torch.ones_like(cls)
    score = cls * u
    agree = aligned_iou(cand[:, 0], cand[:, 1])
    keep = score[:, 0] >= score[:, 1]
    if keep_iou > 0:
        keep |= agree >= keep_iou
    stats = {"keep_rate": keep.float().mean(), "iou_given_merged": agree.mean()}
    if clean is not None:
        ar = torch.arange(cand.shape[0], device=cand.device)
        q = aligned_iou(cand, clean[:, None])  # [M, 2]
        stats.update(iou_merged=q[:, 1].mean(), iou_keep_oracle=q.max(dim=1).values.mean(),
                     iou_keep_cls=q[ar, (cls[:, 0] < cls[:, 1]).long()].mean(),
                     iou_keep_sisd=q[ar, (u[:, 0] < u[:, 1]).long()].mean())
        for t in PROBE_THRESHOLDS:
            k = agree >= t
            stats[f"iou_keep_t{round(t * 100)}"] = torch.where(k, q[:, 0], q[:, 1]).mean()
            stats[f"keep_t{round(t * 100)}"] = k.float().mean()
    return torch.where(keep[:, None], cand[:, 0], cand[:, 1]), stats
