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
row/column. Training and inference on the CPU both take this path (no-grad too: an evaluation pass pools ~30 %
faster at 2 threads, the refiner's export and mirror passes several times faster). Values and gradients equal
torchvision's up to the order of the float additions (`tests/test_roi_align.py`).

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


def _axis_taps(start: Tensor, bin_size: Tensor, pooled: int, sr: int, size: Tensor) -> tuple[Tensor, Tensor]:
    """One axis of the bilinear taps. start, bin_size, size (the map's extent on this axis): Tensor[K] ->
    (index Tensor[K, P, 2sr] long, weight Tensor[K, P, 2sr]): per bin and sample, the lower and upper neighbour."""
    p = torch.arange(pooled, dtype=start.dtype, device=start.device)
    i = torch.arange(sr, dtype=start.dtype, device=start.device)
    size = size.to(start.dtype)[:, None, None]
    # the kernel's order of operations: start + p * bin + (i + .5) * bin / sr
    c = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
         + (i[None, None, :] + 0.5) * bin_size[:, None, None] / sr)
    inside = (c >= -1.0) & (c <= size)
    c = c.clamp(min=0)
    low = c.floor()
    edge = low >= size - 1
    low = torch.where(edge, (size - 1).expand_as(low), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(c), c - low)
    index = torch.stack([low, high], -1).long().flatten(-2)
    weight = (torch.stack([1.0 - frac, frac], -1) * inside[..., None]).flatten(-2)
    return index, weight


def _per_roi(value, k: int, like: Tensor) -> Tensor:
    return value.to(like.device) if isinstance(value, Tensor) else torch.full((k,), value, device=like.device)


def sampling_taps(rois: Tensor, height, width, output_size: tuple[int, int], spatial_scale,
                  sampling_ratio: int, aligned: bool = False, base=0) -> tuple[Tensor, Tensor]:
    """The sparse sampling matrix S of RoIAlign in row order.

    rois: Tensor[K, 5] (batch index, x1, y1, x2, y2); height, width, spatial_scale and base (the map's first
    row in the table) are numbers or Tensor[K], one per RoI (a multi-level pooler's level of each RoI). Returns
    (column Tensor[K*PH*PW*T] long, weight Tensor[K*PH*PW*T]) with T = 4 * sr^2 taps per output bin, bin
    (k, p, q) owning entries [((k * PH + p) * PW + q) * T, ... + T); a column is base + n * H * W + y * W + x.
    Weights include 1 / sr^2.
    """
    k = rois.shape[0]
    ph, pw = output_size
    sr = sampling_ratio
    h, w = _per_roi(height, k, rois), _per_roi(width, k, rois)
    scale = _per_roi(spatial_scale, k, rois).to(rois.dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, j] * scale - offset for j in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the legacy kernel never pools a box smaller than one map cell
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    yi, yw = _axis_taps(y1, roi_h / ph, ph, sr, h)  # [K, PH, 2sr]
    xi, xw = _axis_taps(x1, roi_w / pw, pw, sr, w)  # [K, PW, 2sr]
    first = _per_roi(base, k, rois).long() + rois[:, 0].long() * (h * w).long()
    # Tap t = a * 2sr + b of a bin pairs row neighbour a with column neighbour b. Spread each axis over the T
    # taps first ([K, P, T], small), then one broadcast op each for the K*PH*PW*T taps with T contiguous
    # (broadcasting [K, PH, 1, 2sr, 1] against [K, 1, PW, 1, 2sr] directly ran ~4x slower: inner loops of 2).
    a = torch.arange(2 * sr, device=rois.device).repeat_interleave(2 * sr)
    b = torch.arange(2 * sr, device=rois.device).repeat(2 * sr)
    row = first[:, None, None] + yi * w.long()[:, None, None]  # [K, PH, 2sr]
    col = row[:, :, a][:, :, None, :] + xi[:, :, b][:, None, :, :]  # [K, PH, PW, T]
    weight = (yw / (sr * sr))[:, :, a][:, :, None, :] * xw[:, :, b][:, None, :, :]
    return col.reshape(-1), weight.reshape(-1)


