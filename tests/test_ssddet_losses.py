"""Hand-computed values for the SSD-Det refiner's MIL, SPSD, SISD losses and the top-k merge."""

import math

import torch

from ssddet.models.ssddet.merge import topk_merge
from ssddet.models.ssddet.mil import (
    masked_bag_softmax,
    negative_loss,
    stage1_bag_scores,
    stage1_loss,
    stage2_bag_scores,
    stage2_loss,
)
from ssddet.models.ssddet.sisd import SISDHead, sisd_loss, sisd_targets, spatial_confidence
from ssddet.models.ssddet.spsd import SPSDRegressor

L3, L2 = math.log(3.0), math.log(2.0)


def test_stage1_mil_hand_computed():
    # M=1, P=2, K=2 (K+1=3 columns: background, class 1, class 2)
    cls = torch.tensor([[[0.0, 0.0, 0.0], [0.0, L2, 0.0]]])  # softmax: [1/3]*3 and [1/4, 1/2, 1/4]
    ins = torch.tensor(
        [[[0.0, 0.0, 0.0], [L3, 0.0, 0.0]]]
    )  # over the bag: col 0 [1/4, 3/4], others [1/2, 1/2]
    bag, _, _ = stage1_bag_scores(cls, ins, torch.tensor([[True, True]]))
    expect = torch.tensor([[1 / 12 + 3 / 16, (1 / 3 + 1 / 2) / 2, (1 / 3 + 1 / 4) / 2]])
    torch.testing.assert_close(bag, expect)
    loss = stage1_loss(bag, torch.tensor([1]))
    want = -math.log(1 - 13 / 48) - math.log(5 / 12) - math.log(1 - 7 / 24)
    assert abs(loss.item() - want) < 1e-5
    # proposal 1 invalid: the instance softmax renormalises onto proposal 0 alone
    bag, _, _ = stage1_bag_scores(cls, ins, torch.tensor([[True, False]]))
    torch.testing.assert_close(bag, torch.full((1, 3), 1 / 3))
    loss = stage1_loss(bag, torch.tensor([1]))
    assert abs(loss.item() - (L3 + 2 * math.log(1.5))) < 1e-5
    # objects without a valid proposal are excluded from the sum and from the divisor
    bag2, _, _ = stage1_bag_scores(
        torch.cat([cls, cls]), torch.cat([ins, ins]), torch.tensor([[True, False], [False, False]])
    )
    assert torch.equal(bag2[1], torch.zeros(3))
    loss2 = stage1_loss(bag2, torch.tensor([1, 2]), torch.tensor([True, False]))
    assert abs(loss2.item() - loss.item()) < 1e-6


def test_masked_softmax_all_invalid_has_finite_gradient():
    x = torch.randn(2, 3, 4, requires_grad=True)
    s = masked_bag_softmax(x, torch.tensor([[True, False, True], [False, False, False]]))
    assert torch.equal(s[1], torch.zeros(3, 4)) and torch.allclose(s[0].sum(0), torch.ones(4))
    (s * torch.randn_like(s)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_stage2_mil_and_negatives_hand_computed():
    cls = torch.tensor([[[0.0, 0.0], [L3, -L3]]])  # sigmoid: [.5, .5] and [.75, .25]
    ins = torch.zeros(1, 2, 2)  # uniform over the bag
    bag, _, _ = stage2_bag_scores(cls, ins, None)
    torch.testing.assert_close(bag, torch.tensor([[0.625, 0.375]]))
    per = (0.625 - 1) ** 2 * -math.log(0.625 + 1e-6) + 0.375**2 * -math.log(1 - 0.375 + 1e-6)
    loss = stage2_loss(bag, torch.tensor([1]), torch.tensor([0.5]))  # label 1 -> column 0
    assert abs(loss.item() - 0.5 * per) < 1e-6
    # two objects: omega-weighted sum / M
    bag2 = torch.tensor([[0.625, 0.375], [0.2, 0.9]])
    other = 0.2**2 * -math.log(1 - 0.2 + 1e-6) + (0.9 - 1) ** 2 * -math.log(0.9 + 1e-6)
    loss2 = stage2_loss(bag2, torch.tensor([1, 2]), torch.tensor([0.5, 1.0]))
    assert abs(loss2.item() - (0.5 * per + other) / 2) < 1e-6

    neg = torch.tensor([[0.0, L3]])  # sigmoid [.5, .75]
    want = (0.25 * -math.log(0.5 + 1e-6) + 0.5625 * -math.log(0.25 + 1e-6)) / 2 * 0.4
    got = negative_loss(neg, num_objects=2, beta=torch.tensor(0.4))
    assert abs(got.item() - want) < 1e-6
    masked = negative_loss(torch.cat([neg, neg]), 2, torch.tensor(0.4), torch.tensor([True, False]))
    assert abs(masked.item() - want) < 1e-6


def test_mil_under_autocast_is_fp32():
    cls = torch.randn(3, 5, 4).bfloat16()
    ins = torch.randn(3, 5, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bag, _, _ = stage1_bag_scores(cls, ins, torch.ones(3, 5, dtype=torch.bool))
        loss = stage1_loss(bag, torch.tensor([1, 2, 3]))
    assert bag.dtype == torch.float32 and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_topk_merge_weighted_mean():
    bag = torch.tensor(
        [[[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 12.0, 12.0], [4.0, 0.0, 8.0, 6.0], [9.0, 9.0, 9.5, 9.5]]]
    )
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.0]])
    boxes, weight = topk_merge(bag, scores, k=2)
    expect = (5 * bag[0, 1] + 2 * bag[0, 2]) / 7
    torch.testing.assert_close(boxes[0], expect)
    torch.testing.assert_close(weight, torch.tensor([0.8]))  # full-bag score sum, not just the top k
    # k larger than P merges the whole bag; all-zero scores fall back to the first (unshifted) proposal
    boxes, _ = topk_merge(bag, scores, k=10)
    torch.testing.assert_close(boxes[0], (bag[0] * scores[0, :, None]).sum(0) / 0.8)
    boxes, weight = topk_merge(bag, torch.zeros(1, 4), k=3)
    torch.testing.assert_close(boxes[0], bag[0, 0])
    assert weight.item() == 0.0


