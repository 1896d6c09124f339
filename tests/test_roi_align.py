"""RoIAlign as a gather (models/roi_align.py) against torchvision's own kernel."""
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from ssddet.config import ModelConfig
from ssddet.models.detector import build_detector
from ssddet.models.roi_align import FastGradMultiScaleRoIAlign, fast_grad_pool, roi_align, sampling_taps


def _rois(n, images, extent, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * extent * 1.2 - extent * 0.1  # some boxes leave the map
    wh = torch.rand(n, 2, generator=g) ** 2 * extent * 0.8 + 0.2  # some thinner than a map cell
    b = torch.randint(0, images, (n, 1), generator=g).to(xy.dtype)
    return torch.cat([b, xy, xy + wh], 1).double()


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("hw", [(9, 13), (1, 1), (4, 2)])
def test_gradient_equals_torchvision(sampling_ratio, aligned, hw):
    torch.manual_seed(0)
    x = torch.randn(2, 5, *hw, dtype=torch.float64, requires_grad=True)
    rois = _rois(40, 2, 8 * max(hw))
    ref = tv_roi_align(x, rois, (3, 4), 0.125, sampling_ratio, aligned)
    out = roi_align(x, rois, (3, 4), 0.125, sampling_ratio, aligned)
    assert torch.allclose(out, ref, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(roi_align(x.detach(), rois, (3, 4), 0.125, sampling_ratio, aligned), ref, atol=1e-12)
    g = torch.randn_like(ref)
    (want,) = torch.autograd.grad(ref, x, g)
    (got,) = torch.autograd.grad(out, x, g)
    assert torch.allclose(got, want, atol=1e-12)


def test_taps_on_a_hand_built_box():
    # one bin, one sample at (y, x) = (1.5, 2.75) on a 4x4 map: taps (1,2) .125, (1,3) .375, (2,2) .125, (2,3) .375
    rois = torch.tensor([[0.0, 2.0, 1.0, 3.5, 2.0]])
    col, w = sampling_taps(rois, 4, 4, (1, 1), 1.0, 1)
    dense = torch.zeros(16).index_add_(0, col, w).view(4, 4)
    want = torch.zeros(4, 4)
    want[1, 2], want[1, 3], want[2, 2], want[2, 3] = 0.125, 0.375, 0.125, 0.375
    assert torch.allclose(dense, want)
    # narrower than a map cell: the legacy kernel widens it to one cell, so the sample sits at x = 2.5
    col, w = sampling_taps(torch.tensor([[0.0, 2.0, 1.0, 2.2, 2.0]]), 4, 4, (1, 1), 1.0, 1)
    assert torch.allclose(torch.zeros(16).index_add_(0, col, w).view(4, 4)[1:3, 2:4], torch.full((2, 2), 0.25))


def test_taps_outside_the_map_and_at_its_edge():
    # a sample beyond -1 contributes nothing; one past the last row is clamped onto it with weight 1
    far = sampling_taps(torch.tensor([[0.0, -5.0, -5.0, -3.0, -3.0]]), 4, 4, (1, 1), 1.0, 1)[1]
    assert float(far.abs().sum()) == 0.0
    col, w = sampling_taps(torch.tensor([[0.0, 3.2, 3.2, 3.8, 3.8]]), 4, 4, (1, 1), 1.0, 1)
    assert torch.allclose(torch.zeros(16).index_add_(0, col, w)[15], torch.tensor(1.0))


def test_multiscale_pooler_matches_torchvision():
    torch.manual_seed(1)
    feats = {str(i): torch.randn(2, 4, 32 >> i, 48 >> i, requires_grad=True) for i in range(4)}
    boxes = [_rois(30, 1, 200, seed)[:, 1:].float().clamp(0, 250) for seed in (2, 3)]
    boxes = [torch.cat([b[:, :2], torch.maximum(b[:, 2:], b[:, :2] + 1)], 1) for b in boxes]
    shapes = [(256, 384), (250, 380)]
    ref_pool = MultiScaleRoIAlign(list(feats), 7, 2)
    pool = fast_grad_pool(ref_pool)
    assert isinstance(pool, FastGradMultiScaleRoIAlign) and fast_grad_pool(pool) is pool
    ref, out = ref_pool(feats, boxes, shapes), pool(feats, boxes, shapes)
    assert torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, list(feats.values()), g)
    got = torch.autograd.grad(out, list(feats.values()), g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad():  # inference takes the gather too (evaluation, the export's and the mirror's passes)
        fast = pool(feats, boxes, shapes)
    assert not torch.equal(fast, ref) and torch.allclose(fast, ref, atol=1e-5)


def test_no_rois_gives_a_zero_gradient():
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5), (2, 2), 1.0, 2)
    out.sum().backward()
    assert out.shape == (0, 3, 2, 2) and torch.equal(x.grad, torch.zeros_like(x))


def test_detector_uses_the_pooler_and_keeps_its_state_dict():
    cfg = ModelConfig(backbone="mobilenet_v3_large_fpn", pretrained="none", min_size=64, max_size=64)
    model = build_detector(cfg, 2)
    assert isinstance(model.roi_heads.box_roi_pool, FastGradMultiScaleRoIAlign)
    assert not any("box_roi_pool" in k for k in model.state_dict())


def test_forward_without_gradient_in_grad_mode():
    # the refiner pools detached maps while training: the gather forward alone, no graph
    x = torch.randn(2, 3, 12, 10)
    rois = _rois(25, 2, 80).float()
    out = roi_align(x, rois, (7, 7), 0.125, 1)
    # channels-last, a view of the gather's rows (no copy into NCHW order)
    assert not out.requires_grad and out.permute(0, 2, 3, 1).is_contiguous()
    assert torch.allclose(out, tv_roi_align(x, rois, (7, 7), 0.125, 1), atol=1e-5)


def test_multiscale_pooler_without_rois():
    feats = {str(i): torch.randn(1, 2, 16 >> i, 16 >> i, requires_grad=True) for i in range(2)}
    out = fast_grad_pool(MultiScaleRoIAlign(list(feats), 3, 2))(feats, [torch.zeros(0, 4)], [(64, 64)])
    out.sum().backward()
    assert out.shape == (0, 2, 3, 3) and all(torch.equal(f.grad, torch.zeros_like(f)) for f in feats.values())
