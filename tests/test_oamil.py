"""OA-MIL RoI head: hand-checked helpers + tiny torchvision Faster R-CNN forward/backward (CPU, seconds)."""
import math

import pytest
import torch
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.roi_heads import RoIHeads

from ssddet.config import OAMILConfig
from ssddet.models import oamil as oamil_mod
from ssddet.models.oamil import (
    OAMILRoIHeads,
    bag_best,
    class_balanced_score,
    group_bags,
    oamil_loss,
    refine_boxes,
)
from ssddet.models.rcnn_head import XYXYBoxCoder, make_box_coder, rcnn_losses


# --------------------------------------------------------------------------------------------- helpers
def test_group_bags_by_gt_index():
    # image 0 has 3 GTs, image 1 has 2; GT 0 of image 1 is global index 3
    labels = [torch.tensor([1, 0, 2, 1, 0]), torch.tensor([3, 3, 0])]
    matched = [torch.tensor([0, 0, 1, 0, 2]), torch.tensor([1, 0, 1])]
    bags = group_bags(labels, matched, [3, 2])
    assert bags.roi_idx.tolist() == [0, 2, 3, 5, 6]
    assert bags.gt_idx.tolist() == [0, 1, 3, 4]
    assert bags.bag.tolist() == [0, 1, 0, 3, 2]
    assert bags.per_image == [3, 2]
    assert bags.num == 4


def test_group_bags_empty_and_no_positive_images():
    labels = [torch.zeros(4, dtype=torch.long), torch.tensor([0, 2])]
    matched = [torch.zeros(4, dtype=torch.long), torch.tensor([0, 0])]
    bags = group_bags(labels, matched, [0, 1])
    assert bags.roi_idx.tolist() == [5] and bags.gt_idx.tolist() == [0] and bags.per_image == [0, 1]
    none = group_bags([torch.zeros(3, dtype=torch.long)], [torch.zeros(3, dtype=torch.long)], [0])
    assert none.num == 0 and none.roi_idx.numel() == 0


def test_bag_best_picks_max_first_on_ties():
    scores = torch.tensor([0.1, 0.5, 0.3, 0.5, 0.7, 0.7])
    bag = torch.tensor([0, 0, 1, 1, 2, 2])
    assert bag_best(scores, bag, 3).tolist() == [1, 3, 4]


def test_class_balanced_score_two_classes():
    # class 1 bags: 0.2, 0.4 -> 0.3; class 2 bag: 0.9 -> S = (0.3 + 0.9) / 2 = 0.6 (plain mean would be 0.5)
    s = class_balanced_score(torch.tensor([0.2, 0.4, 0.9]), torch.tensor([1, 1, 2]))
    assert s.item() == pytest.approx(0.6)


def test_refine_boxes_hand_values():
    s_star = torch.tensor([0.9, 0.99])
    b_best = torch.tensor([[-5.0, 20.0, 30.0, 40.0], [10.0, 10.0, 50.0, 50.0]])
    b_noisy = torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 40.0, 40.0]])
    b_ref, phi = refine_boxes(s_star, b_best, b_noisy, gamma=7.5, theta=0.85)
    phi0 = min(0.9**7.5, 0.85)  # 0.4538, below theta
    assert phi.tolist() == pytest.approx([phi0, 0.85])  # 0.99^7.5 = 0.927 is capped at theta
    clamped = torch.tensor([0.0, 20.0, 30.0, 40.0])  # x1 clamped at 0, no upper clamp
    assert torch.allclose(b_ref[0], phi0 * clamped + (1 - phi0) * b_noisy[0])
    assert torch.allclose(b_ref[1], 0.85 * b_best[1] + 0.15 * b_noisy[1])


def test_oamil_loss_variants():
    s = [torch.tensor(0.5), torch.tensor(0.6), torch.tensor(0.8)]
    assert oamil_loss(s[:1], "refine", 1.0).item() == pytest.approx(0.5)
    assert oamil_loss(s, "refine", 1.0).item() == pytest.approx(0.5 + 0.3)
    assert oamil_loss(s, "random", 1.0).item() == pytest.approx(1 - 1.9 / 3)


