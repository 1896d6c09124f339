"""The refiner's RoI features: RoIAlign on the FPN, then a feature trunk Tensor[N, C, R, R] -> Tensor[N, D].

`reduce_channels = 0` is the paper's 2-FC trunk (C*R*R = 12544 -> D -> D). Its first layer dominates the
refiner's cost (SSD-Det pushes ~3*M*P RoIs through it, 10-30x the detector's RoIs), so `reduce_channels > 0`
puts a 1x1 conv (C -> c) in front: the FC input shrinks C/c-fold with the same receptive field.

Reduce, then pool. A 1x1 conv and RoIAlign are both linear, so they commute: RoIAlign of the conv's output (no
bias) plus the bias equals the conv of RoIAlign's output. A sample outside the map is 0 in RoIAlign, and becomes
the bias either way. So the refiner runs its trunks' 1x1 convs once on the FPN maps (`reduce_maps`, a few
thousand positions) instead of on every RoI's R*R bins (thousands of RoIs), and RoIAlign moves c channels
instead of C. The function is the same up to float rounding (tests/test_refiner_trunk.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from ...config import resolve_trunk_precision
from ..profiling import scoped


class ReducedTwoMLPHead(nn.Sequential):
    """1x1 conv C -> c + ReLU, then TwoMLPHead(c*R*R, D)."""

    def __init__(self, in_channels: int, resolution: int, reduce_channels: int, dim: int, train_reduce: bool = True,
                 train_bias: bool = True, bias_grad_stride: int = 1, precision: str = "fp32"):
        super().__init__(nn.Conv2d(in_channels, reduce_channels, 1), nn.ReLU(inplace=True),
                         TwoMLPHead(reduce_channels * resolution * resolution, dim))
        # A fixed conv weight (its init, a random projection C -> c) needs no gradient through RoIAlign. The
        # bias is added after pooling (`from_reduced`); training it needs fc6's input gradient, which
        # `bias_grad_stride` > 1 computes for every stride-th RoI only (`SubsampledBiasLinear`).
        self[0].weight.requires_grad_(train_reduce)
        self[0].bias.requires_grad_(train_reduce or train_bias)
        self.bias_grad_stride = max(int(bias_grad_stride), 1)
        # on the CPU, "bf16": fc6 and fc7 multiply in bfloat16 (inputs, outputs and weights stay fp32; `_linear`);
        # "bf16-grad": only their weight gradients' products do (`BF16GradLinear`), the forward stays fp32
        self.precision = resolve_trunk_precision(precision)
        # passes so far that trained the bias on a subsample: its offset rotates with it (saved: a resumed run
        # takes the same rows as one that never stopped)
        self.register_buffer("bias_grad_calls", torch.zeros((), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "bias_grad_calls", torch.zeros((), dtype=torch.int64))  # older runs
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def from_reduced(self, pooled: Tensor) -> Tensor:
        """Trunk features Tensor[N, D] of pooled `reduce_maps` channels Tensor[N, c, R, R] (conv without its
        bias): the bias, the ReLU and the FCs."""
        head, bias = self[2], self[0].bias
        n, c, r, _ = pooled.shape
        w6 = head.fc6.weight
        if pooled.is_contiguous() or not pooled.permute(0, 2, 3, 1).is_contiguous():
            flat, bias_flat = pooled.reshape(n, -1), bias.repeat_interleave(r * r)
        else:
            # Channels-last (the CPU gather's layout, `models/roi_align.py`): fc6 reads each RoI's values as they
            # lie, (R, R, c), its weight permuted to match, instead of every RoI copied into (c, R, R) order.
            flat, bias_flat = pooled.permute(0, 2, 3, 1).reshape(n, -1), bias.repeat(r * r)
            w6 = w6.view(-1, c, r, r).permute(0, 2, 3, 1).reshape(head.fc6.out_features, -1)
        autocast = torch.is_autocast_enabled(pooled.device.type)
        mode = self.precision if pooled.device.type == "cpu" and not autocast else "fp32"
        if (self.bias_grad_stride > 1 and torch.is_grad_enabled() and bias.requires_grad
                and not pooled.requires_grad and not autocast):
            self.bias_grad_calls += 1
            x = SubsampledBiasLinear.apply(flat, bias_flat, w6, head.fc6.bias, self.bias_grad_stride,
                                           int(self.bias_grad_calls) % self.bias_grad_stride, mode)
        else:
            x = _linear(torch.relu(flat + bias_flat), w6, head.fc6.bias, mode)
        return F.relu(_linear(F.relu(x), head.fc7.weight, head.fc7.bias, mode))


def _linear(x: Tensor, weight: Tensor, bias: Tensor, mode: str = "fp32") -> Tensor:
    """F.linear in a `trunk_precision` mode: "fp32"; "bf16", its product in bfloat16 (x and the weight rounded to
    bfloat16, the product summed in fp32 by the GEMM and rounded once more, the bias added in fp32; autograd runs
    the backward's products in bfloat16 too and hands fp32 gradients to the fp32 weights); "bf16-grad", the fp32
    forward with the weight gradient's product in bfloat16 (`BF16GradLinear`)."""
    if mode == "bf16":
        return F.linear(x.bfloat16(), weight.bfloat16()).float() + bias
    if mode == "bf16-grad" and torch.is_grad_enabled() and weight.requires_grad:
        return BF16GradLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def _bf16_weight_grad(grad: Tensor, x_bf16: Tensor) -> Tensor:
    """dL/dW = grad^T x, Tensor[D, F], from grad Tensor[N, D] and x Tensor[N, F] rounded to bfloat16, summed
    over the N RoIs in fp32 by the GEMM and the sum rounded once to bfloat16 (~2.5x an fp32 product where the
    CPU has native bfloat16)."""
    return grad.bfloat16().t().mm(x_bf16).float()


class BF16GradLinear(torch.autograd.Function):
    """F.linear(x, weight, bias) in fp32, whose backward computes the weight gradient's product in bfloat16
    (`_bf16_weight_grad`); the input and bias gradients stay fp32. Every value the refiner computes is the fp32
    one; only the weights' update direction carries bfloat16's rounding (unbiased, ~0.4 % per product input,
    averaged over thousands of RoIs: far below the batch's own gradient noise)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x.bfloat16(), weight)
        return F.linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x_bf16, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_x = grad.mm(weight) if need[0] else None
        g_w = _bf16_weight_grad(grad, x_bf16) if need[1] else None
        return g_x, g_w, grad.sum(0) if need[2] else None


class SubsampledBiasLinear(torch.autograd.Function):
    """fc6(relu(pooled + bias)), Tensor[N, F] -> Tensor[N, D], with the bias's gradient from every stride-th RoI.

    The bias (c values, F = c*R*R entries of `bias_flat`) is all that trains below fc6 when the 1x1 conv's weight
    is fixed and the features detached; its exact gradient needs fc6's input gradient for every RoI, an
    [N, D] x [D, F] product as large as fc6's forward (~6,200 RoIs per BCCD step). The RoIs of one step come from
    the same few images, so the rows offset, offset + stride, ... (every bag's proposals in turn, `offset`
    rotating from call to call), scaled by N / their count, estimate that sum with an error far below the batch's
    own gradient noise, at 1/stride of the cost (docs/method.md §3.3). fc6's own gradients stay exact. `mode`:
    the products in the `trunk_precision` mode, as `_linear` computes them."""

    @staticmethod
    def forward(ctx, flat: Tensor, bias_flat: Tensor, weight: Tensor, fc_bias: Tensor, stride: int,
                offset: int, mode: str = "fp32") -> Tensor:
        x = torch.relu(flat + bias_flat)
        if mode == "bf16":  # as `_linear`: the products in bfloat16, x kept in it for the backward
            x, weight = x.bfloat16(), weight.bfloat16()
            y = F.linear(x, weight).float() + fc_bias
        else:  # bf16-grad: x kept in bfloat16 for the weight gradient; the sign (below) is bfloat16's as well
            y = F.linear(x, weight, fc_bias)
            x = x.bfloat16() if mode == "bf16-grad" else x
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.offset = stride, offset
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_out = grad.to(weight.dtype)
        g_w = None
        if need[2]:
            g_w = _bf16_weight_grad(grad, x) if x.dtype == torch.bfloat16 else g_out.t().mm(x)
        g_fb = grad.sum(0) if need[3] else None
        g_b = None
        if need[1]:
            rows = torch.arange(ctx.offset % max(len(x), 1), len(x), ctx.stride, device=x.device)
            g_x = g_out[rows].mm(weight).float() * (x[rows] > 0)
            g_b = g_x.sum(0) * (len(x) / max(len(rows), 1))
        return None, g_b, g_w, g_fb, None, None, None


def build_trunk(in_channels: int, resolution: int, dim: int, reduce_channels: int = 0,
                train_reduce: bool = True, train_bias: bool = True, bias_grad_stride: int = 1,
                precision: str = "fp32") -> nn.Module:
    if reduce_channels and reduce_channels > 0:
        return ReducedTwoMLPHead(in_channels, resolution, reduce_channels, dim, train_reduce, train_bias,
                                 bias_grad_stride, precision)
    return TwoMLPHead(in_channels * resolution * resolution, dim)


RELEASED_FAN_IN = (256 * 7 * 7, 1024)  # inputs of the released trunks' fc6 and fc7


def fan_in_init(trunks: list[nn.Module], std: float = 0.01) -> None:
    """fc6 and fc7 of each trunk ~ N(0, std * sqrt(F_released / F)), F their fan-in: the activation scale of
    the released 12544-1024-1024 trunks under N(0, std), at any width (a 1568-256-256 trunk: std x 2.83, x 2)."""
    for trunk in trunks:
        head = trunk[2] if isinstance(trunk, ReducedTwoMLPHead) else trunk
        for fc, ref in zip((head.fc6, head.fc7), RELEASED_FAN_IN):
            nn.init.normal_(fc.weight, std=std * math.sqrt(ref / fc.in_features))


@scoped("refiner.trunks")
def reduce_maps(features: dict[str, Tensor], names: list[str],
                trunks: list[ReducedTwoMLPHead]) -> list[dict[str, Tensor]]:
    """The FPN maps the pooler reads (those of `features` named in `names`, in `features` order, as
    MultiScaleRoIAlign filters them) through each trunk's 1x1 conv, without bias: one dict per trunk, per level
    Tensor[N, c, H_l, W_l]. One conv call per level for all trunks; each trunk then pools only its own maps
    (RoIAlign's backward, which trains the convs, costs in proportion to the channels pooled)."""
    weight = torch.cat([t[0].weight for t in trunks])
    sizes = [t[0].out_channels for t in trunks]
    split = {k: F.conv2d(v, weight).split(sizes, dim=1) for k, v in features.items() if k in names}
    return [{k: parts[i].contiguous() for k, parts in split.items()} for i in range(len(trunks))]


@scoped("refiner.trunks")
def embed(trunk: nn.Module, pooled: Tensor, reduced: bool) -> Tensor:
    """Trunk features Tensor[N, D] of pooled RoI features: the whole trunk on Tensor[N, C, R, R], or
    (`reduced`) a ReducedTwoMLPHead's `from_reduced` on its own pooled `reduce_maps` Tensor[N, c, R, R]."""
    return trunk.from_reduced(pooled) if reduced else trunk(pooled)


@scoped("refiner.roi_align")
def pool(pooler: nn.Module, features: dict[str, Tensor], image_sizes: list[tuple[int, int]],
         rois: list[Tensor]) -> Tensor:
    """One RoIAlign call. rois: per image Tensor[n_i, 4]. Returns Tensor[sum n_i, C', R, R]."""
    ref = next(iter(features.values()))
    # keep fp32 boxes under autocast (torchvision's roi_align casts itself); outside it the kernel wants the
    # feature dtype
    dtype = torch.float32 if torch.is_autocast_enabled(ref.device.type) else ref.dtype
    return pooler(features, [r.to(device=ref.device, dtype=dtype) for r in rois], image_sizes)
