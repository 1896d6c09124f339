"""The detector and the three training methods: backbones, learning on a tiny set, the deployed model being a
plain torchvision Faster R-CNN, OA-MIL gating, and loading local weight files."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from helpers import CHEAP_MODEL_FIELDS, train_args, write_shapes_coco
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from ssddet.cli import build_parser, main
from ssddet.config import Config, ModelConfig
from ssddet.config_overrides import config_from_args
from ssddet.data.boxes import aligned_iou
from ssddet.data.coco import parse_coco, read_json
from ssddet.data.dataset import CocoDetection
from ssddet.data.noise import add_box_noise
from ssddet.engine.checkpoint import atomic_save, deployable
from ssddet.engine.inference import load_detector
from ssddet.errors import UserError
from ssddet.models.detector import BACKBONES, build_detector, build_trained_detector
from ssddet.models.methods import DetectionMethod, build_method

K = 2  # foreground classes of the shapes set


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cheap_model_cfg(backbone: str = "resnet18_fpn", **kw) -> ModelConfig:
    """Tiny images and the small sampling sizes of CHEAP_MODEL (the defaults are sized for 320-640 px)."""
    return ModelConfig(backbone=backbone, min_size=64, max_size=96, **CHEAP_MODEL_FIELDS, **kw)


def _batch(tmp_path: Path, noise: float = 0.0, n: int = 2):
    """Two 96 px training images of the shapes set -> (images, targets); with noise, `boxes` are noisy and
    `true_boxes` clean."""
    root = write_shapes_coco(tmp_path / "shapes", n_train=n, n_val=0)
    raw = read_json(root / "annotations.json")
    if noise:
        raw, _ = add_box_noise(raw, noise, seed=45)
    records = parse_coco(raw, "shapes", root).select("train")
    ds = CocoDetection(records)  # no flip
    images, targets = zip(*[ds[i] for i in range(len(ds))])
    return list(images), list(targets)


def _fresh(targets):
    return [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


# ------------------------------------------------------------------------------------------------ backbones
@pytest.mark.parametrize("backbone", BACKBONES)
def test_build_detector_every_backbone(backbone):
    torch.manual_seed(0)
    model = build_detector(ModelConfig(backbone=backbone, pretrained="none", min_size=64, max_size=96),
                           num_classes=3)
    assert isinstance(model, FasterRCNN)
    pred = model.roi_heads.box_predictor
    assert pred.cls_score.out_features == 4 and pred.bbox_pred.out_features == 16  # 3 classes + background
    assert model.transform.min_size == (64,) and model.transform.max_size == 96
    assert all(p.requires_grad for p in model.backbone.parameters())  # from scratch: every layer trains
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 64, 80)])
    assert set(out) == {"boxes", "labels", "scores"}
    assert out["boxes"].shape[1:] == (4,) and (out["labels"] <= 3).all()


def test_build_detector_rejects_unknown_backbone():
    with pytest.raises(UserError, match="unknown backbone 'vgg16'"):
        build_detector(ModelConfig(backbone="vgg16"), 3)
    with pytest.raises(UserError, match="no categories"):
        build_detector(ModelConfig(), 0)


# ------------------------------------------------------------------------------------------------ learning
def _overfit(method: DetectionMethod, images, targets, steps: int, lr: float = 1e-4):
    method.train()
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    history = []
    for s in range(steps):
        losses, stats = method(images, _fresh(targets), s / steps)
        total = method.total_loss(losses)
        assert torch.isfinite(total), (s, losses)
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        history.append(({k: float(v.detach()) for k, v in losses.items()} | {"loss": float(total.detach())}, stats))
    return history


def test_vanilla_overfits_two_images(tmp_path):
    """Measured (resnet18, Adam 1e-4): total loss ~2.2 -> ~0.2 in 30 steps; asserted: the mean of the last 5
    steps is below half the first step's."""
    torch.manual_seed(0)
    images, targets = _batch(tmp_path)
    cfg = Config()
    cfg.train.method = "vanilla"
    method = build_method(cfg, build_detector(_cheap_model_cfg(), K), K)
    hist = _overfit(method, images, targets, 30)
    first, last = hist[0][0]["loss"], sum(h[0]["loss"] for h in hist[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    for term in ("loss_classifier", "loss_objectness"):  # both heads learn, not only one term
        assert sum(h[0][term] for h in hist[-5:]) / 5 < hist[0][0][term], term


def test_ssddet_overfits_noisy_images(tmp_path):
    """SSD-Det on 2 images whose `boxes` are noisy (OA-MIL noise 0.3) and `true_boxes` clean: the refiner's
    boxes end closer to the clean boxes than the noisy boxes are, the whole model learns (total loss halves; the
    stage-I MIL loss and the SISD loss fall), and the IoU statistics are computed against the right boxes
    (iou_noisy equals the IoU of the noisy and clean boxes computed here, in the original image frame:
    `true_boxes` follow the detector's resize).

    Torch seed 0 on one thread, so the run is the same every time. Measured with the current refiner defaults
    (noisy boxes 0.545; mean iou_refined of the last 5 of 25 steps): 0.61 at seed 0, and 0.55-0.64 over seeds
    0-5, above the noisy boxes on every one."""
    torch.manual_seed(0)
    images, targets = _batch(tmp_path, noise=0.3)
    expected_noisy_iou = float(aligned_iou(torch.cat([t["boxes"] for t in targets]),
                                           torch.cat([t["true_boxes"] for t in targets])).mean())
    assert expected_noisy_iou < 0.8  # the noise is substantial
    cfg = Config()
    cfg.train.method = "ssddet"
    cfg.ssddet.sampler, cfg.ssddet.trunk_dim, cfg.ssddet.num_negatives = "small", 64, 32
    cfg.ssddet.keep_given = False  # the refiner itself must learn to move boxes (tests/test_ssddet_keep.py: keeping)
    method = build_method(cfg, build_detector(_cheap_model_cfg(), K), K)
    hist = _overfit(method, images, targets, 25)
    losses = [h[0] for h in hist]
    stats = [h[1] for h in hist]

    # the total falls by ~half in 25 steps (4.85 -> 2.41 / 2.50 over the last 3, 1x1 conv bias trained / fixed)
    assert sum(h["loss"] for h in losses[-3:]) / 3 < 0.6 * losses[0]["loss"]
    for term in ("loss_mil1", "loss_sisd"):
        assert sum(h[term] for h in losses[-3:]) / 3 < losses[0][term], term
    for s in stats:
        assert s["iou_noisy"] == pytest.approx(expected_noisy_iou, abs=1e-4)
        assert 0.0 <= s["iou_refined"] <= 1.0 and math.isfinite(s["iou_stage1"])
        assert s["num_objects"] == 4 and s["num_skipped"] == 0
    late_refined = sum(s["iou_refined"] for s in stats[-5:]) / 5
    # a refiner that leaves the boxes as they are, or moves them away from the objects, fails here
    assert late_refined > expected_noisy_iou + 0.02, (late_refined, expected_noisy_iou)


@pytest.mark.parametrize("progress", [0.0, 0.9])
def test_oamil_forward_backward_finite(progress, tmp_path):
    """progress 0: plain OA-MIL loss only; 0.9 (past oais_start=1/12 and oaie_start=8/12): OA-IS moves the
    regression targets and OA-IE adds oaie_num=4 refinement rounds."""
    torch.manual_seed(0)
    images, targets = _batch(tmp_path, noise=0.3)
    cfg = Config()
    cfg.train.method = "oamil"
    method = build_method(cfg, build_detector(_cheap_model_cfg(), K), K).train()
    losses, stats = method(images, _fresh(targets), progress)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
                           "loss_oamil"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_oamil"] > 0
    sum(losses.values()).backward()
    grads = [p.grad for p in method.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert method.detector.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    assert stats["num_rounds"] == (5.0 if progress > 0.5 else 1.0)
    assert stats["num_bags"] > 0 and 0.0 < stats["iou_noisy"] < 1.0
    if progress == 0.0:
        assert stats["iou_refined"] == pytest.approx(stats["iou_noisy"])  # OA-IS off: targets unchanged


# ------------------------------------------------------------------------------------------------ deployment
@pytest.mark.parametrize("name", ["ssddet", "oamil"])
def test_deployed_state_dict_is_plain_faster_rcnn(name):
    mcfg = ModelConfig(min_size=64, max_size=96)
    cfg = Config()
    cfg.train.method = name
    method = build_method(cfg, build_detector(mcfg, 3), 3)
    plain = build_detector(mcfg, 3).state_dict()
    deployed = method.detector.state_dict()
    assert list(deployed) == list(plain)
    assert all(deployed[k].shape == plain[k].shape and deployed[k].dtype == plain[k].dtype for k in plain)
    det_params = {id(p) for p in method.detector.parameters()}
    extra = [k for k, p in method.named_parameters() if id(p) not in det_params]
    own = method.state_dict()  # what checkpoint.pt holds: the detector (prefixed) + training-only parts
    assert {k.removeprefix("detector.") for k in own if k.startswith("detector.")} == set(plain)
    training_only = [k for k in own if not k.startswith("detector.")]
    if name == "ssddet":
        assert any(k.startswith("refiner.") for k in extra)  # the refiner's parameters ...
        assert any(k.startswith("refiner.") for k in training_only)
        assert not any("refiner" in k for k in deployed)  # ... are not in the deployed model
    else:
        assert extra == [] and training_only == []  # OA-MIL adds no parameters or state


def _plain_torchvision(backbone: str, num_classes: int) -> FasterRCNN:
    """A Faster R-CNN built with the torchvision API only (no ssddet code)."""
    if backbone == "mobilenet_v3_large_fpn":
        return fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
    body = resnet_fpn_backbone(backbone_name=backbone.removesuffix("_fpn"), weights=None,
                               norm_layer=nn.BatchNorm2d, trainable_layers=5)
    return FasterRCNN(body, num_classes=num_classes)


@pytest.mark.parametrize(("method", "backbone"),
                         [("ssddet", "mobilenet_v3_large_fpn"), ("oamil", "resnet18_fpn")])
def test_model_final_loads_into_plain_torchvision(method, backbone, tmp_path):
    data = write_shapes_coco(tmp_path / "data", n_train=2, n_val=1)
    out = tmp_path / "run"
    assert main(train_args(data, out, method, 1, 2, "--backbone", backbone, "--noise", "0.3",
                           "--max-iters-per-epoch", "1")) == 0
    ck = torch.load(out / "model_final.pt", map_location="cpu", weights_only=True)
    assert set(ck) == {"model", "meta"}
    assert ck["meta"]["num_classes"] == K and ck["meta"]["model"]["backbone"] == backbone
    assert ck["meta"]["box_coder"] == "xywh"  # decodable by torchvision's own box coder
    model = _plain_torchvision(backbone, K + 1)
    model.load_state_dict(ck["model"], strict=True)
    model.eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 96, 96)])
    assert set(det) == {"boxes", "labels", "scores"}


