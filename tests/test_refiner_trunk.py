"""Reduce, then pool (models/ssddet/trunk.py): the reduced trunks' 1x1 convs run once on the FPN maps, and the
result equals the per-RoI conv path up to float rounding, for RoIs inside, across and outside the map."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import MultiScaleRoIAlign

from ssddet.config import SSDDetConfig
from ssddet.models.ssddet import trunk as trunk_module
from ssddet.models.ssddet.refiner import SSDDetRefiner
from ssddet.models.ssddet.trunk import ReducedTwoMLPHead, SubsampledBiasLinear, embed, pool, reduce_maps

C, R, K = 16, 5, 3
NAMES = ["0", "1", "2", "3"]
SIZES = [(64, 64), (64, 48)]
BOXES = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [36.0, 10.0, 62.0, 30.0], [0.0, 40.0, 14.0, 63.0]]),
         torch.tensor([[10.0, 12.0, 50.0, 44.0]])]
LABELS = [torch.tensor([1, 2, 3]), torch.tensor([2])]


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {str(i): torch.randn(2, C, 64 // 2 ** (i + 2), 64 // 2 ** (i + 2), generator=g) for i in range(4)}


@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_reduce_then_pool_equals_pool_then_reduce(sampling_ratio):
    torch.manual_seed(0)
    pooler = MultiScaleRoIAlign(NAMES, R, sampling_ratio)
    a, b = ReducedTwoMLPHead(C, R, 4, 8), ReducedTwoMLPHead(C, R, 6, 8)
    for t in (a, b):
        torch.nn.init.normal_(t[0].bias)  # a non-zero bias: out-of-map samples must get it on both paths
    feats = _features()
    # inside, across the border, wholly outside the image, and a sub-pixel box
    rois = [torch.tensor([[2.0, 3.0, 40.0, 50.0], [-20.0, -10.0, 12.0, 9.0], [70.0, 70.0, 120.0, 90.0]]),
            torch.tensor([[10.0, 10.0, 10.5, 10.4], [0.0, 0.0, 47.0, 63.0]])]
    ref_a, ref_b = (embed(t, pool(pooler, feats, SIZES, rois), False) for t in (a, b))  # conv per RoI bin
    maps = reduce_maps(feats, NAMES, [a, b])
    assert [[m.shape[1] for m in d.values()] for d in maps] == [[4] * 4, [6] * 4]
    pooled = [pool(pooler, d, SIZES, rois) for d in maps]
    assert [p.shape for p in pooled] == [(5, 4, R, R), (5, 6, R, R)]
    torch.testing.assert_close(embed(a, pooled[0], True), ref_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embed(b, pooled[1], True), ref_b, rtol=1e-5, atol=1e-6)

def _refiner(reduced: bool):
    cfg = SSDDetConfig(trunk_dim=16, trunk_reduce=4, num_negatives=20, max_objects_per_image=0,
                       trunk_reduce_train=True, trunk_precision="fp32")  # the conv weight gradients are compared
    ref = SSDDetRefiner(cfg, K, MultiScaleRoIAlign(NAMES, R, 1), in_channels=C, resolution=R)
    for m in ref.modules():  # N(0, 0.01) makes every output nearly equal: a weak check; use larger weights
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            torch.nn.init.normal_(m.weight, std=0.2)
            torch.nn.init.normal_(m.bias, std=0.1)
    ref.reduced = reduced
    return ref


def test_refiner_reduced_path_matches_per_roi_path():
    feats, outs = _features(1), []
    for reduced in (True, False):
        torch.manual_seed(0)
        ref = _refiner(reduced).manual_seed(0).train()
        out = ref(feats, SIZES, BOXES, LABELS, progress=0.5)
        total = sum(out.losses.values())
        total.backward()
        grad = ref.trunk[0].weight.grad.clone()
        outs.append((out, grad))
    (a, ga), (b, gb) = outs
    for ra, rb in zip(a.refined, b.refined):
        torch.testing.assert_close(ra, rb, rtol=1e-4, atol=1e-3)
    for name in a.losses:
        torch.testing.assert_close(a.losses[name], b.losses[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-5)


def test_fan_in_init_scales_trunk_fcs_only():
    torch.manual_seed(0)
    kw = dict(trunk_dim=256, trunk_reduce=32, num_negatives=20)
    released = SSDDetRefiner(SSDDetConfig(**kw), K, MultiScaleRoIAlign(NAMES, 7, 1), in_channels=256)
    fan_in = SSDDetRefiner(SSDDetConfig(trunk_init="fan-in", **kw), K, MultiScaleRoIAlign(NAMES, 7, 1),
                           in_channels=256)
    for ref, want6, want7 in ((released, 0.01, 0.01), (fan_in, 0.01 * 8 ** 0.5, 0.02)):
        for trunk in (ref.trunk[2], ref.sisd.trunk[2]):  # 1568 -> 256 -> 256: fc6 x sqrt(12544/1568), fc7 x 2
            assert trunk.fc6.weight.std().item() == pytest.approx(want6, rel=0.02)
            assert trunk.fc7.weight.std().item() == pytest.approx(want7, rel=0.02)
        assert ref.cls1.weight.std().item() == pytest.approx(0.01, rel=0.05)  # heads keep N(0, 0.01)


def test_trunk_init_is_validated():
    from ssddet.config import Config
    from ssddet.config_overrides import validate
    from ssddet.errors import UserError

    cfg = Config()
    cfg.ssddet.trunk_init = "kaiming"
    with pytest.raises(UserError, match="trunk_init"):
        validate(cfg, resume=False, output_given=True)


def test_fixed_reduce_conv_trains_everything_else_and_skips_roialign_backward(monkeypatch):
    """trunk_reduce_train=false: the same function at init (the conv keeps its init weights), no gradient
    reaches the conv weights or flows back through RoIAlign, the FCs still get gradients; the bias trains with
    trunk_bias_train=true, and without it fc6 gets no input gradient to compute."""
    feats = _features(2)
    outs = {}
    for train, bias in ((True, True), (False, True), (False, False)):
        torch.manual_seed(0)
        cfg = SSDDetConfig(trunk_dim=16, trunk_reduce=4, num_negatives=20, max_objects_per_image=0,
                           trunk_reduce_train=train, trunk_bias_train=bias, trunk_bias_grad_stride=1,
                           trunk_precision="fp32")  # F.linear itself, which the test watches
        ref = SSDDetRefiner(cfg, K, MultiScaleRoIAlign(NAMES, R, 1), in_channels=C, resolution=R)
        ref.manual_seed(0).train()
        trunks = ref._trunks()
        assert [t[0].weight.requires_grad for t in trunks] == [train] * 2
        assert [t[0].bias.requires_grad for t in trunks] == [bias] * 2
        maps, _ = ref._maps(feats)
        assert all(m.requires_grad == train for m in maps.values())  # nothing for RoIAlign to scatter back
        fc6_inputs: list[bool] = []

        def linear(x, *args, seen=fc6_inputs):  # fc6 and fc7 of the passes that train, not the keep step's
            if torch.is_grad_enabled() and x.shape[1] == 4 * R * R:
                seen.append(x.requires_grad)
            return F.linear(x, *args)
        monkeypatch.setattr(trunk_module, "F", SimpleNamespace(**{**vars(F), "linear": linear}))
        out = ref(feats, SIZES, BOXES, LABELS, progress=0.5)
        monkeypatch.undo()
        assert set(fc6_inputs) == {bias}
        sum(out.losses.values()).backward()
        for t in trunks:
            assert (t[0].weight.grad is not None) == train
            assert (t[0].bias.grad is not None and t[0].bias.grad.abs().sum() > 0) == bias
            assert t[2].fc6.weight.grad.abs().sum() > 0
        outs[(train, bias)] = out
    for key in ((False, True), (False, False)):
        for a, b in zip(outs[(True, True)].refined, outs[key].refined):
            torch.testing.assert_close(a, b)
        for name in outs[(True, True)].losses:
            torch.testing.assert_close(outs[(True, True)].losses[name], outs[key].losses[name])


def test_channels_last_pooled_features_give_the_same_trunk_output_and_gradients():
    """The CPU gather pools channels-last; `from_reduced` then feeds fc6 the rows as they lie with its weight
    permuted: the same features and the same gradients (fc6, fc7, the bias, the input) as in NCHW order."""
    torch.manual_seed(0)
    trunk = ReducedTwoMLPHead(8, 3, 4, 6)
    nchw = torch.randn(5, 4, 3, 3)
    grads = []
    for x in (nchw.clone(), nchw.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)):
        assert x.is_contiguous() == (len(grads) == 0)
        x.requires_grad_(True)
        trunk.zero_grad()
        out = trunk.from_reduced(x)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        grads.append([out.detach(), x.grad, trunk[0].bias.grad, trunk[2].fc6.weight.grad, trunk[2].fc7.weight.grad])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


def _bias_grads(stride: int, channels_last: bool, offsets=(None,)):
    """Gradients (bias, fc6 weight, fc6 bias, fc7 weight) of a fixed loss of a fixed-conv trunk on 11 RoIs, one
    set per call (`offsets`: the `bias_grad_calls` counter before it, i.e. which rows train the bias)."""
    torch.manual_seed(0)
    trunk = ReducedTwoMLPHead(8, 3, 4, 6, train_reduce=False, train_bias=True, bias_grad_stride=stride)
    torch.nn.init.normal_(trunk[0].bias)
    pooled = torch.randn(11, 4, 3, 3)
    if channels_last:
        pooled = pooled.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    out = []
    for calls in offsets:
        if calls is not None:
            trunk.bias_grad_calls.fill_(calls)
        trunk.zero_grad()
        y = trunk.from_reduced(pooled)
        (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
        out.append([trunk[0].bias.grad.clone(), trunk[2].fc6.weight.grad.clone(), trunk[2].fc6.bias.grad.clone(),
                    trunk[2].fc7.weight.grad.clone()])
    return out


@pytest.mark.parametrize("channels_last", [False, True])
def test_subsampled_bias_gradient_is_exact_for_fc6_and_unbiased_for_the_bias(channels_last):
    """trunk_bias_grad_stride=3: the forward and fc6/fc7's gradients equal the exact ones; the bias's gradient
    comes from every third RoI (scaled by 11/4 or 11/3), differs from the exact one, and its mean over the three
    offsets weighted by the rows each one takes is the exact gradient."""
    (exact,) = _bias_grads(1, channels_last)
    sub = _bias_grads(3, channels_last, offsets=(2, 0, 1))  # the call counter +1: offsets 0, 1, 2
    for g in sub:
        for a, b in zip(exact[1:], g[1:]):
            torch.testing.assert_close(a, b)
        assert not torch.allclose(g[0], exact[0])
    rows = torch.tensor([4.0, 4.0, 3.0])  # offsets 0, 1, 2 of 11 rows: 4, 4 and 3 rows
    mean = sum(g[0] * n / 11 for g, n in zip(sub, rows))
    torch.testing.assert_close(mean, exact[0])


def test_subsampled_bias_linear_at_stride_one_equals_autograd():
    """Stride 1 through the Function: the same output and the same gradients, bit for bit, as relu + F.linear."""
    torch.manual_seed(0)
    flat, b, w, fb = torch.randn(7, 12), torch.randn(12), torch.randn(5, 12), torch.randn(5)
    grads = []
    for use_fn in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (b, w, fb)]
        y = (SubsampledBiasLinear.apply(flat, *leaves, 1, 0) if use_fn
             else F.linear(torch.relu(flat + leaves[0]), leaves[1], leaves[2]))
        (y * torch.arange(35.0).view(7, 5)).sum().backward()
        grads.append([y.detach()] + [t.grad for t in leaves])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


def test_subsampled_bias_gradient_only_where_the_bias_is_all_that_trains():
    """The exact path (no Function) where the pooled features need a gradient (the conv trains, or the features
    are not detached), and under no_grad; the Function where only the bias trains below fc6."""
    trunk = ReducedTwoMLPHead(8, 3, 4, 6, train_reduce=False, train_bias=True, bias_grad_stride=4)
    pooled = torch.randn(5, 4, 3, 3)
    name = SubsampledBiasLinear.__name__
    assert any(name in n for n in _graph_names(trunk.from_reduced(pooled)))
    assert not any(name in n for n in _graph_names(trunk.from_reduced(pooled.clone().requires_grad_(True))))
    trunk.bias_grad_stride = 1
    assert not any(name in n for n in _graph_names(trunk.from_reduced(pooled)))
    with torch.no_grad():
        assert trunk.from_reduced(pooled).grad_fn is None


def _graph_names(t: torch.Tensor) -> list[str]:
    """The names of every node of t's autograd graph."""
    seen, todo, names = set(), [t.grad_fn], []
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names
