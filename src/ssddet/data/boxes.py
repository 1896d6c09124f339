"""Box helpers: xyxy inside the code, COCO xywh only at the JSON boundary, and the one aligned-pairs IoU.

Pairwise (all-against-all) IoU is `torchvision.ops.box_iou`; `aligned_iou` is the element-wise one (box i of a
against box i of b, with broadcasting), used by every method, statistic and data tool.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_area


def xywh_to_xyxy(b):
    """[x, y, w, h] (list or array[..., 4]) -> array[..., 4] as [x1, y1, x2, y2]."""
    b = np.asarray(b, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)


def xyxy_to_xywh(b):
    """array[..., 4] xyxy -> array[..., 4] xywh."""
    b = np.asarray(b, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., 2:4] - b[..., :2]], axis=-1)


def _area(b: Tensor) -> Tensor:
    """Tensor[..., 4] xyxy -> Tensor[...]: box_area with an inverted side (x2 < x1 or y2 < y1) counted as empty,
    where box_area would give a negative area (or a positive one for two inverted sides)."""
    b = torch.cat([b[..., :2], torch.maximum(b[..., 2:], b[..., :2])], dim=-1)
    return box_area(b.reshape(-1, 4)).reshape(b.shape[:-1])


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
    inter = _area(torch.cat([lt, rb], dim=-1))
    union = _area(a) + _area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(dtype).tiny), torch.zeros_like(union))


def aligned_iou_np(a, b) -> np.ndarray:
    """`aligned_iou` of array-likes (lists, numpy arrays) [..., 4] -> float64 array[...]."""
    return aligned_iou(torch.as_tensor(np.asarray(a, dtype=np.float64)),
                       torch.as_tensor(np.asarray(b, dtype=np.float64))).numpy()