def test_load_detector_round_trip_and_mismatch(tmp_path):
    """engine.inference.load_detector rebuilds a deployable file exactly; weights that do not fit the model its
    metadata describes give a UserError (not a raw RuntimeError traceback)."""
    mcfg = _cheap_model_cfg("mobilenet_v3_large_fpn")
    torch.manual_seed(0)
    det = build_detector(mcfg, K)
    meta = {"model": dataclasses.asdict(mcfg), "num_classes": K, "method": "vanilla", "box_coder": "xywh",
            "categories": [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}]}
    atomic_save(deployable(det, meta), tmp_path / "model.pt")
    loaded, got = load_detector(tmp_path / "model.pt")
    assert not loaded.training and got["num_classes"] == K
    assert all(torch.equal(v, det.state_dict()[k]) for k, v in loaded.state_dict().items())
    atomic_save(deployable(det, {**meta, "model": {**meta["model"], "backbone": "resnet18_fpn"}}),
                tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="do not fit"):
        load_detector(tmp_path / "wrong.pt")


# ----------------------------------------------------------------------------------------------- weight files
def _model_cfg_from_cli(*args: str) -> ModelConfig:
    """The ModelConfig `ssddet train ARGS` would use (the CLI plumbing, without training)."""
    return config_from_args(build_parser().parse_args(["train", "--out", "x", *args])).model


