"""Top-k weighted merge of a scored bag into one pseudo box (method.md 3.1 steps 3 and 7).

Shapes: M objects, P proposals per bag, k boxes merged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...data.boxes import clip_boxes
from .sisd import spatial_confidence


def topk_merge(bag: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Merge each bag into the score-weighted mean of its k best proposals.

    Args:
        bag: Tensor[M, P, 4] xyxy.
        scores: Tensor[M, P], non-negative proposal scores (already valid-masked by the caller). Treated as
            constants (the merge is computed under no_grad: pseudo boxes are targets, never trained through).
        k: number of proposals merged (7 in the code); clipped to P.

    Returns:
        boxes: Tensor[M, 4] = sum_top-k w_p * box_p with w = s / sum_top-k s. If every score of a bag is 0
            (e.g. a bag with no valid proposal) the box falls back to the highest-scoring proposal, which is
            the first one on ties: for a neighbourhood bag that is the unshifted sample, i.e. the input box.
        weight: Tensor[M] = sum of `scores` over the WHOLE bag (not just the top k). With stage-I scores
            q = S^cls[c] * S^ins[c] this is the bag score of the GT class, the per-object weight omega of
            method.md 3.1 step 3.
    """
    with torch.no_grad():
        m, p = scores.shape
        s = scores.float()
        b = bag.float()
        if m == 0 or p == 0:
            return b.new_zeros((m, 4)), s.new_zeros((m,))
        kk = min(int(k), p)
        top, idx = s.topk(kk, dim=1)  # [M, k]
        total = top.sum(dim=1, keepdim=True)  # [M, 1]
        ok = total > 0  # [M, 1]
        w = top / total.clamp(min=torch.finfo(s.dtype).tiny)
        # degenerate bag (all scores 0): one-hot on the first arg-max proposal
        onehot = torch.zeros_like(w)
        onehot[:, 0] = 1.0
        w = torch.where(ok, w, onehot)
        idx = torch.where(ok, idx, s.argmax(dim=1, keepdim=True).expand_as(idx))
        picked = torch.gather(b, 1, idx[..., None].expand(m, kk, 4))  # [M, k, 4]
        boxes = (picked * w[..., None]).sum(dim=1)
        return boxes, s.sum(dim=1)



@torch.no_grad()
def final_merge(b2: Tensor, cls: Tensor, score: Tensor, u: Tensor | None, k: int, hw: Tensor) -> Tensor:
    """Step 7: b̃ Tensor[M, 4], the top-k merge of B2 Tensor[M, P, 4] by sigma(cls) * U' (cls, u: Tensor[M, P];
    the code: no instance term, method.md 5 item 3; not clipped), or without SISD (u None) by the stage-II bag
    scores Tensor[M, P] (clipped to hw: Tensor[M, 2] (h, w))."""
    if u is not None:
        return topk_merge(b2, cls * spatial_confidence(u), k)[0]
    return clip_boxes(topk_merge(b2, score, k)[0], hw)