# --------------------------------------------------------------------------------------------- coders
def test_xyxy_coder_hand_values_and_round_trip():
    coder = XYXYBoxCoder()
    prop = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[1.0, 2.0, 12.0, 18.0]])
    d = coder.encode_single(gt, prop)
    # 10 * ((1-0)/10, (2-0)/20, (12-10)/10, (18-20)/20)
    assert d[0].tolist() == pytest.approx([1.0, 1.0, 2.0, -1.0])
    assert torch.allclose(coder.decode_single(d, prop), gt)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(6, 2, generator=g) * 50
    props = torch.cat([p, p + 5 + torch.rand(6, 2, generator=g) * 40], 1)
    q = torch.rand(6, 2, generator=g) * 50
    gts = torch.cat([q, q + 1 + torch.rand(6, 2, generator=g) * 40], 1)
    enc = coder.encode([gts[:4], gts[4:]], [props[:4], props[4:]])
    assert [len(e) for e in enc] == [4, 2]
    assert torch.allclose(coder.decode(torch.cat(enc), [props[:4], props[4:]])[:, 0], gts, atol=1e-4)
    # torchvision layout for K classes: rel_codes [N, 4K] -> [N, K, 4]
    assert coder.decode(torch.zeros(6, 12), [props]).shape == (6, 3, 4)


def test_make_box_coder_and_losses():
    assert make_box_coder("xywh").weights == (10.0, 10.0, 5.0, 5.0)
    assert isinstance(make_box_coder("xyxy"), XYXYBoxCoder)
    with pytest.raises(ValueError):
        make_box_coder("cxcy")
    logits = torch.zeros(4, 3)
    reg = torch.zeros(4, 12)
    reg[0, 4:8] = torch.tensor([1.0, -1.0, 0.5, 0.0])  # RoI 0, class 1
    labels = torch.tensor([1, 0, 0, 0])
    tgt = torch.zeros(4, 4)
    _, l1 = rcnn_losses(logits, reg, labels, tgt, "l1")
    assert l1.item() == pytest.approx(2.5 / 4)  # L1 sum over positives / sampled RoIs
    # torchvision's smooth L1 (beta 1/9): |x| - beta/2 outside +-beta, x^2 / (2 beta) inside
    _, sl1 = rcnn_losses(logits, reg, labels, tgt, "smooth_l1")
    assert sl1.item() == pytest.approx((0.5 / 9 * 0 + (1 - 1 / 18) * 2 + (0.5 - 1 / 18)) / 4)
    with pytest.raises(ValueError, match="unknown box loss"):
        rcnn_losses(logits, reg, labels, tgt, "l2")


# --------------------------------------------------------------------------------------------- detector
def _detector():
    torch.manual_seed(0)
    return fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=4, min_size=64, max_size=64,
        box_batch_size_per_image=64, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
    )


def _batch(n_img=2, empty=False):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(n_img)]
    targets = []
    for i in range(n_img):
        if empty:
            targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})
            continue
        boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0], [8.0, 30.0, 28.0, 60.0]])
        labels = torch.tensor([1, 2, 1 + i])
        targets.append({"boxes": boxes + i, "labels": labels, "true_boxes": boxes + i + 1})
    return images, targets


def _wrap(model, **cfg_kwargs):
    cfg = OAMILConfig(**{"oaie_num": 2, **cfg_kwargs})
    model.roi_heads = OAMILRoIHeads.from_roi_heads(model.roi_heads, cfg)
    return model


def _count_head_calls(model):
    calls = []
    model.roi_heads.box_head.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("oaie_type", ["refine", "random"])