def test_backbone_weights_from_torchvision_resnet18(tmp_path):
    torch.manual_seed(123)
    ref = resnet18(weights=None)
    with torch.no_grad():
        ref.layer4[1].bn2.running_var.uniform_(0.5, 2.0)  # a buffer too, not only parameters
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    mcfg = _model_cfg_from_cli("--backbone", "resnet18_fpn", "--backbone-weights", str(path),
                               "--min-size", "64", "--max-size", "96")
    assert mcfg.backbone_weights == str(path)
    torch.manual_seed(0)
    model = build_detector(mcfg, K)
    body = model.backbone.body.state_dict()
    src = ref.state_dict()
    assert set(body) <= set(src)  # every body tensor has a torchvision name (fc.* is not used)
    for k, v in body.items():
        assert torch.equal(v, src[k]), k
    # pretrained backbone: the stem is frozen like the papers (trainable_backbone_layers=3)
    assert not model.backbone.body.conv1.weight.requires_grad
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad
    assert model.backbone.body.layer4[0].conv1.weight.requires_grad
    # rebuilding that run's model for its saved weights reads no file and matches its (frozen-BN) layout
    path.unlink()
    rebuilt = build_trained_detector(mcfg, K)
    assert isinstance(rebuilt.backbone.body.bn1, FrozenBatchNorm2d)
    rebuilt.load_state_dict(model.state_dict())
    assert not isinstance(build_trained_detector(_cheap_model_cfg("resnet18_fpn"), K).backbone.body.bn1,
                          FrozenBatchNorm2d)


