"""The defaults that make SSD-Det safe on boxes of unknown quality: the keep-the-box step (a given box the refiner
cannot improve comes back exactly) and the cap's "oldest first" selection (every object is refined before any
is refined twice, so the detector's banked targets stay close to the refiner's current output)."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from ssddet.config import SSDDetConfig
from ssddet.models.ssddet.keep import MIN_MODE_COUNT, KeepTheBox, agreement_modes, keep_the_box
from ssddet.models.ssddet.refiner import SSDDetRefiner

C, R, K = 8, 3, 3
SIZES = [(64, 64), (64, 56)]
BOXES = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [36.0, 10.0, 62.0, 30.0], [0.0, 40.0, 14.0, 63.0]]),
         torch.tensor([[10.0, 12.0, 50.0, 44.0]])]
LABELS = [torch.tensor([1, 2, 3]), torch.tensor([2])]
CLEAN = [b + torch.tensor([1.0, -1.0, 2.0, 1.0]) for b in BOXES]


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {str(i): torch.randn(2, C, 64 // 2 ** (i + 2), 64 // 2 ** (i + 2), generator=g) for i in range(4)}
    feats["pool"] = torch.randn(2, C, 1, 1, generator=g)
    return feats


def _refiner(**kw):
    torch.manual_seed(0)
    cfg = SSDDetConfig(**{"trunk_dim": 32, "num_negatives": 40, "trunk_reduce": 0, "trust_agreement": 0.0,
                          "trust_mode": 0.0, **kw})
    return SSDDetRefiner(cfg, K, MultiScaleRoIAlign(["0", "1", "2", "3"], R, 2), in_channels=C,
                         resolution=R).manual_seed(0).train()


def _refine(ref):
    return torch.cat(ref(_features(), SIZES, BOXES, LABELS, true_boxes=CLEAN).refined)


def test_a_given_box_the_scores_prefer_is_returned_exactly():
    """With a stage-II classifier and SISD head that score every box alike, the given box ties with the merged
    one, and ties go to the given box: every box comes back bit for bit. Without the step they move."""
    ref = _refiner(keep_given=True)
    with torch.no_grad():
        for head in (ref.cls1, ref.sisd.iou):
            head.weight.zero_()
    out = ref(_features(), SIZES, BOXES, LABELS, true_boxes=CLEAN)
    assert torch.equal(torch.cat(out.refined), torch.cat(BOXES))
    assert out.stats["keep_rate"] == 1.0
    ref.cfg.keep_given = False
    assert not torch.allclose(_refine(ref), torch.cat(BOXES), atol=0.5)


def test_the_merged_box_wins_where_the_classifier_prefers_it():
    """A stage-II classifier that scores b̃'s features above b*'s: every object takes the merged box, which is
    what the same refiner returns with the step switched off."""
    ref = _refiner(keep_given=True, sisd=False, keep_iou=0.0)
    calls = []

    def prefer_merged(f):  # the bag's scores are flat; the keep step pools [b*, b̃] per object, rows alternate
        calls.append(tuple(f.shape))
        out = torch.zeros(*f.shape[:-1], K)
        if f.dim() == 2 and len(calls) > 1:
            out[1::2] = 10.0
        return out

    ref.cls1.forward = prefer_merged
    kept = _refine(ref)
    assert calls[-1] == (2 * 4, 32)
    calls.clear()
    ref.cfg.keep_given = False
    torch.testing.assert_close(kept, _refine(ref))
    assert not torch.allclose(kept, torch.cat(BOXES), atol=0.5)


def test_a_small_move_keeps_the_given_box():
    """The IoU arm: where b̃ is within keep_iou of b*, b* is kept whatever the scores say."""
    cand = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0]],  # IoU 0.91: kept
                         [[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]]])  # IoU 0.14: moved
    cls = torch.tensor([[0.1, 0.9], [0.1, 0.9]])  # the scores prefer b̃ for both
    box, stats = keep_the_box(cand, cls, None, keep_iou=0.75)
    assert torch.equal(box, cand[[0, 1], [0, 1]]) and stats["keep_rate"] == 0.5
    box, _ = keep_the_box(cand, cls, None, keep_iou=0.0)
    assert torch.equal(box, cand[:, 1])


def test_switched_off_the_output_is_the_released_path():
    """keep_given=False reproduces the refiner as it was before the step existed (values recorded from that code,
    same seed and inputs, cap 2 of 3 objects)."""
    ref = _refiner(keep_given=False, sampler="large", max_objects_per_image=2)
    out = ref(_features(), SIZES, BOXES, LABELS)
    want = torch.tensor([[2.615530, 4.667243, 33.054012, 48.008907], [36.0, 10.0, 62.0, 30.0],
                         [-3.091290, 37.516033, 11.324514, 65.483490], [17.616377, 8.233237, 49.720478, 43.301422]])
    torch.testing.assert_close(torch.cat(out.refined), want, rtol=0, atol=1e-4)
    torch.testing.assert_close(out.losses["loss_spsd1"], torch.tensor(3.64907), rtol=0, atol=1e-4)


def test_cap_refines_the_highest_priority_objects():
    """Over the cap, `priority` decides which objects are refined (the others keep their input box)."""
    ref = _refiner(max_objects_per_image=1, keep_given=False)
    prio = [torch.tensor([0.0, 5.0, 1.0]), torch.tensor([0.0])]
    out = ref(_features(), SIZES, BOXES, LABELS, priority=prio)
    assert out.selected[0].tolist() == [False, True, False] and out.selected[1].tolist() == [True]
    assert torch.equal(out.refined[0][[0, 2]], BOXES[0][[0, 2]])


def test_oldest_first_refines_every_object_before_any_twice():
    """SSDDetMethod with the bank: 3 objects, cap 1 -> three steps refine three different objects."""
    from ssddet.models.ssddet.bank import BoxBank

    ref = _refiner(max_objects_per_image=1, keep_given=False)
    bank, ids, seen = BoxBank(), torch.tensor([7, 8, 9]), []
    for _ in range(3):
        prio = [-bank.last_refined(ids).float(), torch.zeros(1)]
        out = ref(_features(), SIZES, BOXES, LABELS, priority=prio)
        sel = out.selected[0]
        bank.update(ids[sel], torch.rand(int(sel.sum()), 4))
        seen += ids[sel].tolist()
    assert sorted(seen) == [7, 8, 9]


def test_a_dataset_the_refiner_agrees_with_keeps_every_given_box():
    """trust_agreement: once the running mean IoU(b*, b̃) reaches it (after the warm-up), every box comes back
    exactly; below it the per-box rule acts; the running mean is saved and restored with the refiner."""
    ref = _refiner(keep_iou=0.0, trust_agreement=0.01, warmup_frac=0.5, trusted_keep_iou=0.0)
    out = ref(_features(), SIZES, BOXES, LABELS, true_boxes=CLEAN, progress=0.2)  # warm-up: only feeds the mean
    first = float(ref.keep.agreement)
    assert 0.01 < first < 1 and out.stats["given_trusted"] == 0.0
    assert not torch.equal(torch.cat(out.refined), torch.cat(BOXES))
    out = ref(_features(), SIZES, BOXES, LABELS, true_boxes=CLEAN, progress=0.6)
    assert out.stats["given_trusted"] == 1.0 and torch.equal(torch.cat(out.refined), torch.cat(BOXES))
    assert float(ref.keep.agreement) == first  # the same boxes again: the same mean
    ref.keep.update(torch.tensor([0.0, 0.0]))  # a step where the refiner moved every box off: momentum 0.98
    assert float(ref.keep.agreement) == pytest.approx(0.98 * first)
    ref.keep.agreement.fill_(first)
    ref.cfg.trust_agreement = 0.999  # above anything seen: the per-box rule again
    assert not torch.equal(_refine(ref), torch.cat(BOXES))
    state = ref.state_dict()
    assert "keep.agreement" in state
    ref.cfg.trust_agreement = 0.01
    fresh = _refiner(keep_iou=0.0, trust_agreement=0.01, trusted_keep_iou=0.0).eval()
    fresh.load_state_dict(state)
    assert fresh.keep.agreement == ref.keep.agreement
    assert torch.equal(torch.cat(fresh(_features(), SIZES, BOXES, LABELS).refined), torch.cat(BOXES))  # eval: trusted
    del state["keep.agreement"]  # a checkpoint from before the running mean: nothing known, nothing trusted
    fresh.load_state_dict(state)
    assert torch.isnan(fresh.keep.agreement) and not fresh.keep.trusted(None)


def test_a_trusted_dataset_still_replaces_a_box_the_refiner_moves_far():
    """Hand-built, trusted: b* is kept where IoU(b*, b̃) >= trusted_iou whatever the scores (object 0: 0.8, its
    score prefers b̃), replaced below it (object 1: 0.5 < 0.6, its score prefers b*); trusted_iou 0 keeps all."""
    cand = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 8]],  # agreement 0.8
                         [[0.0, 0, 10, 5], [0, 0, 10, 10]]])  # agreement 0.5
    cls = torch.tensor([[0.2, 0.9], [0.9, 0.2]])
    box, stats = keep_the_box(cand, cls, None, keep_iou=0.0, trusted_iou=0.6)
    assert torch.equal(box, torch.stack([cand[0, 0], cand[1, 1]])) and stats["keep_rate"] == 0.5
    box, _ = keep_the_box(cand, cls, None, keep_iou=0.0, trusted_iou=0.0)
    assert torch.equal(box, cand[:, 0])
    box, _ = keep_the_box(cand, cls, None, keep_iou=0.0)  # untrusted: the scores decide
    assert torch.equal(box, torch.stack([cand[0, 1], cand[1, 0]]))


def test_trust_has_hysteresis_and_old_checkpoints_load():
    """Trust begins at trust_agreement and ends only below trust_agreement - trust_margin; the state is a buffer
    (saved, restored); a checkpoint without it decides by the threshold alone, as before the margin."""
    from ssddet.config import SSDDetConfig
    from ssddet.models.ssddet.keep import KeepTheBox

    keep = KeepTheBox(SSDDetConfig(trust_agreement=0.68, trust_mode=0.0, trust_margin=0.02, warmup_frac=0.0))
    cand = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10]]])
    cls = torch.ones(1, 2)
    trace = []
    for a in (0.67, 0.69, 0.665, 0.655, 0.67):
        keep.agreement.fill_(a)
        keep.momentum = 1.0  # hold the mean where the test puts it
        _, stats = keep(cand, cls, None, progress=0.5)
        trace.append(float(stats["given_trusted"]))
    assert trace == [0.0, 1.0, 1.0, 0.0, 0.0]
    keep.agreement.fill_(0.67)
    keep(cand, cls, None, progress=0.5)  # off at 0.67 ...
    keep.agreement.fill_(0.69)
    keep(cand, cls, None, progress=0.5)  # ... on at 0.69
    state = keep.state_dict()
    fresh = KeepTheBox(keep.cfg).eval()
    fresh.load_state_dict(state)
    fresh.agreement.fill_(0.67)
    assert fresh.trusted(None)  # trusted at the end of training, still within the margin
    del state["trust_on"]
    fresh.load_state_dict(state)
    fresh.agreement.fill_(0.67)
    assert float(fresh.trust_on) == 0.0 and not fresh.trusted(None)  # 0.69 saved, but 0.67 now: the threshold


def test_statistics_come_apart_for_the_exact_and_the_noised_given_boxes():
    """Hand-built: object 0's given box is exact and kept; object 1's is off (IoU 0.5) and replaced by an exact
    merged box. The split statistics say so; the decision is the same as without the clean boxes."""

    clean = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    cand = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 8]],  # b* exact, b̃ IoU 0.8 with it
                         [[0.0, 0, 10, 5], [0, 0, 10, 10]]])  # b* IoU 0.5, b̃ exact
    cls = torch.tensor([[0.9, 0.5], [0.2, 0.9]])
    box, stats = keep_the_box(cand, cls, None, keep_iou=0.0, clean=clean)
    blind, _ = keep_the_box(cand, cls, None, keep_iou=0.0)
    assert torch.equal(box, clean) and torch.equal(blind, box)
    assert stats["keep_rate_exact"] == 1.0 and stats["keep_rate_noised"] == 0.0
    assert stats["iou_keep_exact"] == 1.0 and stats["iou_keep_noised"] == 1.0
    # IoU arm at 0.7 would keep object 0 (agreement 0.8) and replace object 1 (0.5): both right; at 0.9 it moves
    # the exact box to b̃ (IoU 0.8 with the clean box)
    assert stats["iou_keep_t70_exact"] == 1.0 and stats["iou_keep_t70_noised"] == 1.0
    assert stats["iou_keep_t90_exact"] == pytest.approx(0.8) and stats["iou_keep_t50_noised"] == 0.5
    # SISD's estimate of b*: 0.9 for the exact box, 0.6 for the other; the SISD arm at 0.75 keeps only the first
    sisd = torch.tensor([[0.9, 0.8], [0.6, 0.95]])
    box_s, s_stats = keep_the_box(cand, cls, sisd, keep_iou=0.0, clean=clean)
    assert s_stats["keep_s75"] == 0.5 and s_stats["iou_keep_s75"] == 1.0
    assert s_stats["sisd_given_exact"] == pytest.approx(0.9) and s_stats["iou_keep_s75_noised"] == 1.0
    box_k, _ = keep_the_box(cand, torch.tensor([[0.1, 0.9], [0.1, 0.9]]), sisd, keep_iou=0.0, keep_sisd=0.75)
    assert torch.equal(box_k, torch.stack([cand[0, 0], cand[1, 1]]))  # the scores prefer b̃; SISD keeps b* of 0
    assert torch.equal(keep_the_box(cand, cls, None, keep_iou=0.0, keep_sisd=0.75)[0], blind)  # no SISD: no arm
    assert s_stats["iou_keep_s80_exact"] == 1.0 and "iou_keep_s70" not in stats  # without SISD: no SISD arm
    _, no_noised = keep_the_box(cand[:1], cls[:1], None, keep_iou=0.0, clean=clean[:1])
    assert "iou_keep_noised" not in no_noised and "iou_keep_exact" in no_noised


def _agreements(exact: int, noised: int, seed: int = 0) -> torch.Tensor:
    """Agreements IoU(b*, b̃) as BCCD's refiners give them: exact boxes N(0.80, 0.06), noised ones N(0.45, 0.12)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([0.80 + 0.06 * torch.randn(exact, generator=g),
                      0.45 + 0.12 * torch.randn(noised, generator=g)]).clamp(0, 1)