def test_train_forward_backward_on_and_off(oaie_type):
    model = _wrap(_detector(), oaie_type=oaie_type).train()
    calls = _count_head_calls(model)
    images, targets = _batch()
    for progress, rounds in [(0.9, 3), (0.0, 1)]:
        model.roi_heads.progress = progress
        calls.clear()
        losses = model(images, targets)
        assert {"loss_classifier", "loss_box_reg", "loss_oamil"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses["loss_oamil"].item() > 0
        sum(losses.values()).backward()
        assert len(calls) == 1 + rounds  # main pass + N+1 selector rounds (N=2) or 1
        stats = model.roi_heads.last_stats
        assert stats["num_rounds"] == rounds and stats["num_bags"] == 6
        assert 0.0 < stats["oamil_score"] < 1.0
        assert math.isfinite(stats["iou_noisy"]) and math.isfinite(stats["iou_refined"])
        if progress == 0.0:
            assert stats["phi_mean"] == 0.0 and stats["iou_refined"] == stats["iou_noisy"]
        model.zero_grad()


def test_gates_follow_progress():
    head = _wrap(_detector()).roi_heads
    head.progress = 1.0 / 12.0
    assert head.oais_active and not head.oaie_active
    head.progress = 8.0 / 12.0
    assert head.oaie_active
    head.progress = 0.05
    assert not head.oais_active


def test_oais_changes_only_positive_regression_targets(monkeypatch):
    seen = []

    def spy(logits, reg, labels, targets, coder):
        seen.append((labels.clone(), targets.clone()))
        return rcnn_losses(logits, reg, labels, targets, coder)

    monkeypatch.setattr(oamil_mod, "rcnn_losses", spy)
    model = _wrap(_detector(), oaie=False, oais_gamma=0.1).train()  # low gamma: phi is large enough to see
    images, targets = _batch()
    for progress in (0.0, 0.9):
        model.roi_heads.progress = progress
        torch.manual_seed(3)  # same RPN/sampler randomness in both passes
        model(images, targets)
    (lab0, tgt0), (lab1, tgt1) = seen
    assert torch.equal(lab0, lab1)  # labels and sampling stay on the noisy boxes
    pos = lab0 > 0
    assert torch.equal(tgt0[~pos], tgt1[~pos])
    assert not torch.allclose(tgt0[pos], tgt1[pos])
    assert model.roi_heads.last_stats["phi_mean"] > 0.5


def test_no_positives_gives_zero_connected_loss():
    model = _wrap(_detector()).train()
    model.roi_heads.progress = 0.9
    images, targets = _batch(empty=True)
    losses = model(images, targets)
    assert losses["loss_oamil"].item() == 0.0 and losses["loss_oamil"].requires_grad
    sum(losses.values()).backward()
    assert model.roi_heads.last_stats["num_bags"] == 0


def test_state_dict_is_plain_faster_rcnn_and_eval_unchanged():
    plain = _detector()
    model = _wrap(_detector())
    assert list(model.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.eval()
    model.eval()
    images, _ = _batch()
    with torch.no_grad():
        a, b = plain(images), model(images)
    for x, y in zip(a, b):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["scores"], y["scores"])
    assert type(model.roi_heads.to_roi_heads()) is RoIHeads


def test_from_roi_heads_shares_modules_and_settings():
    model = _detector()
    old = model.roi_heads
    new = OAMILRoIHeads.from_roi_heads(old, OAMILConfig())
    assert new.box_head is old.box_head and new.box_predictor is old.box_predictor
    assert new.box_roi_pool is old.box_roi_pool and new.box_coder is old.box_coder
    assert new.fg_bg_sampler is old.fg_bg_sampler and new.proposal_matcher is old.proposal_matcher
    assert (new.score_thresh, new.nms_thresh, new.detections_per_img) == (
        old.score_thresh, old.nms_thresh, old.detections_per_img)


def test_xyxy_coder_training_and_inference():
    model = _wrap(_detector(), box_coder="xyxy").train()
    assert isinstance(model.roi_heads.box_coder, XYXYBoxCoder)
    model.roi_heads.progress = 0.9
    images, targets = _batch()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[-1] == 4
    assert isinstance(model.roi_heads.to_roi_heads().box_coder, XYXYBoxCoder)


@pytest.mark.parametrize("oaie_type", ["refine", "random"])
def test_oaie_round_references(oaie_type):
    # stub head: every RoI predicts the same xyxy deltas (+1 -> corners move by 0.1 * size) and uniform scores
    cfg = OAMILConfig(box_coder="xyxy", oaie_type=oaie_type)
    head = OAMILRoIHeads.from_roi_heads(_detector().roi_heads, cfg)
    delta = torch.tensor([1.0, 1.0, 1.0, 1.0]).repeat(3)  # 3 classes (incl. background) x 4

    def fake_head(features, boxes, shapes):
        n = sum(len(b) for b in boxes)
        return torch.zeros(n, 3), delta.repeat(n, 1)

    head._head = fake_head
    rois = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    boxes, scores = head._selector_rounds({}, [], rois, delta[:4][None], torch.tensor([1]), [1], 3)
    assert len(boxes) == len(scores) == 3
    r0 = torch.tensor([[1.0, 2.0, 11.0, 22.0]])
    assert torch.allclose(boxes[0], r0)
    if oaie_type == "refine":  # each round regresses from the previous round's boxes
        assert torch.allclose(boxes[1], torch.tensor([[2.0, 4.0, 12.0, 24.0]]))
        assert torch.allclose(boxes[2], torch.tensor([[3.0, 6.0, 13.0, 26.0]]))
    else:  # deltas decoded against the original RoIs
        assert torch.allclose(boxes[1], r0) and torch.allclose(boxes[2], r0)
    assert torch.allclose(scores[0], torch.tensor([1 / 3]))