def test_backbone_weights_mismatch_is_data_error(tmp_path, capsys):
    wrong = tmp_path / "mobilenet.pth"
    torch.save(mobilenet_v3_large(weights=None).state_dict(), wrong)
    with pytest.raises(UserError, match=r"backbone tensors match this backbone"):
        build_detector(ModelConfig(backbone="resnet18_fpn", backbone_weights=str(wrong)), K)
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(UserError, match="expected a state_dict"):
        build_detector(ModelConfig(backbone="resnet18_fpn", backbone_weights=str(not_a_dict)), K)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(UserError, match="cannot load weights"):
        build_detector(ModelConfig(backbone="resnet18_fpn", backbone_weights=str(garbage)), K)
    with pytest.raises(UserError, match="not found"):
        build_detector(ModelConfig(backbone="resnet18_fpn", backbone_weights=str(tmp_path / "nope.pth")), K)
    # through the CLI: exit status 2 and the message, no traceback
    data = write_shapes_coco(tmp_path / "data", n_train=2, n_val=1)
    assert main(train_args(data, tmp_path / "run", "vanilla", 1, 2, "--backbone", "resnet18_fpn",
                           "--backbone-weights", str(wrong))) == 2
    err = capsys.readouterr().err
    assert "mobilenet.pth" in err and "match" in err and "Traceback" not in err


def test_detector_weights_file(tmp_path):
    torch.manual_seed(1)
    src_model = build_detector(_cheap_model_cfg("mobilenet_v3_large_fpn"), K)
    src = src_model.state_dict()
    raw = tmp_path / "detector.pth"
    torch.save(src, raw)
    wrapped = tmp_path / "model_final.pt"  # what a run writes: {"model": state_dict, "meta": ...}
    torch.save({"model": src, "meta": {"num_classes": K}}, wrapped)
    for path in (raw, wrapped):
        mcfg = _model_cfg_from_cli("--weights", str(path), "--min-size", "64", "--max-size", "96",
                                   "--backbone", "mobilenet_v3_large_fpn")
        assert mcfg.weights == str(path)
        torch.manual_seed(2)  # a different init, which the file must overwrite
        loaded = build_detector(mcfg, K).state_dict()
        assert all(torch.equal(loaded[k], src[k]) for k in src)
    # another class count: the class-dependent layers keep their fresh init, everything else loads
    torch.manual_seed(2)
    other = build_detector(ModelConfig(backbone="mobilenet_v3_large_fpn", min_size=64, max_size=96,
                                       weights=str(raw)), 5).state_dict()
    head = ("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred")
    assert other["roi_heads.box_predictor.cls_score.weight"].shape[0] == 6
    assert all(torch.equal(other[k], src[k]) for k in src if not k.startswith(head))
    # a detector of another backbone does not fit
    with pytest.raises(UserError, match="detector tensors match"):
        build_detector(ModelConfig(backbone="resnet18_fpn", weights=str(raw)), K)


