"""The data of one SSD-Det refiner call: the objects it refines (`Objects`, `gather_objects`), what its MIL
stages pass on (`Stage1`, `Stage2`), what it returns (`RefinerOutput`) and the statistics it logs (which never
enter a loss or a box). Shapes: M objects refined in the call, P proposals per bag, D trunk width.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ...data.boxes import aligned_iou, box_wh
from ..profiling import scoped


@dataclass
class RefinerOutput:
    """What one refiner call returns.

    refined: per image Tensor[M_i, 4] xyxy, the final pseudo boxes b̃ (detached). Objects the refiner skipped
        (over the per-image cap, or degenerate input boxes) keep their noisy box, and so does an object whose
        pseudo box comes out degenerate (side < 1 px or non-finite; counted in stats["num_fallback"]).
    stage1: per image Tensor[M_i, 4], the stage-I boxes b̂ (detached; noisy box for skipped objects).
    losses: the six LOSS_NAMES, each an unweighted scalar (the training method weighs them by w_spsd1 ...,
        `methods.loss_weights`). Terms that a switch turns off are graph-connected zeros, so the keys never
        change.
    stats: floats for logging only (never part of a loss).
    """

    refined: list[Tensor]
    stage1: list[Tensor]
    losses: dict[str, Tensor]
    stats: dict[str, float] = field(default_factory=dict)
    selected: list[Tensor] = field(default_factory=list)  # per image Bool[M_i]: refined in this call
    # detached intermediates of the refined objects, for diagnostics (benchmarks/refiner_diagnostics.py):
    # "gt" [M, 4] input boxes, "bag0"/"bag1"/"bag2" [M, P, 4], "valid0" Bool[M, P], "q1" [M, P] stage-I
    # GT-class scores, "cls2" [M, P] stage-II GT-class sigmoid scores, "sisd" [M, P] raw SISD predictions U
    bags: dict[str, Tensor] = field(default_factory=dict)
    negatives: list[Tensor] = field(default_factory=list)  # per image Tensor[Q_i, 4], the kept negatives


@dataclass
class Objects:
    """The objects refined in one call, flattened image-major (M = sum counts), and its RoI counters."""

    features: dict[str, Tensor]  # what the shared trunk pools: FPN outputs, or its reduced maps (trunk.py)
    image_sizes: list[tuple[int, int]]
    counts: list[int]  # objects refined per image
    gt: Tensor  # [M, 4] noisy boxes b*
    labels: Tensor  # Int64[M] in 1..K
    hw: Tensor  # [M, 2] (h, w) of each object's image
    clean: Tensor | None  # [M, 4] clean boxes (statistics only)
    scales: list[float]  # the bag's scale ratios and shift in this call (sampler preset or config)
    shift: float
    rois_shared: int = 0  # RoIs through the shared trunk
    rois_sisd: int = 0  # RoIs through the SISD trunk
    sisd_features: dict[str, Tensor] | None = None  # SISD's own reduced maps (None: it reuses the shared pool)
    previous: Tensor | None = None  # [M, 4] each object's b̃ of its previous visit (NaN: none), `keep_history`

    @property
    def m(self) -> int:
        return int(self.gt.shape[0])


class Stage1(NamedTuple):
    """Stage-I MIL on B1 and its merge."""

    feats: Tensor  # [M, P, D] shared-trunk features of B1 (SPSD-II regresses from them)
    box: Tensor  # [M, 4] b̂ (detached, clipped, degenerate ones replaced by the noisy box)
    omega: Tensor  # [M] stage-I bag score of the GT class (detached)
    q: Tensor  # [M, P] GT-class proposal scores (detached)
    loss: Tensor  # stage-I MIL loss
    num_bad: Tensor  # 0-dim: b̂ replaced by the noisy box


class Stage2(NamedTuple):
    """Stage-II MIL on B2 (and the negatives)."""

    pooled: Tensor  # [M*P, C, R, R] RoIAlign features of B2 (SISD reuses them unless it has its own maps)
    cls: Tensor  # [M, P] GT-class sigmoid scores (detached)
    score: Tensor  # [M, P] GT-class sigmoid x instance scores (detached)
    loss: Tensor  # stage-II MIL loss
    loss_neg: Tensor | None  # negatives' loss (None: no negative kept)
    num_negatives: int


@scoped("refiner.bags")
def select_objects(boxes: list[Tensor], cap: int, gen: torch.Generator | None,
                   priority: list[Tensor] | None = None) -> list[Tensor]:
    """Indices of the objects refined in each image (boxes: per image Tensor[M_i, 4]): non-degenerate boxes (a
    zero-size box cannot be encoded), at most `cap` of them (<= 0 means no cap): a random subset, or with
    `priority` (per image Tensor[M_i]) the highest priorities, ties broken at random."""
    out = []
    for i, b in enumerate(boxes):
        ok = (box_wh(b) > 0).all(dim=1)
        idx = ok.nonzero().squeeze(1)
        if 0 < cap < idx.numel():
            dev = gen.device if gen is not None else torch.device("cpu")
            perm = torch.randperm(idx.numel(), generator=gen, device=dev).to(idx.device)
            if priority is not None:  # a stable sort of the shuffled order keeps the ties random
                order = priority[i].to(idx.device)[idx[perm]].argsort(descending=True, stable=True)
                perm = perm[order]
            idx = idx[perm[:cap].sort().values]
        out.append(idx)
    return out


@scoped("refiner.bags")
def gather_objects(features: dict[str, Tensor], image_sizes: list[tuple[int, int]], noisy: list[Tensor],
                   labels: list[Tensor], true_boxes: list[Tensor] | None, sel: list[Tensor], scales: list[float],
                   shift: float, sisd_features: dict[str, Tensor] | None = None,
                   previous: list[Tensor] | None = None) -> Objects:
    """The selected objects of every image (`sel`: per image Int64 indices into noisy[i] Tensor[M_i, 4], and
    into previous[i], the same objects' b̃ of their last visit), concatenated image-major."""
    with torch.no_grad():
        dev = noisy[0].device
        counts = [int(s.numel()) for s in sel]
        img_of = torch.repeat_interleave(torch.arange(len(noisy), device=dev), torch.tensor(counts, device=dev))
        hw = torch.tensor([[float(h), float(w)] for h, w in image_sizes], device=dev)[img_of]
        clean = (torch.cat([t.to(dev, torch.float32)[s] for t, s in zip(true_boxes, sel)])
                 if true_boxes is not None else None)
        return Objects(features, image_sizes, counts, torch.cat([b[s] for b, s in zip(noisy, sel)]),
                       torch.cat([lab.to(dev)[s] for lab, s in zip(labels, sel)]).long(), hw, clean, scales, shift,
                       sisd_features=sisd_features,
                       previous=(torch.cat([p.to(dev, torch.float32)[s] for p, s in zip(previous, sel)])
                                 if previous is not None else None))


def box_quality(gt: Tensor, bag: Tensor, clean: Tensor | None = None, b0: Tensor | None = None,
                b_hat: Tensor | None = None, b_fin: Tensor | None = None) -> dict[str, Tensor]:
    """Mean IoUs of one call, as 0-dim Tensors (converted with `to_floats`).

    Args:
        gt: Tensor[M, 4] noisy input boxes b*. bag: Tensor[M, P, 4], the last bag (B1 or B2).
        clean: optional Tensor[M, 4] clean boxes; with it b0 (bag B0 Tensor[M, P, 4]), b_hat and b_fin
            (Tensor[M, 4] stage-I and final boxes) are scored against the truth too.

    Returns:
        {"bag_iou_noisy"} and, with `clean`: iou_noisy / iou_stage1 / iou_refined (input, b̂, b̃),
        bag0_iou_mean, bag_iou_mean / bag_iou_max / bag_iou_top10 (the last bag: mean, best, top-10 mean).
    """
    out = {"bag_iou_noisy": aligned_iou(bag, gt[:, None]).mean()}
    if clean is None:
        return out
    bag_iou = aligned_iou(bag, clean[:, None])  # [M, P]
    return {
        **out,
        "iou_noisy": aligned_iou(gt, clean).mean(),
        "iou_stage1": aligned_iou(b_hat, clean).mean(),
        "iou_refined": aligned_iou(b_fin, clean).mean(),
        "bag0_iou_mean": aligned_iou(b0, clean[:, None]).mean(),
        "bag_iou_mean": bag_iou.mean(),
        "bag_iou_max": bag_iou.max(dim=1).values.mean(),
        "bag_iou_top10": bag_iou.topk(min(10, bag.shape[1]), dim=1).values.mean(),
    }


def selected_masks(boxes: list[Tensor], sel: list[Tensor]) -> list[Tensor]:
    """Per image Bool[M_i]: True for the objects refined in this call (indices `sel[i]`)."""
    out = []
    for b, s in zip(boxes, sel):
        m = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
        m[s.to(b.device)] = True
        out.append(m)
    return out


def to_floats(stats: dict[str, Tensor]) -> dict[str, float]:
    """Scalar tensors -> floats with one device->host copy per device (not one sync per stat)."""
    by_dev: dict[torch.device, list[str]] = {}
    for k, v in stats.items():
        by_dev.setdefault(v.device, []).append(k)
    out: dict[str, float] = {}
    for keys in by_dev.values():
        out.update(zip(keys, torch.stack([stats[k].detach().float().reshape(()) for k in keys]).tolist()))
    return {k: out[k] for k in stats}


def check_inputs(image_sizes: list, boxes: list[Tensor], labels: list[Tensor],
                 true_boxes: list[Tensor] | None) -> None:
    if len(labels) != len(boxes) or len(image_sizes) != len(boxes):
        raise ValueError("boxes, labels and image_sizes must have one entry per image")
    if true_boxes is not None and (len(true_boxes) != len(boxes)
                                   or any(t.shape[0] != b.shape[0] for t, b in zip(true_boxes, boxes))):
        raise ValueError("true_boxes must pair one-to-one with boxes")


def fill_losses(module: torch.nn.Module, losses: dict[str, Tensor | None], names) -> dict[str, Tensor]:
    """All loss `names`, in that order: a term that did not run is a zero connected to every parameter of `module`
    (the refiner), so backward() and DDP see the same graph on every batch (abs: avoid printing -0.0)."""
    zero, out = None, {}
    for name in names:
        if losses.get(name) is None:
            zero = (sum(p.sum() for p in module.parameters()) * 0.0).abs() if zero is None else zero
        out[name] = losses[name] if losses.get(name) is not None else zero
    return out
