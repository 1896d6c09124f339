"""Box format helpers: xyxy inside the code, COCO xywh only at the JSON boundary."""
from __future__ import annotations

import numpy as np


def xywh_to_xyxy(b):
    """[x, y, w, h] (list or array[..., 4]) -> array[..., 4] as [x1, y1, x2, y2]."""
    b = np.asarray(b, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)


def xyxy_to_xywh(b):
    """array[..., 4] xyxy -> array[..., 4] xywh."""
    b = np.asarray(b, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., 2:4] - b[..., :2]], axis=-1)


def pairwise_iou_xyxy(a, b):
    """Element-wise IoU of two aligned box arrays [N, 4] (xyxy, continuous, no +1) -> [N]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