def test_param_groups_give_the_refiner_its_lr_multiplier():
    cfg = Config()
    cfg.ssddet.refiner_lr_mult = 8.0
    method = build_method(cfg, build_detector(_cheap_model_cfg(), K), K)
    base, refiner = method.param_groups(0.01)
    assert base["lr"] == 0.01 and refiner["lr"] == pytest.approx(0.08)
    assert {id(p) for p in refiner["params"]} == {id(p) for p in method.refiner.parameters() if p.requires_grad}
    # the fixed 1x1 trunk conv weights (trunk_reduce_train=false) are in no group; everything else of the
    # refiner is, their biases included (trunk_bias_train=true)
    assert {n for n, p in method.refiner.named_parameters() if not p.requires_grad} == {"trunk.0.weight",
                                                                                      "sisd.trunk.0.weight"}
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    ids = [id(p) for g in (base, refiner) for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == trainable  # every trainable tensor once, frozen ones never
    cfg.train.method = "vanilla"
    (only,) = build_method(cfg, build_detector(_cheap_model_cfg(), K), K).param_groups(0.01)
    assert only["lr"] == 0.01


def test_refiner_decays_after_refiner_decay_epochs_at_the_latest():
    """ssddet.refiner_decay_epochs E: the refiner's first decay point is min(train.lr_steps[0], E / epochs); the
    detector keeps train.lr_steps (or det_lr_steps). Schedules of <= 6 epochs with the default steps are unchanged."""
    from ssddet.engine.train import lr_factor
    from ssddet.models.methods.ssddet import refiner_lr_steps

    steps = [8 / 12, 11 / 12]
    assert refiner_lr_steps(steps, 12, 4.0) == [4 / 12, 11 / 12]
    assert refiner_lr_steps(steps, 6, 4.0) == steps and refiner_lr_steps(steps, 4, 4.0) == steps
    assert refiner_lr_steps(steps, 12, 0.0) == steps  # off
    assert refiner_lr_steps([0.9, 0.5], 10, 1.0) == [0.1, 0.9]  # the earliest point moves, in any order
    cfg = Config()
    cfg.train.epochs, cfg.train.warmup_iters = 12, 0
    det, ref = build_method(cfg, build_detector(_cheap_model_cfg(), K), K).param_groups(0.01, cfg.train)
    assert "lr_steps" not in det and ref["lr_steps"] == [4 / 12, 11 / 12]
    # 120 iterations (10 per epoch): the refiner's LR drops after epoch 4, the detector's after epoch 8
    refiner_lr = [lr_factor(it, 120, cfg.train, ref["lr_steps"]) for it in (39, 40, 79, 80, 110)]
    detector_lr = [lr_factor(it, 120, cfg.train, det.get("lr_steps")) for it in (39, 40, 79, 80, 110)]
    assert refiner_lr == pytest.approx([1, 0.1, 0.1, 0.1, 0.01])
    assert detector_lr == pytest.approx([1, 1, 1, 0.1, 0.01])
    for bad in ("-1", "nan", "inf", "true"):
        with pytest.raises(UserError, match="refiner_decay_epochs"):
            config_from_args(build_parser().parse_args(["train", "--set", f"ssddet.refiner_decay_epochs={bad}"]))


def test_l1_box_loss_is_the_released_configs(tmp_path):
    """train.box_loss="l1": same sampled RoIs and classifier loss as torchvision's head, the box term is L1."""
    images, targets = _batch(tmp_path)
    losses = {}
    for box_loss in ("smooth_l1", "l1"):
        cfg = Config()
        cfg.train.method, cfg.train.box_loss = "vanilla", box_loss
        torch.manual_seed(0)
        method = build_method(cfg, build_detector(_cheap_model_cfg(), K), K).train()
        torch.manual_seed(1)  # same RPN and RoI sampling in both passes
        losses[box_loss] = {k: float(v.detach()) for k, v in method(images, [dict(t) for t in targets])[0].items()}
    assert losses["l1"]["loss_classifier"] == pytest.approx(losses["smooth_l1"]["loss_classifier"])
    # smooth L1 (beta 1/9) is L1 minus up to beta/2 per coordinate: never above it, and close to it
    assert losses["smooth_l1"]["loss_box_reg"] <= losses["l1"]["loss_box_reg"] + 1e-6
    assert losses["l1"]["loss_box_reg"] > 0
    cfg.train.box_loss = "l2"
    with pytest.raises(UserError, match="unknown train.box_loss 'l2'"):
        build_method(cfg, build_detector(_cheap_model_cfg(), K), K)
    cfg.train.method, cfg.train.box_loss = "oamil", "l1"
    with pytest.raises(UserError, match="follows oamil.box_coder"):
        build_method(cfg, build_detector(_cheap_model_cfg(), K), K)


@pytest.mark.parametrize("backbone", ["resnet18_fpn", "efficientnet_lite0_fpn"])
def test_box_bg_iou_thresh_ignores_proposals_between_it_and_fg(backbone):
    """model.box_bg_iou_thresh: a proposal at IoU 0.45 with the only box is background by default and ignored
    (label -1, never sampled) at 0.4; one at 0.3 is background either way, one at 0.6 foreground."""
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # IoU with box: 6x10 / 100 = 0.6; 4.5x10 = 0.45; 3x10 = 0.3
    props = [torch.tensor([[0.0, 0.0, 6.0, 10.0], [0.0, 0.0, 4.5, 10.0], [0.0, 0.0, 3.0, 10.0]])]
    labels = {}
    for thresh in (0.5, 0.4):
        det = build_detector(_cheap_model_cfg(backbone, box_bg_iou_thresh=thresh, pretrained="none"), K)
        _, got = det.roi_heads.assign_targets_to_proposals(props, [box], [torch.tensor([2])])
        labels[thresh] = got[0].tolist()
    assert labels == {0.5: [2, 0, 0], 0.4: [2, -1, 0]}


def test_ssddet_lifts_the_ignore_band_while_it_trusts_the_given_boxes():
    """Under SSD-Det the band is for targets the refiner is still moving: while the refiner trusts the given boxes
    (running agreement >= trust_agreement after the warm-up) the R-CNN samples as vanilla does (IoU 0.45:
    background); otherwise, and during the warm-up, the configured band ignores it."""
    cfg = Config()
    cfg.model = _cheap_model_cfg("resnet18_fpn", box_bg_iou_thresh=0.4, pretrained="none")
    method = build_method(cfg, build_detector(cfg.model, K), K)
    box, prop = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), [torch.tensor([[0.0, 0.0, 4.5, 10.0]])]  # IoU 0.45

    def label_at(progress: float) -> tuple[bool, int]:
        band = method.sampling_band(progress)
        _, labels = method.detector.roi_heads.assign_targets_to_proposals(prop, [box], [torch.tensor([2])])
        return band, int(labels[0][0])

    assert label_at(0.9) == (True, -1)  # nothing known about the boxes yet: the band
    method.refiner.keep.mode.fill_(cfg.ssddet.trust_mode + 0.01)  # the default rule: a mode of exact boxes
    assert label_at(0.9) == (False, 0)
    method.refiner.keep.mode.fill_(cfg.ssddet.trust_mode - 0.03)
    assert label_at(0.9) == (True, -1)
    cfg.ssddet.trust_agreement = 0.68  # the dataset-wide rule, an option
    method.refiner.keep.agreement.fill_(cfg.ssddet.trust_agreement + 0.01)
    assert label_at(0.9) == (False, 0)  # trusted: vanilla's sampling
    assert label_at(0.1) == (True, -1)  # the warm-up never trusts
    method.refiner.keep.agreement.fill_(cfg.ssddet.trust_agreement - 0.01)
    assert label_at(0.9) == (True, -1)
    cfg.ssddet.keep_given = False  # no keep-the-box step: the given boxes are never the targets as such
    method.refiner.keep.agreement.fill_(0.99)
    assert label_at(0.9) == (True, -1)
    cfg.ssddet.band_until = 0.8  # lifted from 80 % of training on, trusted or not
    assert label_at(0.79) == (True, -1)
    assert label_at(0.8) == (False, 0)


