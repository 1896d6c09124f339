"""Multiple-instance-learning bag scores and losses of the two refiner stages (method.md 3.1 steps 3 and 5).

Shapes: M objects, P proposals per bag, K foreground classes, N negatives (all images together).

Label convention (torchvision): labels are 1..K, 0 = background.
- Stage I has K+1 outputs per proposal; index 0 is background, index c is class c (the label is the index).
- Stage II has K outputs; index c-1 is class c.

Everything here runs in float32 with autocast off: the bag scores are products and sums of probabilities and
the BCE is unsafe in half precision (torch refuses binary_cross_entropy under CUDA autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6  # the code's epsilon inside the stage-II logs


def _no_autocast(t: Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def masked_bag_softmax(ins_logits: Tensor, valid: Tensor | None) -> Tensor:
    """Instance score: softmax over the P proposals of each bag, zeroed on invalid ones and renormalised.

    Equivalent to the code's softmax * v / sum(softmax * v), but computed as a softmax over the valid logits
    only so that it cannot underflow to 0/0. A bag without any valid proposal gets all-zero instance scores.

    Args:
        ins_logits: Tensor[M, P, C] (C = K+1 or K).
        valid: Bool[M, P] or None (all valid).

    Returns:
        Tensor[M, P, C] float32, each column sums to 1 over P (or 0 for a bag with no valid proposal).
    """
    x = ins_logits.float()
    if valid is None:
        return x.softmax(dim=1)
    any_valid = valid.any(dim=1, keepdim=True)  # [M, 1]
    # rows without a valid proposal keep all logits (finite softmax, no NaN in backward); zeroed below
    keep = valid | ~any_valid
    s = x.masked_fill(~keep[..., None], float("-inf")).softmax(dim=1)
    return s * valid[..., None].to(s.dtype)


def stage1_bag_scores(
    cls_logits: Tensor, ins_logits: Tensor, valid: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Stage-I scores: class softmax over K+1 times instance softmax over the bag.

    Args:
        cls_logits: Tensor[M, P, K+1].
        ins_logits: Tensor[M, P, K+1].
        valid: Bool[M, P] or None.

    Returns:
        bag: Tensor[M, K+1], Ŝ = sum_p S^cls_p * S^ins_p.
        cls: Tensor[M, P, K+1], S^cls (valid-masked, as in the code's merge).
        ins: Tensor[M, P, K+1], S^ins.
    """
    with _no_autocast(cls_logits):
        cls = cls_logits.float().softmax(dim=-1)
        if valid is not None:
            cls = cls * valid[..., None].to(cls.dtype)
        ins = masked_bag_softmax(ins_logits, valid)
        return (cls * ins).sum(dim=1), cls, ins


def stage2_bag_scores(
    cls_logits: Tensor, ins_logits: Tensor, valid: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Stage-II scores: per-class sigmoid over K times instance softmax over the bag.

    Args:
        cls_logits: Tensor[M, P, K].
        ins_logits: Tensor[M, P, K].
        valid: Bool[M, P] or None (with SPSD every B2 proposal is valid).

    Returns:
        bag: Tensor[M, K]; cls: Tensor[M, P, K] sigmoid (valid-masked); ins: Tensor[M, P, K].
    """
    with _no_autocast(cls_logits):
        cls = cls_logits.float().sigmoid()
        if valid is not None:
            cls = cls * valid[..., None].to(cls.dtype)
        ins = masked_bag_softmax(ins_logits, valid)
        return (cls * ins).sum(dim=1), cls, ins


def stage1_loss(bag: Tensor, labels: Tensor, obj_mask: Tensor | None = None) -> Tensor:
    """Stage-I MIL loss: BCE of the clipped bag score against the one-hot label, summed over the K+1 classes,
    averaged over the objects.

    Args:
        bag: Tensor[M, K+1] bag scores.
        labels: Int64[M] in 1..K (index into K+1; the background column always has target 0).
        obj_mask: optional Bool[M]; objects to count. The code divides by the number of objects with at least
            one valid proposal (in practice all: the unshifted proposal is the noisy box), and such an
            object's bag score is 0 by construction, so the refiner passes `valid.any(1)` here.

    Returns:
        scalar float32 (not multiplied by w_mil1). sum / max(#counted, 1).
    """
    with _no_autocast(bag):
        s = bag.float().clamp(0.0, 1.0)
        y = F.one_hot(labels.long(), s.shape[-1]).to(s.dtype)
        # torch's BCE (logs clamped at -100, finite gradient at 0 and 1); allowed here because autocast is off
        per = F.binary_cross_entropy(s, y, reduction="none").sum(dim=-1)  # [M]
        if obj_mask is None:
            return per.sum() / max(per.shape[0], 1)
        m = obj_mask.to(per.dtype)
        return (per * m).sum() / m.sum().clamp(min=1.0)


def _focal_bce(s: Tensor, y: Tensor) -> Tensor:
    """(s - y)^2 * BCE(s, y) with the code's 1e-6 inside the logs; elementwise."""
    bce = -y * torch.log(s + EPS) - (1 - y) * torch.log(1 - s + EPS)
    return (s - y).pow(2) * bce


def stage2_loss(bag: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Stage-II MIL loss: focal-style (gamma 2, no alpha) BCE on the bag score, summed over the K classes,
    weighted per object by omega, divided by M.

    Args:
        bag: Tensor[M, K] bag scores.
        labels: Int64[M] in 1..K (column c-1 is the positive one).
        weight: optional Tensor[M] (omega, the stage-I bag score of the GT class; detached).

    Returns:
        scalar float32 (not multiplied by w_mil2).
    """
    with _no_autocast(bag):
        s = bag.float().clamp(
            0.0, 1.0
        )  # sums of sigmoid*softmax can exceed 1 by rounding: keep log(1-s) finite
        y = F.one_hot(labels.long() - 1, s.shape[-1]).to(s.dtype)
        per = _focal_bce(s, y).sum(dim=-1)  # [M]
        if weight is not None:
            per = per * weight.float()
        return per.sum() / max(per.shape[0], 1)


def negative_loss(
    neg_logits: Tensor, num_objects: int, beta: Tensor | None = None, neg_valid: Tensor | None = None
) -> Tensor:
    """Stage-II background term on random negatives: sum_neg sum_k sigma^2 * -log(1 - sigma + 1e-6), times
    beta, divided by the number of objects M (the positive stage-II normaliser).

    The full term of the paper / code is w_neg * mean(omega) * this sum / M with w_neg = 0.75: pass
    beta = mean(omega) here; the training total multiplies by the config weight w_neg (`methods.loss_weights`).

    Args:
        neg_logits: Tensor[N, K] stage-II class logits of the negatives.
        num_objects: M.
        beta: optional scalar Tensor (mean omega, detached).
        neg_valid: optional Bool[N]; negatives to count (the refiner does not pool invalid ones at all, which
            gives the same value).

    Returns:
        scalar float32 (not multiplied by w_neg).
    """
    with _no_autocast(neg_logits):
        sig = neg_logits.float().sigmoid()
        per = _focal_bce(sig, torch.zeros_like(sig)).sum(dim=-1)  # [N]
        if neg_valid is not None:
            per = per * neg_valid.to(per.dtype)
        out = per.sum() / max(num_objects, 1)
        if beta is not None:
            out = out * beta.float()
        return out
