"""trust_self's mirror view (`self_view="mirror"`): each refined object's b̃ computed again on the mirror image, a
window of the gaps IoU(b*, b̃) - IoU(b̃, b̃ mirrored), and a training step that measures it on the right steps
without changing anything else of the model's state."""
import pytest
import torch
from helpers import CHEAP_MODEL_FIELDS, write_shapes_coco
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

from ssddet.config import Config, ModelConfig, SSDDetConfig
from ssddet.data.coco import parse_coco, read_json
from ssddet.data.dataset import CocoDetection
from ssddet.data.transforms import hflip_boxes
from ssddet.models.detector import build_detector
from ssddet.models.methods import build_method
from ssddet.models.ssddet.keep import MIN_MODE_COUNT, KeepTheBox
from ssddet.models.ssddet.mirror import mirror_batch, mirror_merged, norm_stats_kept
from ssddet.models.ssddet.refiner import SSDDetRefiner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_mirror_batch_flips_each_image_within_its_own_region():
    x = torch.arange(2 * 1 * 2 * 4, dtype=torch.float32).reshape(2, 1, 2, 4)
    out = mirror_batch(x, [(2, 4), (1, 3)])
    assert torch.equal(out[0], x[0].flip(-1))
    assert out[1, 0, 0].tolist() == [10.0, 9.0, 8.0, 11.0]  # 3 valid columns mirrored, the padding column stays
    assert torch.equal(out[1, 0, 1], x[1, 0, 1])  # a padding row stays


def test_norm_stats_kept_leaves_batchnorm_statistics_as_they_were():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with norm_stats_kept(net):
        net(torch.randn(2, 3, 5, 5))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    net(torch.randn(2, 3, 5, 5))  # outside it, a training batch counts
    assert not torch.equal(net[1].running_mean, before["1.running_mean"])
    # inside a training step: the step's backward still finds the tensors its graph saved as they were
    x = torch.randn(2, 3, 5, 5)
    loss = net(x).square().mean()
    with norm_stats_kept(net), torch.no_grad():
        net(x.flip(-1))
    loss.backward()
    assert net[0].weight.grad is not None


