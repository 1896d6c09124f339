"""Neighbourhood sampler: the hand-made bag of boxes around each (noisy) box (method.md 3.1 step 1).

Shapes: M objects, S = len(scales), P = S*S*5 proposals per bag.

Boxes are xyxy float tensors. Nothing here is clipped: the released code keeps off-image proposals and only
marks them invalid (IoF with the image <= 0.7), so the regressors still see them (method.md 5 item 9).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
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
    ws5 = ws5.expand_as(pcx)
    hs5 = hs5.expand_as(pcy)
    bag = torch.stack([pcx - 0.5 * ws5, pcy - 0.5 * hs5, pcx + 0.5 * ws5, pcy + 0.5 * hs5], dim=-1)
    return bag.reshape(m, s * s * 5, 4)


ImageSize = Sequence[int] | Tensor


def bag_validity(bag: Tensor, image_size: ImageSize, thresh: float = 0.7) -> Tensor:
    """Validity mask: the fraction of each proposal's area inside the image (IoF) must exceed `thresh`.

    Args:
        bag: Tensor[M, P, 4] xyxy (any leading shape works).
        image_size: (h, w) of the resized image before padding, or Tensor[M, 2] of per-object (h, w) so that a
            whole batch is checked in one call.
        thresh: strict lower bound on the inside fraction (0.7 in the code).

    Returns:
        Bool[M, P]. A zero-area proposal is invalid.
    """
    if isinstance(image_size, Tensor) and image_size.dim() == 2:
        hw = image_size.to(device=bag.device, dtype=bag.dtype)
        extra = [1] * (bag.dim() - 2)
        h, w = hw[:, 0].reshape(-1, *extra), hw[:, 1].reshape(-1, *extra)
    else:
        h = torch.tensor(float(image_size[0]), dtype=bag.dtype, device=bag.device)
        w = torch.tensor(float(image_size[1]), dtype=bag.dtype, device=bag.device)
    iw = (torch.minimum(bag[..., 2], w) - bag[..., 0].clamp(min=0)).clamp(min=0)
    ih = (torch.minimum(bag[..., 3], h) - bag[..., 1].clamp(min=0)).clamp(min=0)
    area = (bag[..., 2] - bag[..., 0]).clamp(min=0) * (bag[..., 3] - bag[..., 1]).clamp(min=0)
    # IoF = inside / area, compared strictly as the code does (a proposal exactly at 0.7 is invalid);
    # zero-area proposals are invalid (the clamp keeps them at 0 instead of NaN)
    iof = iw * ih / area.clamp(min=torch.finfo(area.dtype).tiny)
    return (iof > thresh) & (area > 0)
