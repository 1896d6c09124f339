"""The refiner's RoI features: RoIAlign on the FPN, then a feature trunk Tensor[N, C, R, R] -> Tensor[N, D].

`reduce_channels = 0` is the paper's 2-FC trunk (C*R*R = 12544 -> D -> D). Its first layer dominates the
refiner's cost (SSD-Det pushes ~3*M*P RoIs through it, 10-30x the detector's RoIs), so `reduce_channels > 0`
puts a 1x1 conv (C -> c) in front: the FC input shrinks C/c-fold with the same receptive field.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead


class ReducedTwoMLPHead(nn.Sequential):
    """1x1 conv C -> c + ReLU, then TwoMLPHead(c*R*R, D)."""

    def __init__(self, in_channels: int, resolution: int, reduce_channels: int, dim: int):
        super().__init__(nn.Conv2d(in_channels, reduce_channels, 1), nn.ReLU(inplace=True),
                         TwoMLPHead(reduce_channels * resolution * resolution, dim))


def build_trunk(in_channels: int, resolution: int, dim: int, reduce_channels: int = 0) -> nn.Module:
    if reduce_channels and reduce_channels > 0:
        return ReducedTwoMLPHead(in_channels, resolution, reduce_channels, dim)
    return TwoMLPHead(in_channels * resolution * resolution, dim)


def pool_embed(pool: nn.Module, trunk: nn.Module, features: dict[str, Tensor], image_sizes: list[tuple[int, int]],
               rois: list[Tensor]) -> tuple[Tensor, Tensor]:
    """One RoIAlign call + one trunk call. rois: per image Tensor[n_i, 4].
    Returns (pooled Tensor[sum n_i, C, R, R], trunk features Tensor[sum n_i, D])."""
    ref = next(iter(features.values()))
    # keep fp32 boxes under autocast (torchvision's roi_align casts itself); outside it the kernel wants the
    # feature dtype
    dtype = torch.float32 if torch.is_autocast_enabled(ref.device.type) else ref.dtype
    pooled = pool(features, [r.to(device=ref.device, dtype=dtype) for r in rois], image_sizes)
    return pooled, trunk(pooled)