def test_the_mixture_finds_the_mode_of_the_exact_boxes():
    """Half exact, half noised: the two modes come back at their means and weights; sorted by mean."""
    w, mu, sd = agreement_modes(_agreements(2000, 2000))
    assert mu[1] == pytest.approx(0.80, abs=0.01) and mu[0] == pytest.approx(0.45, abs=0.015)
    assert sd[1] == pytest.approx(0.06, abs=0.01) and w[1] == pytest.approx(0.5, abs=0.03)
    one = agreement_modes(0.63 + 0.1 * torch.randn(4000, generator=torch.Generator().manual_seed(1)))[1]
    assert one[1] < 0.72  # every box a little off (BCCD 20 % on every box: highest mode 0.63): no mode that high


def _cfg(**kw):
    return SSDDetConfig(**{"trust_mode": 0.72, "trust_agreement": 0.0, "trust_window": 1024, "warmup_frac": 0.0,
                           "keep_iou": 0.0, **kw})


def test_mostly_right_boxes_are_trusted_box_by_box():
    """A window of mostly exact boxes: trusted once MIN_MODE_COUNT agreements are in; then b* is kept where
    IoU(b*, b̃) >= trusted_keep_iou (object 0: 0.8) and replaced below (object 1: 0.3), whatever the scores."""
    keep = KeepTheBox(_cfg(trusted_keep_iou=0.5)).train()
    cand = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 8]],  # agreement 0.8
                         [[0.0, 0, 10, 3], [0, 0, 10, 10]]])  # agreement 0.3
    cls = torch.tensor([[0.2, 0.9], [0.9, 0.2]])  # the scores prefer b̃ for object 0, b* for object 1
    keep.update(_agreements(MIN_MODE_COUNT - 10, 0)[: MIN_MODE_COUNT - 10])
    box, stats = keep(cand, cls, None, progress=0.5)  # 8 short of the count: nothing decided, the scores rule
    assert stats["given_trusted"] == 0.0 and stats["agreement_mode"] == 0.0
    assert torch.equal(box, torch.stack([cand[0, 1], cand[1, 0]]))
    keep.update(_agreements(800, 200, seed=1))
    box, stats = keep(cand, cls, None, progress=0.5)
    assert stats["given_trusted"] == 1.0 and 0.77 < float(stats["agreement_mode"]) < 0.83
    assert torch.equal(box, torch.stack([cand[0, 0], cand[1, 1]]))


