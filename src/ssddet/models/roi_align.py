"""RoIAlign for CPU training as a gather: the same sums as torchvision's kernels, vectorised over channels.

torchvision's CPU RoIAlign is serial: the forward loops over RoIs and channels, and the backward scatters one
(RoI, channel, bin, sample, neighbour) at a time into NCHW maps. On BCCD (batch 2, 320 px, 256 R-CNN RoIs of 256
channels) the backward took ~6x the forward and was the largest single part of a training step
(docs/benchmarks.md, "Training speed"). With a fixed sampling grid (`sampling_ratio > 0`, every pooler here) the
op is linear in the map,

    out[k, :, p, q] = sum_j S[(k, p, q), j] * X[j, :]      X: Tensor[N*H*W, C], the map channels-last
                                                          S: K*PH*PW rows, 4 * sr^2 bilinear taps per row

so the forward is one `embedding_bag` over the rows of S, and the gradient grad_X = S^T @ grad_out another over
its columns (the taps sorted by map position; one bag per position, deterministic). Both run in parallel over
threads. The taps are the C++ kernel's (`bilinear_interpolate` / `pre_calc`): sample points at (i + 0.5) * bin /
sr inside each bin, points beyond [-1, size] contribute nothing, coordinates clamped at 0 and at the last
row/column. Only training (grad mode) takes this path; inference keeps torchvision's kernel. Values and
gradients equal torchvision's up to the order of the float additions (`tests/test_roi_align.py`).

Shapes: K RoIs, N images, C channels, H x W map, PH x PW bins, sr samples per bin side.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

__all__ = ["FastGradMultiScaleRoIAlign", "roi_align", "sampling_taps"]


def _axis_taps(start: Tensor, bin_size: Tensor, pooled: int, sr: int, size: int) -> tuple[Tensor, Tensor]:
    """One axis of the bilinear taps. start, bin_size: Tensor[K] -> (index Tensor[K, P, 2sr] long,
    weight Tensor[K, P, 2sr]): for each bin and sample, the lower and the upper neighbour."""
    p = torch.arange(pooled, dtype=start.dtype, device=start.device)
    i = torch.arange(sr, dtype=start.dtype, device=start.device)
    # the kernel's order of operations: start + p * bin + (i + .5) * bin / sr
    c = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
         + (i[None, None, :] + 0.5) * bin_size[:, None, None] / sr)
    inside = (c >= -1.0) & (c <= size)
    c = c.clamp(min=0)
    low = c.floor()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(c), c - low)
    index = torch.stack([low, high], -1).long().flatten(-2)
    weight = (torch.stack([1.0 - frac, frac], -1) * inside[..., None]).flatten(-2)
    return index, weight


def sampling_taps(rois: Tensor, height: int, width: int, output_size: tuple[int, int], spatial_scale: float,
                  sampling_ratio: int, aligned: bool = False) -> tuple[Tensor, Tensor]:
    """The sparse sampling matrix S of RoIAlign in row order.

    rois: Tensor[K, 5] (batch index, x1, y1, x2, y2). Returns (column Tensor[K*PH*PW*T] long, weight
    Tensor[K*PH*PW*T]) with T = 4 * sr^2 taps per output bin, bin (k, p, q) owning entries
    [((k * PH + p) * PW + q) * T, ... + T); a column is n * H * W + y * W + x. Weights include 1 / sr^2.
    """
    ph, pw = output_size
    sr = sampling_ratio
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, j] * spatial_scale - offset for j in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the legacy kernel never pools a box smaller than one map cell
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    yi, yw = _axis_taps(y1, roi_h / ph, ph, sr, height)  # [K, PH, 2sr]
    xi, xw = _axis_taps(x1, roi_w / pw, pw, sr, width)  # [K, PW, 2sr]
    n = rois[:, 0].long()
    col = (n[:, None, None, None, None] * (height * width) + yi[:, :, None, :, None] * width
           + xi[:, None, :, None, :])  # [K, PH, PW, 2sr, 2sr]
    weight = yw[:, :, None, :, None] * xw[:, None, :, None, :] / (sr * sr)
    return col.reshape(-1), weight.reshape(-1)


def _bags(col: Tensor, weight: Tensor, rows: int, positions: int) -> tuple[Tensor, Tensor, Tensor]:
    """S^T as embedding bags: for every map position (a bag, `offsets`), the output rows it feeds and their
    weights. col, weight: `sampling_taps` of `rows` output bins over `positions` map positions."""
    taps = col.numel() // max(rows, 1)
    row = torch.arange(rows, device=col.device).repeat_interleave(taps)
    order = torch.argsort(col, stable=True)  # group the taps by map position
    counts = torch.bincount(col, minlength=positions)
    return row[order], torch.cumsum(counts, 0) - counts, weight[order]


def _gather_forward(input: Tensor, col: Tensor, weight: Tensor, k: int, output_size: tuple[int, int]) -> Tensor:
    """out = S @ X: one bag of 4 * sr^2 taps per output bin. input: Tensor[N, C, H, W] -> Tensor[K, C, PH, PW]."""
    n, c, h, w = input.shape
    ph, pw = output_size
    x = input.permute(0, 2, 3, 1).reshape(n * h * w, c)
    taps = col.numel() // max(k * ph * pw, 1)
    offsets = torch.arange(0, col.numel(), max(taps, 1), device=col.device)
    out = F.embedding_bag(col, x, offsets, mode="sum", per_sample_weights=weight.to(x.dtype))
    return out.view(k, ph, pw, c).permute(0, 3, 1, 2).contiguous()


def _gather_input_grad(grad_out: Tensor, col: Tensor, weight: Tensor, shape: torch.Size) -> Tensor:
    """grad_X = S^T @ grad_out. grad_out: Tensor[K, C, PH, PW] -> Tensor[N, C, H, W]."""
    n, c, h, w = shape
    k, _, ph, pw = grad_out.shape
    row, offsets, wt = _bags(col, weight, k * ph * pw, n * h * w)
    g = grad_out.permute(0, 2, 3, 1).reshape(k * ph * pw, c)
    grad = F.embedding_bag(row, g, offsets, mode="sum", per_sample_weights=wt.to(g.dtype))
    return grad.view(n, h, w, c).permute(0, 3, 1, 2)


class _RoIAlignGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                sampling_ratio: int, aligned: bool) -> Tensor:
        col, weight = sampling_taps(rois, input.shape[2], input.shape[3], output_size, spatial_scale,
                                    sampling_ratio, aligned)
        ctx.save_for_backward(col, weight)
        ctx.shape = input.shape
        return _gather_forward(input, col, weight, rois.shape[0], output_size)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        col, weight = ctx.saved_tensors
        if grad_out.shape[0] == 0:
            return grad_out.new_zeros(ctx.shape), None, None, None, None, None
        return _gather_input_grad(grad_out.contiguous(), col, weight, ctx.shape), None, None, None, None, None


def _gather_applies(input: Tensor, sampling_ratio: int) -> bool:
    """The gather is for CPU training: a fixed grid, a float map, grad mode, no autocast. CUDA's kernels are
    parallel already, and inference keeps torchvision's kernel."""
    return (input.device.type == "cpu" and sampling_ratio > 0 and torch.is_grad_enabled()
            and input.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu"))


def roi_align(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool = False) -> Tensor:
    """torchvision's `roi_align` (rois as Tensor[K, 5]), as a gather where it applies."""
    if not _gather_applies(input, sampling_ratio):
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    output_size = tuple(output_size)
    if input.requires_grad:
        return _RoIAlignGather.apply(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    col, weight = sampling_taps(rois, input.shape[2], input.shape[3], output_size, spatial_scale,
                                sampling_ratio, aligned)
    return _gather_forward(input, col, weight, rois.shape[0], output_size)


class FastGradMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (same arguments, level mapping and output; no parameters, so state
    dicts are unchanged) whose per-level RoIAlign is the gather when training on CPU."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = _filter_input(x, self.featmap_names)  # the maps named, in the order of x
        if not _gather_applies(feats[0], self.sampling_ratio):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(feats) == 1:
            return roi_align(feats[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            out[idx] = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio).to(out.dtype)
        return out


def fast_grad_pool(pool: MultiScaleRoIAlign) -> FastGradMultiScaleRoIAlign:
    """The same pooler with the gather (a no-op for one that already has it)."""
    if isinstance(pool, FastGradMultiScaleRoIAlign):
        return pool
    return FastGradMultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio,
                                      canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level)