def test_box_bg_iou_thresh_above_fg_is_refused():
    with pytest.raises(UserError, match="box_bg_iou_thresh"):
        config_from_args(build_parser().parse_args(["train", "--set", "model.box_bg_iou_thresh=0.7"]))


def test_ssddet_det_reset_reinitialises_the_detector_heads_once():
    """ssddet.det_reset: at that fraction of training the RPN head, box head and predictor are drawn afresh, in
    place (the optimizer's parameters stay the same objects), once; the backbone and the refiner are untouched."""
    cfg = Config()
    cfg.model = _cheap_model_cfg("resnet18_fpn", pretrained="none")
    cfg.ssddet.det_reset = 0.5
    method = build_method(cfg, build_detector(cfg.model, K), K).train()
    with torch.no_grad():
        for p in method.parameters():
            p.add_(1.0)
    before = {k: p.detach().clone() for k, p in method.named_parameters()}
    images, targets = [torch.rand(3, 64, 80)], [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]),
                                                 "labels": torch.tensor([1])}]
    method(images, targets, progress=0.4)
    assert all(torch.equal(p, before[k]) for k, p in method.named_parameters())  # not yet
    method(images, targets, progress=0.5)
    after = dict(method.named_parameters())
    moved = {k for k, p in after.items() if not torch.equal(p, before[k])}
    names = {k for k in after if k.startswith(("detector.rpn.head", "detector.roi_heads"))}
    assert moved == names and len(names) >= 6
    rpn_conv = method.detector.rpn.head.cls_logits
    assert rpn_conv.bias.abs().max() == 0 and rpn_conv.weight.std() < 0.02  # torchvision's RPNHead init
    assert bool(method.heads_reset) and "heads_reset" in method.state_dict()
    again = {k: p.detach().clone() for k, p in after.items()}
    method(images, targets, progress=0.9)  # once only
    assert all(torch.equal(p, again[k]) for k, p in method.named_parameters())


