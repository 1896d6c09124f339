"""The mirror view: each object's b̃ computed again on the mirror image, the keep step's second view under
`trust_self` with `self_view="mirror"` (docs/method.md §3.1 step 8).

Shapes: N images of a padded batch Tensor[N, 3, H, W], image i valid in [:h_i, :w_i]; S selected objects of the
batch (image-major, as the refiner orders them).

Why a mirror and not the previous visit: between two visits the refiner learns, so its answer drifts, and early in
a short schedule that drift makes it agree with itself no better than with any box: the main command's 40 % boxes
looked as good as its own answer and were trusted (docs/benchmarks.md). On the mirror image the same refiner, now,
answers again: its disagreement with itself is its own noise only. It costs a no-grad backbone and refiner pass,
so it runs on every `self_view_every`-th step.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ...data.boxes import aligned_iou
from ...data.transforms import hflip_boxes
from ..profiling import scoped


@contextmanager
def norm_stats_kept(module: nn.Module):
    """Run `module` in training mode without changing its BatchNorm running statistics: the second view must not
    count as a training batch (a from-scratch backbone's BatchNorm trains; a pretrained one is frozen anyway)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [dict(m.named_buffers(recurse=False)) for m in norms]
    # The pass updates copies, and the modules get their own tensors back untouched: an in-place write to them
    # (an update, or copying the old values back) would bump the version of tensors the training step's graph
    # saved, and its backward would refuse them.
    for m, bufs in zip(norms, saved):
        for k, b in bufs.items():
            setattr(m, k, b.clone())
    try:
        yield
    finally:
        for m, bufs in zip(norms, saved):
            for k, b in bufs.items():
                setattr(m, k, b)


def mirror_batch(tensors: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
    """Tensor[N, 3, H, W] -> each image mirrored within its own valid region (the padding stays where it is)."""
    out = tensors.clone()
    for i, (h, w) in enumerate(image_sizes):
        out[i, :, :h, :w] = tensors[i, :, :h, :w].flip(-1)
    return out


@scoped("refiner.mirror")
@torch.no_grad()
def mirror_merged(backbone: nn.Module, refiner: nn.Module, tensors: Tensor, image_sizes: list[tuple[int, int]],
                  boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
    """b̃ of every given box (per image Tensor[S_i, 4], resized frame) computed on the mirror image and mapped
    back, Tensor[S, 4] image-major. The refiner runs in eval mode (no negatives, no sampler decision, no keep
    step, so nothing of its state changes) on these boxes only, so pass at most the per-image cap of them."""
    with norm_stats_kept(backbone):
        feats = backbone(mirror_batch(tensors, image_sizes))
    flipped = [hflip_boxes(b, float(w)) for b, (_, w) in zip(boxes, image_sizes)]
    was = refiner.training
    refiner.eval()
    try:
        out = refiner(feats, image_sizes, flipped, labels, keep_step=False)
    finally:
        refiner.train(was)
    return torch.cat([hflip_boxes(r, float(w)) for r, (_, w) in zip(out.refined, image_sizes)])


def mirror_gap_terms(given: Tensor, merged: Tensor, mirrored: Tensor) -> tuple[Tensor, Tensor]:
    """(Tensor[S] IoU(b*, b̃), Tensor[S] IoU(b̃, b̃ of the mirror image)) of Tensor[S, 4] each."""
    merged = merged.to(given)
    return aligned_iou(given, merged), aligned_iou(merged, mirrored.to(given))
