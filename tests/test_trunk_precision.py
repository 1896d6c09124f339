"""`ssddet.trunk_precision`: the refiner's trunk FCs multiply in bfloat16 on a CPU that does so natively
(models/ssddet/trunk.py: `_linear`, `SubsampledBiasLinear`); "auto" is resolved when a run starts."""

import pytest
import torch

from ssddet import config as config_module
from ssddet.cli import build_parser
from ssddet.config import SSDDetConfig, resolve_trunk_precision
from ssddet.config_overrides import config_from_args
from ssddet.engine.device import trains_on_cpu
from ssddet.errors import UserError
from ssddet.models.ssddet.trunk import ReducedTwoMLPHead, SubsampledBiasLinear


def _trunk(precision: str, stride: int = 1) -> ReducedTwoMLPHead:
    torch.manual_seed(0)
    trunk = ReducedTwoMLPHead(8, 3, 4, 6, train_reduce=False, train_bias=True, bias_grad_stride=stride,
                              precision=precision)
    torch.nn.init.normal_(trunk[0].bias)
    return trunk


def _run(trunk: ReducedTwoMLPHead, pooled: torch.Tensor) -> list[torch.Tensor]:
    """Output and every trained gradient of a fixed loss."""
    trunk.zero_grad()
    y = trunk.from_reduced(pooled)
    (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
    head = trunk[2]
    return [y.detach(), trunk[0].bias.grad, head.fc6.weight.grad, head.fc6.bias.grad, head.fc7.weight.grad]


@pytest.mark.parametrize("stride", [1, 4])
def test_bf16_trunk_matches_fp32_to_bf16_rounding_with_fp32_gradients(stride):
    """The same function and gradients as fp32 up to bfloat16's rounding (8 bits of mantissa: ~0.4 % per
    product input), every gradient fp32 for the fp32 weights, and measurably not the fp32 computation."""
    pooled = torch.randn(64, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    exact, bf16 = _run(_trunk("fp32", stride), pooled), _run(_trunk("bf16", stride), pooled)
    for a, b in zip(exact, bf16):
        assert b.dtype == torch.float32
        scale = a.abs().max()
        assert (a - b).abs().max() <= 0.03 * scale
    assert not torch.equal(exact[0], bf16[0])


def test_subsampled_bias_linear_bf16_rounds_only_the_products():
    """The Function in bfloat16 equals relu + F.linear on inputs rounded to bfloat16, the bias added in fp32."""
    torch.manual_seed(0)
    flat, b, w, fb = torch.randn(16, 12), torch.randn(12), torch.randn(5, 12), torch.randn(5)
    y = SubsampledBiasLinear.apply(flat, b, w, fb, 1, 0, "bf16")
    x = torch.relu(flat + b).bfloat16()
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w.bfloat16()).float() + fb)


@pytest.mark.parametrize("stride", [1, 4])
def test_bf16_grad_trunk_computes_in_fp32_and_rounds_only_the_weight_gradients(stride):
    """bf16-grad: the output and the input-side gradients (the conv bias's, the FC biases') are fp32's; the FC
    weights' gradients are fp32's up to bfloat16's rounding of their products, and measurably not fp32's."""
    pooled = torch.randn(64, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    exact, grad = _run(_trunk("fp32", stride), pooled), _run(_trunk("bf16-grad", stride), pooled)
    assert torch.equal(exact[0], grad[0])
    for a, b in zip(exact[1:4:2], grad[1:4:2]):  # conv bias, fc6 bias
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in (exact[2], grad[2]), (exact[4], grad[4]):  # fc6, fc7 weights
        assert b.dtype == torch.float32 and not torch.equal(a, b)
        assert (a - b).abs().max() <= 0.03 * a.abs().max()
    torch.testing.assert_close(grad[2], _bf16_product_reference(pooled, _trunk("fp32", stride)))


def _bf16_product_reference(pooled: torch.Tensor, trunk: ReducedTwoMLPHead) -> torch.Tensor:
    """fc6's weight gradient of `_run`'s loss as grad^T x with both rounded to bfloat16, summed in fp32 and the
    sum rounded to bfloat16 (a bfloat16 GEMM's output)."""
    head = trunk[2]
    x = torch.relu(pooled.reshape(len(pooled), -1) + trunk[0].bias.repeat_interleave(9)).detach()
    h6 = head.fc6(x).detach().requires_grad_(True)
    y = torch.relu(head.fc7(torch.relu(h6)))
    (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
    return (h6.grad.bfloat16().float().t() @ x.bfloat16().float()).bfloat16().float()


def test_fp32_trunk_is_unchanged_by_the_field():
    """trunk_precision=fp32 is the computation of before the field, bit for bit."""
    pooled = torch.randn(20, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    trunk = _trunk("fp32")
    head = trunk[2]
    flat = pooled.reshape(20, -1) + trunk[0].bias.repeat_interleave(9)
    ref = torch.relu(head.fc7(torch.relu(head.fc6(torch.relu(flat)))))
    assert torch.equal(trunk.from_reduced(pooled), ref)


@pytest.mark.parametrize("native, expected", [(True, "bf16-grad"), (False, "fp32")])
def test_auto_resolves_on_the_cpu_and_config_records_it(monkeypatch, native, expected):
    monkeypatch.setattr(config_module, "native_bf16", lambda: native)
    assert resolve_trunk_precision("auto") == expected
    assert resolve_trunk_precision("auto", on_cpu=False) == "fp32"
    for value in ("fp32", "bf16", "bf16-grad"):
        assert resolve_trunk_precision(value) == resolve_trunk_precision(value, on_cpu=False) == value
    assert trains_on_cpu("cpu") and not trains_on_cpu("cuda:1") and not trains_on_cpu("tpu")
    assert trains_on_cpu("auto") is not torch.cuda.is_available()
    args = ["train", "--data", "d", "--device", "cpu"]
    assert config_from_args(build_parser().parse_args(args)).ssddet.trunk_precision == expected  # the default
    cfg = config_from_args(build_parser().parse_args(args[:3] + ["--device", "cuda"]))
    assert cfg.ssddet.trunk_precision == "fp32"  # on a GPU train.amp decides
    assert ReducedTwoMLPHead(8, 3, 4, 6, precision="auto").precision == expected


def test_unknown_precision_is_a_user_error():
    args = build_parser().parse_args(["train", "--data", "d", "--set", "ssddet.trunk_precision=fp16"])
    with pytest.raises(UserError, match="trunk_precision must be one of auto, bf16, bf16-grad, fp32"):
        config_from_args(args)
    assert SSDDetConfig().trunk_precision == "auto"  # bf16-grad where the CPU has native bfloat16 (benchmarks.md)