def test_boxes_that_are_all_a_little_off_are_not_trusted_and_the_window_slides():
    """Every box at 20 %-level noise (agreements around 0.63): the highest mode stays below trust_mode. Then a
    window of exact boxes replaces them (the oldest go first) and trust begins; it ends only below the margin."""
    keep = KeepTheBox(_cfg()).train()
    g = torch.Generator().manual_seed(2)
    keep.update((0.63 + 0.1 * torch.randn(1024, generator=g)).clamp(0, 1))
    assert not keep.trusted(0.5) and float(keep.mode) < 0.72
    keep.update(_agreements(1024, 0, seed=3))
    assert torch.isfinite(keep.recent).all() and float(keep.recent.mean()) > 0.78  # the old ones are gone
    assert keep.trusted(0.5)
    keep.trust_on.fill_(1.0)
    keep.mode.fill_(0.71)
    assert keep.trusted(0.5)  # within the margin
    keep.mode.fill_(0.69)
    assert not keep.trusted(0.5)


def test_the_mode_is_saved_and_old_checkpoints_load_without_it():
    """`recent`, `recent_pos` and `mode` travel with the model (resume, refine); a checkpoint from before the mode
    rule loads with an empty window (nothing decided by it); `set_from` takes another file's agreements."""
    keep = KeepTheBox(_cfg()).train()
    keep.update(_agreements(600, 100))
    state = keep.state_dict()
    fresh = KeepTheBox(_cfg()).eval()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.recent.nan_to_num(-1), keep.recent.nan_to_num(-1))
    assert int(fresh.recent_pos) == 700 and fresh.trusted(None)
    for k in ("mode", "recent", "recent_pos"):
        del state[k]
    fresh.load_state_dict(state)
    assert torch.isnan(fresh.mode) and torch.isnan(fresh.recent).all() and not fresh.trusted(None)
    fresh.set_from(0.63 + 0.1 * torch.randn(2000, generator=torch.Generator().manual_seed(4)))
    assert not fresh.trusted(None) and float(fresh.agreement) == pytest.approx(0.63, abs=0.01)
    fresh.set_from(_agreements(1500, 500))
    assert fresh.trusted(None) and float(fresh.trust_on) == 0.0