def test_spsd_loss_and_decode():
    reg = SPSDRegressor(8)
    proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 10.0]]])
    target = torch.tensor([[1.0, 0.0, 11.0, 10.0]])
    deltas = torch.zeros(1, 2, 4)
    # proposal 0: dx = 10 * 1/10 = 1, rest 0; proposal 1: dx = 10 * (6-10)/20 = -2, dw = 5 * log(10/20)
    want = (1.0 + 2.0 + 5 * math.log(2.0)) / 2
    assert abs(reg.loss(deltas, proposals, target).item() - want) < 1e-5
    assert abs(reg.loss(deltas, proposals, target, torch.tensor([0.5])).item() - 0.5 * want) < 1e-5
    exact = reg.coder.encode_single(target.expand(2, 4), proposals[0]).reshape(1, 2, 4)
    assert reg.loss(exact, proposals, target).item() < 1e-5
    torch.testing.assert_close(reg.decode(exact, proposals), target[:, None].expand(1, 2, 4))
    # decoding clamps the log-size delta and never passes gradient
    huge = torch.tensor([[[0.0, 0.0, 100.0, 100.0]]], requires_grad=True)
    out = reg.decode(huge, proposals[:, :1])
    assert not out.requires_grad and torch.isfinite(out).all()
    assert abs((out[0, 0, 2] - out[0, 0, 0]).item() - 10 * 1000 / 16) < 1e-2


def test_sisd_targets_confidence_and_loss():
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    bag = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 20.0]]])
    torch.testing.assert_close(sisd_targets(bag, ref), torch.tensor([[1.0, -1.0, 0.0]]))
    torch.testing.assert_close(
        spatial_confidence(torch.tensor([[-1.0, 0.0, 1.0], [0.2, 0.6, -0.2]])),
        torch.tensor([[0.0, 0.5, 1.0], [0.5, 1.0, 0.0]]),
    )
    torch.testing.assert_close(spatial_confidence(torch.full((1, 3), 0.3)), torch.ones(1, 3))  # max = min
    loss = sisd_loss(torch.tensor([[0.0, 2.0]]), torch.tensor([[0.5, 0.0]]))
    assert abs(loss.item() - (0.5 * 0.25 + 1.5) / 2) < 1e-6
    # ORE adds the (not detached) bag-mean feature: a change in one proposal moves every prediction of its bag
    torch.manual_seed(0)
    head = SISDHead(in_features=12, dim=32, ore=True)
    x = torch.randn(2 * 3, 3, 2, 2)
    u = head(x, num_objects=2)
    assert u.shape == (2, 3)
    x2 = x.clone()
    x2[0] += 1.0
    u2 = head(x2, num_objects=2)
    assert not torch.allclose(u[0, 1:], u2[0, 1:]) and torch.allclose(u[1], u2[1])
    head.ore = False
    u3 = head(x2, num_objects=2)
    assert torch.allclose(head(x, 2)[0, 1:], u3[0, 1:])