class _Maps(nn.Module):
    """A tiny 'backbone': one 1x1 conv and BatchNorm, pooled to the four levels a MultiScaleRoIAlign reads."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return {str(i): nn.functional.avg_pool2d(y, 2 ** (i + 2)) for i in range(4)}


def test_mirror_merged_is_the_refiners_merged_box_on_the_mirror_image_and_changes_no_state():
    torch.manual_seed(0)
    cfg = SSDDetConfig(trunk_dim=32, num_negatives=8, trunk_reduce=0, sampler="small")
    ref = SSDDetRefiner(cfg, 3, MultiScaleRoIAlign(["0", "1", "2", "3"], 3, 2), in_channels=8,
                        resolution=3).manual_seed(0).train()
    backbone = _Maps().train()
    images = torch.randn(2, 3, 64, 64)
    sizes = [(64, 64), (64, 48)]
    boxes = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [36.0, 10.0, 62.0, 30.0]]), torch.tensor([[10.0, 12.0, 40.0, 44.0]])]
    labels = [torch.tensor([1, 2]), torch.tensor([3])]
    state = {k: v.clone() for k, v in {**ref.state_dict(), **backbone.state_dict()}.items()}
    rng = ref.generator.get_state()
    got = mirror_merged(backbone, ref, images, sizes, boxes, labels)
    assert ref.training and backbone.training
    for k, v in {**ref.state_dict(), **backbone.state_dict()}.items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert torch.equal(ref.generator.get_state(), rng)  # no negatives, no cap subset drawn
    # by hand: the mirrored batch's features, the refiner in eval mode without step 8, boxes flipped back
    with torch.no_grad():
        feats = backbone(mirror_batch(images, sizes))
        ref.eval()
        out = ref(feats, sizes, [hflip_boxes(b, w) for b, (_, w) in zip(boxes, sizes)], labels, keep_step=False)
    want = torch.cat([hflip_boxes(r, w) for r, (_, w) in zip(out.refined, sizes)])
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, torch.cat(boxes))  # the refiner moved them: b̃, not the given boxes


def test_trust_from_the_mirror_window_needs_a_full_window_and_has_hysteresis():
    cfg = SSDDetConfig(trust_self=True, self_view="mirror", trust_self_delta=0.03, trust_margin=0.02,
                       trust_mode=0.0, warmup_frac=0.5)
    keep = KeepTheBox(cfg).train()
    ones = torch.ones(MIN_MODE_COUNT - 1)
    keep.observe_mirror(ones * 0.8, ones * 0.82)  # gaps -0.02, one short of a window
    assert torch.isnan(keep.self_gap) and not keep.trusted(0.6)
    keep.observe_mirror(torch.tensor([0.8]), torch.tensor([0.82]))
    assert float(keep.self_gap) == pytest.approx(-0.02, abs=1e-6) and keep.trusted(0.6)
    assert not keep.trusted(0.4)  # never in the warm-up
    keep.trust_on.fill_(1.0)
    keep.observe_mirror(torch.full((128,), 0.8), torch.full((128,), 0.86))  # half the window at -0.06: mean -0.04
    assert keep.trusted(0.6)  # still above -0.03 - 0.02 while trusted ...
    keep.trust_on.fill_(0.0)
    assert not keep.trusted(0.6)  # ... but below -0.03 to begin trust
    keep.set_from(torch.full((4,), 0.8))  # another file: no mirror view of it measured
    assert torch.isnan(keep.self_gap) and torch.isnan(keep.mirror_gaps).all()
    with pytest.raises(ValueError, match="self_view"):
        KeepTheBox(SSDDetConfig(self_view="both"))


def test_mirror_steps_come_every_nth_step_after_the_warm_up():
    keep = KeepTheBox(SSDDetConfig(trust_self=True, self_view="mirror", self_view_every=3, warmup_frac=0.5)).train()
    got = [keep.measures_mirror(p) for p in (0.1, 0.2, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6)]
    assert got == [False, False, False, True, False, False, True, False, False]  # steps 4 and 7 of 9
    prev = KeepTheBox(SSDDetConfig(trust_self=True, self_view="previous")).train()
    assert not any(prev.measures_mirror(0.9) for _ in range(10))
    assert int(prev.mirror_step) == 0
    off = KeepTheBox(SSDDetConfig(trust_self=True, self_view="mirror", keep_given=False)).train()
    assert not any(off.measures_mirror(0.9) for _ in range(10))  # no keep step, nothing to decide


def test_a_training_step_measures_the_mirror_view_and_leaves_the_detector_as_it_was(tmp_path):
    """Two SSD-Det steps from the same weights, mirror view on (every step) and off: the same losses (the
    measurement is no-grad and the keep step decides from the next step on), the window filled by the objects the
    refiner refined, and the backbone's BatchNorm statistics (from scratch, training) moved only by the batch."""
    root = write_shapes_coco(tmp_path / "shapes", n_train=2, n_val=0)
    records = parse_coco(read_json(root / "annotations.json"), "shapes", root).select("train")
    ds = CocoDetection(records)
    images, targets = zip(*[ds[i] for i in range(len(ds))])
    runs = []
    for view in ("previous", "mirror"):
        torch.manual_seed(0)
        cfg = Config()
        cfg.train.method = "ssddet"
        cfg.ssddet.sampler, cfg.ssddet.trunk_dim, cfg.ssddet.num_negatives = "small", 32, 8
        cfg.ssddet.trust_self, cfg.ssddet.self_view, cfg.ssddet.self_view_every = True, view, 1
        cfg.ssddet.warmup_frac = 0.0
        model = ModelConfig(backbone="resnet18_fpn", min_size=64, max_size=96, **CHEAP_MODEL_FIELDS)
        method = build_method(cfg, build_detector(model, 2), 2).train()
        method.refiner.manual_seed(0)
        losses, _ = method(list(images), [dict(t) for t in targets], progress=0.5)
        runs.append((method, {k: float(v.detach()) for k, v in losses.items()}))
    (prev, lp), (mirr, lm) = runs
    assert lp == pytest.approx(lm, rel=1e-5)
    n = sum(len(t["boxes"]) for t in targets)
    assert int(torch.isfinite(mirr.refiner.keep.mirror_gaps).sum()) == n
    assert torch.isnan(prev.refiner.keep.mirror_gaps).all()
    bn = [k for k in prev.detector.backbone.state_dict() if k.endswith("running_mean")]
    assert bn and all(torch.equal(prev.detector.backbone.state_dict()[k], mirr.detector.backbone.state_dict()[k])
                      for k in bn)