def test_the_warm_up_feeds_the_mean_but_not_the_window():
    """During the warm-up the refiner barely moves any box, so its agreements say nothing about exact boxes: they
    move the running mean only; after it they fill the window."""
    keep = KeepTheBox(_cfg(warmup_frac=0.3)).train()
    keep.update(_agreements(1000, 0), progress=0.1)
    assert torch.isnan(keep.recent).all() and torch.isnan(keep.mode) and float(keep.agreement) > 0.7
    keep.update(_agreements(1000, 0), progress=0.3)
    assert int(torch.isfinite(keep.recent).sum()) == 1000 and float(keep.mode) > 0.75


def test_history_arm_keeps_a_box_moved_no_further_than_the_refiners_own_answer_moves():
    """keep_history: b* stays where IoU(b*, b̃) >= IoU(b̃, previous b̃) - delta; objects without a previous visit
    (NaN) are left to the other arms. Hand-built: IoU(b*, b̃) = 0.5 for all three objects."""
    from ssddet.models.ssddet.keep import history_arm

    given = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(3, 1)
    merged = torch.tensor([[0.0, 0.0, 10.0, 5.0]]).repeat(3, 1)  # half of b*: IoU 0.5
    previous = torch.tensor([[0.0, 0.0, 10.0, 5.0],  # the same answer last visit: self-agreement 1.0
                             [0.0, 0.0, 10.0, 10.0],  # last visit said b*: self-agreement 0.5
                             [float("nan")] * 4])
    cand, agree = torch.stack([given, merged], dim=1), torch.full((3,), 0.5)
    keep, stats = history_arm(cand, previous, agree, delta=0.1)
    assert keep.tolist() == [False, True, False]
    assert float(stats["self_agreement"]) == pytest.approx(0.75)
    assert float(stats["keep_history"]) == pytest.approx(1 / 3)
    keep, _ = history_arm(cand, previous, agree, delta=0.6)  # a wide delta keeps every object seen before
    assert keep.tolist() == [True, True, False]


