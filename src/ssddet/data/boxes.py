"""Box operations, the one home for them: xyxy everywhere inside the code, COCO xywh only at the JSON boundary.

Built on `torchvision.ops` where it fits: `box_convert` for centre/size conversions, `clip_boxes_to_image` for
clipping to one image size, `box_area`; pairwise (all-against-all) IoU is `torchvision.ops.box_iou` itself.
What torchvision lacks lives here:

- `xywh_to_xyxy` / `xyxy_to_xywh`: COCO JSON <-> xyxy numpy arrays (numpy, not torch: the loader converts one
  annotation at a time, where a torch call would cost more than the arithmetic).
- `box_wh`: the (w, h) sides; `box_area_nonneg`: area with an inverted box counted as empty.
- `clip_boxes`: clip to one image size, or to a size per object (a batch of objects from several images).
- `replace_degenerate`: boxes with a non-finite coordinate or a side under a minimum replaced by fallbacks.
- `clip_to_image`: one box (numpy) clipped to its image, for the JSON files the tools write (so that they pass
  `ssddet check --strict`).
- `aligned_iou`: the element-wise IoU (box i of a against box i of b, with broadcasting), defined for every
  input (empty boxes give 0, never NaN); used by every method, statistic and data tool.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_area, clip_boxes_to_image


def xywh_to_xyxy(b) -> np.ndarray:
    """[x, y, w, h] (list or array[..., 4]) -> float64 array[..., 4] as [x1, y1, x2, y2]."""
    b = np.asarray(b, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)


def xyxy_to_xywh(b) -> np.ndarray:
    """array[..., 4] xyxy -> float64 array[..., 4] xywh."""
    b = np.asarray(b, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., 2:4] - b[..., :2]], axis=-1)


def clip_to_image(box, width: float, height: float, min_side: float = 0.0) -> np.ndarray | None:
    """One xyxy box (array-like [4]) -> float64[4] clipped to [0, width] x [0, height], or None when a side under
    `min_side` (or none at all) is left inside."""
    clipped = np.clip(np.asarray(box, dtype=np.float64), 0.0, [width, height, width, height])
    side = clipped[2:] - clipped[:2]
    return None if (side <= 0).any() or (side < min_side).any() else clipped


def box_wh(boxes: Tensor) -> Tensor:
    """Tensor[..., 4] xyxy -> Tensor[..., 2] (w, h); negative for an inverted box."""
    return boxes[..., 2:] - boxes[..., :2]


def box_area_nonneg(boxes: Tensor) -> Tensor:
    """Tensor[..., 4] xyxy -> Tensor[...]: `box_area` with an inverted side (x2 < x1 or y2 < y1) counted as
    empty, where box_area would give a negative area (or a positive one for two inverted sides)."""
    b = torch.cat([boxes[..., :2], torch.maximum(boxes[..., 2:], boxes[..., :2])], dim=-1)
    return box_area(b.reshape(-1, 4)).reshape(b.shape[:-1])


def clip_boxes(boxes: Tensor, image_hw: Sequence[int] | Tensor) -> Tensor:
    """Clamp xyxy boxes to [0, w] x [0, h].

    Args:
        boxes: Tensor[M, ..., 4].
        image_hw: (h, w) for all boxes (torchvision's `clip_boxes_to_image`), or Tensor[M, 2] of per-object
            (h, w), broadcast over the boxes' middle dimensions (e.g. a bag Tensor[M, P, 4]).

    Returns:
        Tensor[M, ..., 4]. An inverted box stays inverted (clipping does not reorder corners).
    """
    if not (isinstance(image_hw, Tensor) and image_hw.dim() == 2):
        return clip_boxes_to_image(boxes, (float(image_hw[0]), float(image_hw[1])))
    hw = image_hw.to(device=boxes.device, dtype=boxes.dtype)
    limit = hw.flip(-1).repeat(1, 2)  # [M, 4] (w, h, w, h)
    return torch.minimum(boxes.clamp(min=0), limit.reshape(-1, *[1] * (boxes.dim() - 2), 4))


def replace_degenerate(boxes: Tensor, fallback: Tensor, min_size: float) -> tuple[Tensor, Tensor]:
    """Replace boxes with a non-finite coordinate, or a side under `min_size`, by their `fallback`.

    Args:
        boxes: Tensor[M, 4] xyxy. fallback: Tensor[M, 4] (e.g. the input box a pseudo box was made from).

    Returns:
        (Tensor[M, 4], number of boxes replaced as a 0-dim Tensor).
    """
    bad = ~torch.isfinite(boxes).all(dim=1) | ~(box_wh(boxes) >= min_size).all(dim=1)
    return torch.where(bad[:, None], fallback.to(boxes), boxes), bad.sum()


def aligned_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of corresponding xyxy boxes (continuous coordinates, no +1).

    Args:
        a: Tensor[..., 4].
        b: Tensor[..., 4], broadcastable against a (e.g. a bag Tensor[M, P, 4] against Tensor[M, 1, 4]).

    Returns:
        Tensor[...] in [0, 1], float32 (float64 if an input is float64). Defined for every input: an empty
        or inverted box overlaps nothing, and two of them (0/0) give 0, never NaN.
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = torch.broadcast_tensors(a.to(dtype), b.to(dtype))
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = box_area_nonneg(torch.cat([lt, rb], dim=-1))
    union = box_area_nonneg(a) + box_area_nonneg(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(dtype).tiny), torch.zeros_like(union))


def aligned_iou_np(a, b) -> np.ndarray:
    """`aligned_iou` of array-likes (lists, numpy arrays) [..., 4] -> float64 array[...]."""
    return aligned_iou(torch.as_tensor(np.asarray(a, dtype=np.float64)),
                       torch.as_tensor(np.asarray(b, dtype=np.float64))).numpy()