class _Gather(torch.autograd.Function):
    """out = S @ table, one bag of taps per output row; grad_table = S^T @ grad_out, one bag per table row
    (the taps sorted by table row). table: Tensor[R, C] -> Tensor[rows, C]."""

    @staticmethod
    def forward(ctx, table: Tensor, col: Tensor, weight: Tensor, rows: int) -> Tensor:
        ctx.save_for_backward(col, weight)
        ctx.rows, ctx.table_rows = rows, table.shape[0]
        taps = col.numel() // max(rows, 1)
        offsets = torch.arange(0, col.numel(), max(taps, 1), device=col.device)[:rows]
        return F.embedding_bag(col, table, offsets, mode="sum", per_sample_weights=weight.to(table.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        col, weight = ctx.saved_tensors
        taps = col.numel() // max(ctx.rows, 1)
        row = torch.arange(ctx.rows, device=col.device).repeat_interleave(taps)
        order = torch.argsort(col, stable=True)  # the taps grouped by table row: the bags of S^T
        counts = torch.bincount(col, minlength=ctx.table_rows)
        grad = F.embedding_bag(row[order], grad_out.contiguous(), torch.cumsum(counts, 0) - counts, mode="sum",
                               per_sample_weights=weight[order].to(grad_out.dtype))
        return grad, None, None, None


def _pool(table: Tensor, col: Tensor, weight: Tensor, k: int, output_size: tuple[int, int]) -> Tensor:
    """The pooled RoIs Tensor[K, C, PH, PW] of a channels-last table Tensor[R, C], channels-last too: a view of
    the gather's rows (copying K * PH * PW * C values into NCHW order cost as much as the gather; a consumer
    that needs NCHW copies, one that reads rows, the refiner's trunks, does not)."""
    ph, pw = output_size
    if k == 0:  # empty bags would still read the table; nothing to pool
        return table.new_zeros((0, table.shape[1], ph, pw)) + 0 * table.sum()
    out = _Gather.apply(table, col, weight, k * ph * pw)
    return out.view(k, ph, pw, table.shape[1]).permute(0, 3, 1, 2)


def _table(feats: list[Tensor]) -> Tensor:
    """The maps channels-last, stacked: Tensor[sum_l N * H_l * W_l, C]."""
    return torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in feats])


def _gather_applies(input: Tensor, sampling_ratio: int) -> bool:
    """The gather is for the CPU: a fixed grid, a float map, no autocast (with or without grad). CUDA's kernels
    are parallel already."""
    # Tracing (ONNX export, torch.jit) records torchvision's op, which exporters know; the gather is a
    # custom autograd Function they cannot export.
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    return (input.device.type == "cpu" and sampling_ratio > 0
            and input.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu"))


def roi_align(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool = False) -> Tensor:
    """torchvision's `roi_align` (rois as Tensor[K, 5]), as a gather where it applies. The gather's result is
    Tensor[K, C, PH, PW] with channels-last strides (not contiguous): `reshape`, not `view`."""
    if not _gather_applies(input, sampling_ratio):
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    output_size = tuple(output_size)
    col, weight = sampling_taps(rois, input.shape[2], input.shape[3], output_size, spatial_scale,
                                sampling_ratio, aligned)
    return _pool(_table([input]), col, weight, rois.shape[0], output_size)


class FastGradMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (same arguments, level mapping and output; no parameters, so state
    dicts are unchanged) that, on the CPU, pools every level in one gather: the levels' maps stacked
    in one channels-last table, each RoI's taps pointing into its level's part."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = _filter_input(x, self.featmap_names)  # the maps named, in the order of x
        if not _gather_applies(feats[0], self.sampling_ratio):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        dev = rois.device
        level = (self.map_levels(boxes) if len(feats) > 1 else torch.zeros(len(rois), device=dev)).long()
        dims = torch.tensor([f.shape[2:] for f in feats], device=dev)  # [L, 2]: H, W
        rows = torch.tensor([f.shape[0] * f.shape[2] * f.shape[3] for f in feats], device=dev)
        base = torch.cumsum(rows, 0) - rows
        scale = torch.tensor(self.scales, dtype=rois.dtype, device=dev)
        col, weight = sampling_taps(rois, dims[level, 0], dims[level, 1], self.output_size, scale[level],
                                    self.sampling_ratio, base=base[level])
        return _pool(_table(feats), col, weight, rois.shape[0], self.output_size)


def fast_grad_pool(pool: MultiScaleRoIAlign) -> FastGradMultiScaleRoIAlign:
    """The same pooler with the gather (a no-op for one that already has it)."""
    if isinstance(pool, FastGradMultiScaleRoIAlign):
        return pool
    return FastGradMultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio,
                                      canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level)