def test_keep_history_keeps_the_given_box_over_the_scores_only_when_switched_on():
    """KeepTheBox: with keep_history the arm's boxes stay b* though the scores prefer b̃ and nothing is trusted;
    without it (the default) the same call replaces them."""
    given = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    merged = torch.tensor([[0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 25.0]])
    previous = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 25.0]])
    cand, cls = torch.stack([given, merged], dim=1), torch.tensor([[0.1, 0.9], [0.1, 0.9]])
    for on, expected in ((True, [given[0], merged[1]]), (False, [merged[0], merged[1]])):
        keep = KeepTheBox(SSDDetConfig(keep_history=on, keep_iou=0.0, trust_mode=0.0)).eval()
        box, stats = keep(cand, cls, None, previous=previous)
        assert torch.equal(box, torch.stack(expected))
        assert ("keep_history" in stats) == on


def test_the_bank_carries_each_objects_merged_box_to_its_next_visit(monkeypatch):
    """keep_history: a step writes the selected objects' b̃ before the keep step (the refiner's bags["merged"])
    into the bank's merged table in the unflipped unit frame; the next step hands it back to the refiner in the
    image's own frame, NaN for an object never seen; the table survives the state dict, and a bank saved before
    the table loads with an empty one."""
    from types import SimpleNamespace

    from ssddet.config import ModelConfig
    from ssddet.models.detector import build_detector
    from ssddet.models.methods import SSDDetMethod
    from ssddet.models.ssddet.bank import BoxBank
    from ssddet.models.ssddet.refiner import RefinerOutput

    cfg = SSDDetConfig(keep_history=True, warmup_frac=0.0, trust_self=False)  # the bank's view alone
    method = SSDDetMethod(build_detector(ModelConfig(min_size=64, max_size=96), 2), cfg, 2).train()
    merged, seen = torch.tensor([[40.0, 20.0, 80.0, 60.0]]), []

    def fake_refiner(features, sizes, boxes, labels, true=None, progress=None, avoid=None, priority=None,
                     previous=None):
        seen.append([p.clone() for p in previous])
        sel = [torch.arange(len(b)) == 0 for b in boxes]  # the first object of each image is refined
        return RefinerOutput([b.clone() for b in boxes], [b.clone() for b in boxes], {}, {}, sel,
                             {"merged": merged.repeat(len(boxes), 1)})

    monkeypatch.setattr(method.refiner, "forward", fake_refiner)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 9.0, 9.0]])
    sizes = SimpleNamespace(image_sizes=[(100, 200)])
    first = {"boxes": boxes, "labels": torch.tensor([1, 1]), "ann_ids": torch.tensor([7, 8]), "flipped": True}
    method.refine_targets({}, sizes, [first], 0.5)
    assert torch.isnan(seen[0][0]).all()
    method.refine_targets({}, sizes, [{**first, "flipped": False}], 0.6)
    # (40, 20, 80, 60) in the flipped 200 px wide frame is (120, 20, 160, 60) unflipped
    torch.testing.assert_close(seen[1][0][0], torch.tensor([120.0, 20.0, 160.0, 60.0]))
    assert torch.isnan(seen[1][0][1]).all()  # object 8 was never refined
    restored = BoxBank()
    restored.set_extra_state(method.bank.get_extra_state())
    assert restored.merged == method.bank.merged and len(restored.merged) == 1
    old = {k: v for k, v in method.bank.get_extra_state().items() if not k.startswith("merged")}
    restored.set_extra_state(old)
    assert restored.merged == {} and restored.boxes == method.bank.boxes