def test_ignore_unannotated_leaves_out_confident_background_far_from_every_box():
    """A background RoI the head scores >= min_score for a class, overlapping every annotated box below IoU 0.2,
    is left out (-100); one near an annotated box, a positive, and an unconfident one are not."""
    from ssddet.models.rcnn_head import ignore_unannotated

    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0], [0.0, 0, 0]])
    labels = [torch.tensor([0, 0, 0]), torch.tensor([2, 0])]
    props = [torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 9]]),
             torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])]
    gt = [torch.tensor([[0.0, 0, 10, 10]]), torch.zeros(0, 4)]
    out, n = ignore_unannotated(logits, labels, props, gt, 0.5)
    assert out.tolist() == [0, -100, 0, 2, 0] and n == 1  # the last: softmax 1/3 < 0.5
    out, n = ignore_unannotated(logits, labels, props, gt, 0.3)  # an image without boxes: every RoI is far
    assert out.tolist() == [0, -100, 0, 2, -100] and n == 2
    # every sampled RoI flagged: nothing would be left to learn from (and the loss would be NaN): all stay in
    out, n = ignore_unannotated(logits[1:2], [torch.tensor([0])], [props[0][1:2]], [gt[0]], 0.5)
    assert out.tolist() == [0] and n == 0


def test_ssddet_unannotated_score_changes_only_the_classifier_loss(tmp_path):
    """ssddet.unannotated_score: same sampled RoIs, same box loss; the classifier loss leaves RoIs out once the
    threshold is low enough to flag some (a fresh head scores every class about 1/(K+1))."""
    images, targets = _batch(tmp_path)
    out = {}
    for score in (0.0, 1.0, 0.2):
        cfg = Config()
        cfg.model = _cheap_model_cfg(pretrained="none")
        cfg.ssddet.unannotated_score = score
        torch.manual_seed(0)
        method = build_method(cfg, build_detector(cfg.model, K), K).train()
        torch.manual_seed(1)
        losses, stats = method(images, _fresh(targets))
        out[score] = ({k: float(v.detach()) for k, v in losses.items()}, stats.get("rcnn_unannotated"))
    assert out[0.0][1] is None and out[1.0][1] == 0.0 and out[0.2][1] > 0
    assert out[1.0][0] == pytest.approx(out[0.0][0])  # the explicit path is torchvision's head, to the digit
    assert out[0.2][0]["loss_box_reg"] == pytest.approx(out[0.0][0]["loss_box_reg"])
    assert out[0.2][0]["loss_classifier"] != pytest.approx(out[0.0][0]["loss_classifier"])
    for bad in ("-0.1", "1.5", "true"):
        with pytest.raises(UserError, match="unannotated_score"):
            config_from_args(build_parser().parse_args(["train", "--set", f"ssddet.unannotated_score={bad}"]))
