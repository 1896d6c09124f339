"""Neighbourhood sampler: the hand-made bag of boxes around each (noisy) box (method.md 3.1 step 1).

Shapes: M objects, S = len(scales), P = S*S*5 proposals per bag.

Boxes are xyxy float tensors. Nothing here is clipped: the released code keeps off-image proposals and only
marks them invalid (IoF with the image <= 0.7), so the regressors still see them (method.md 5 item 9).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert

from ...data.boxes import box_area_nonneg, box_wh, clip_boxes

# name -> (scale ratios R, shift ratio o). "large": COCO and VOC 30/40 % noise (P = 125);
# "small": VOC 10/20 % noise (P = 45). Source: the released configs (method.md 3.1 step 1, 5 item 5).
PRESETS: dict[str, tuple[list[float], float]] = {
    "large": ([1.0, 1.2, 1.3, 0.8, 0.7], 0.2),
    "small": ([1.0, 1.1, 0.9], 0.1),
}


def bag_size(scales: Sequence[float]) -> int:
    """P for a scale list: every (width, height) scale pair times [unshifted, left, right, up, down]."""
    return len(scales) ** 2 * 5


def neighbourhood_bag(boxes: Tensor, scales: Sequence[float], shift: float) -> Tensor:
    """Sample the neighbourhood bag of every box.

    Args:
        boxes: Tensor[M, 4] xyxy.
        scales: the ratio list R. For each pair (a, b) in R x R (a outer, b inner) the width is scaled by a
            and the height by b around the same centre.
        shift: o. Each scaled box also gets 4 copies whose centre moves by -o*w', +o*w' along x and -o*h',
            +o*h' along y (w', h' = the scaled size).

    Returns:
        Tensor[M, P, 4] xyxy, P = len(scales)**2 * 5, ordered scale pair by scale pair, and inside each pair
        [unshifted, left (-x), right (+x), up (-y), down (+y)]. Proposal 0 is the input box itself (a = b = 1
        comes first in both presets). Not clipped.
    """
    m = boxes.shape[0]
    r = torch.as_tensor(list(scales), dtype=boxes.dtype, device=boxes.device)
    s = r.numel()
    cx, cy, w, h = box_convert(boxes, "xyxy", "cxcywh").unbind(-1)
    # [M, S, S]: width ratio varies along dim 1 (outer loop), height ratio along dim 2 (inner loop).
    ws = (w[:, None] * r[None, :])[:, :, None].expand(m, s, s)
    hs = (h[:, None] * r[None, :])[:, None, :].expand(m, s, s)
    # centre offsets in units of the scaled size, [5, 2]: unshifted, left, right, up, down
    off = torch.tensor(
        [[0.0, 0.0], [-shift, 0.0], [shift, 0.0], [0.0, -shift], [0.0, shift]],
        dtype=boxes.dtype,
        device=boxes.device,
    )
    ws5 = ws[..., None]  # [M, S, S, 1]
    hs5 = hs[..., None]
    pcx = cx[:, None, None, None] + off[:, 0] * ws5  # [M, S, S, 5]
    pcy = cy[:, None, None, None] + off[:, 1] * hs5
    bag = box_convert(torch.stack([pcx, pcy, ws5.expand_as(pcx), hs5.expand_as(pcy)], dim=-1), "cxcywh", "xyxy")
    return bag.reshape(m, s * s * 5, 4)


def bag_validity(bag: Tensor, image_size: Sequence[int] | Tensor, thresh: float = 0.7) -> Tensor:
    """Validity mask: the fraction of each proposal's area inside the image (IoF) must exceed `thresh`.

    Args:
        bag: Tensor[M, P, 4] xyxy (any leading shape works).
        image_size: (h, w) of the resized image before padding, or Tensor[M, 2] of per-object (h, w) so that a
            whole batch is checked in one call.
        thresh: strict lower bound on the inside fraction (0.7 in the code).

    Returns:
        Bool[M, P]. A zero-area proposal is invalid.
    """
    area = box_area_nonneg(bag)
    # IoF = inside / area, compared strictly as the code does (a proposal exactly at 0.7 is invalid);
    # zero-area proposals are invalid (the clamp keeps them at 0 instead of NaN)
    iof = box_area_nonneg(clip_boxes(bag, image_size)) / area.clamp(min=torch.finfo(area.dtype).tiny)
    return (iof > thresh) & (area > 0)


# sampler="auto" (method.md 3.5): the refiner starts with "large" and settles on one preset from how far SPSD-I
# moves the noisy boxes, which it records every iteration (`SSDDetRefiner._auto_update`).
def unshifted_correction(b0: Tensor, b1: Tensor, scales: Sequence[float]) -> Tensor | None:
    """How far SPSD-I moves the noisy boxes: the median over objects of the relative correction |B1 - B0| / size
    (averaged over the 4 coordinates) of the unshifted scale-1x1 proposal (the noisy box itself).

    Args:
        b0, b1: Tensor[M, P, 4], the bag before and after SPSD-I. scales: the bag's scale list.

    Returns:
        Tensor[] (detached), or None when 1.0 is not among the scales.
    """
    if 1.0 not in scales:
        return None
    i = list(scales).index(1.0)
    j = (i * len(scales) + i) * 5
    with torch.no_grad():
        ref = b0[:, j].float()
        return ((b1[:, j].float() - ref).abs() / box_wh(ref).clamp(min=1e-6).repeat(1, 2)).mean(dim=1).median()


def auto_window(history: Tensor, readings: int, auto_iters: int, warmup_frac: float,
                progress: float | None) -> Tensor | None:
    """The readings the "auto" sampler decides on, or None while it must wait.

    Args:
        history: Tensor[H] ring buffer of readings (NaN where not yet written). readings: how many were taken.
        auto_iters: > 0: decide after that many readings, over the second half of them (the regressor is
            untrained in the first half). 0: decide once training `progress` reaches `warmup_frac` and at least
            H/2 readings exist, over the whole buffer (the last H iterations): a from-scratch regressor only
            learns to move boxes after a few epochs, so an early reading says "small" whatever the noise. Even
            then the reading is small at any noise level (docs/benchmarks.md, BCCD from scratch), so the
            threshold is not a calibrated noise-level test.
    """
    n = history.numel()
    if auto_iters > 0:
        return history[n // 2:] if readings >= auto_iters else None
    if progress is not None and progress >= warmup_frac and readings >= n // 2:
        return history
    return None