def test_refiner_with_keep_history_keeps_the_boxes_its_last_answer_agrees_with():
    """The whole refiner: bags["merged"] is b̃ before step 8 (one row per object); given b̃ itself as the previous
    answer, every object the arm can judge is kept exactly where b̃ stays within delta of b* (here: delta 1, all)."""
    ref = _refiner(keep_history=True, keep_history_delta=1.0, keep_iou=0.0, trust_mode=0.0).train()
    out = ref(_features(), SIZES, BOXES, LABELS, progress=0.5)
    assert out.bags["merged"].shape == (4, 4) and "keep_history" not in out.stats  # no previous: no arm
    prev = list(out.bags["merged"].split([3, 1]))
    prev[1] = torch.full((1, 4), float("nan"))  # image 1's object: never seen
    out = ref(_features(), SIZES, BOXES, LABELS, progress=0.5, previous=prev)
    assert out.stats["keep_history"] == pytest.approx(0.75) and out.stats["self_agreement"] > 0
    assert torch.equal(out.refined[0], BOXES[0])


def test_trust_self_trusts_the_given_boxes_while_the_refiner_agrees_with_them_as_well_as_with_itself():
    """trust_self: the running mean of IoU(b*, b̃) - IoU(b̃, previous b̃) (`self_gap`) decides the trust after the
    warm-up (before it the gap is not measured); trusted, b* is kept where IoU(b*, b̃) >= trusted_keep_iou; a
    negative gap (the refiner is surer of itself than of the boxes) leaves the scores to decide."""
    given = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    merged = torch.tensor([[0.0, 0.0, 10.0, 8.0]])  # IoU(b*, b̃) = 0.8
    cand, cls = torch.stack([given, merged], dim=1), torch.tensor([[0.1, 0.9]])
    far = torch.tensor([[0.0, 0.0, 10.0, 4.0]])  # IoU(b̃, b̃') = 0.5: gap +0.3
    same = merged.clone()  # IoU 1.0: gap -0.2
    cfg = SSDDetConfig(trust_self=True, self_view="previous", trust_self_delta=0.0, keep_iou=0.0, trust_mode=0.0,
                       warmup_frac=0.5, trusted_keep_iou=0.5)
    keep = KeepTheBox(cfg).train()
    box, stats = keep(cand, cls, None, progress=0.2, previous=far)  # warm-up: not measured, not trusted
    assert torch.isnan(keep.self_gap) and torch.equal(box, merged) and stats["given_trusted"] == 0.0
    box, stats = keep(cand, cls, None, progress=0.6, previous=far)
    assert float(keep.self_gap) == pytest.approx(0.3) and torch.equal(box, given) and stats["given_trusted"] == 1.0
    for _ in range(200):  # the refiner now agrees with itself more than with the boxes
        box, stats = keep(cand, cls, None, progress=0.7, previous=same)
    assert float(keep.self_gap) < -0.02 and torch.equal(box, merged) and stats["given_trusted"] == 0.0
    keep.set_from(torch.full((4,), 0.8))  # another file's boxes: no second view of them, no such trust
    assert torch.isnan(keep.self_gap)
    off = KeepTheBox(SSDDetConfig(keep_iou=0.0, trust_mode=0.0, warmup_frac=0.5, trust_self=False)).train()
    box, _ = off(cand, cls, None, progress=0.6, previous=far)
    assert torch.equal(box, merged)  # off: the previous visit is not read
    mirror = KeepTheBox(SSDDetConfig(keep_iou=0.0, trust_mode=0.0, warmup_frac=0.5)).train()
    box, _ = mirror(cand, cls, None, progress=0.6, previous=far)
    assert torch.equal(box, merged) and torch.isnan(mirror.self_gap)  # the default's view is the mirror's, not this
