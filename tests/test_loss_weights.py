"""Loss weights live in one dictionary built from the config (`methods.loss_weights`, DETR's `weight_dict`):
the refiner, the OA-MIL head and torchvision's heads return unweighted terms, `weighted_total` weighs them.
Pinned on hand-built terms: the weighted total equals what the code optimised when each module weighed its own
terms (refiner: w_spsd1 ... w_sisd; SSD-Det wrapper: w_det, w_rpn_box; OA-MIL loss: lambda * (...))."""
from __future__ import annotations

import pytest
import torch

from ssddet.config import Config, ModelConfig
from ssddet.models.detector import build_detector
from ssddet.models.methods import build_method, loss_weights, weighted_total
from ssddet.models.oamil import oamil_loss

DETECTOR = {"loss_objectness": 0.7, "loss_rpn_box_reg": 0.3, "loss_classifier": 1.1, "loss_box_reg": 0.9}
REFINER = {"loss_spsd1": 0.5, "loss_mil1": 1.5, "loss_spsd2": 0.25, "loss_mil2": 2.0, "loss_neg": 0.1,
           "loss_sisd": 0.2}


def _config(method: str) -> Config:
    cfg = Config()
    cfg.train.method = method
    return cfg


def _tensors(terms: dict) -> dict:
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in terms.items()}


def test_ssddet_total_equals_the_old_weighted_sum():
    released = _config("ssddet")
    released.ssddet.w_det = 4.0  # the released det_loss_weight (the default is 1.0: method.md 4, row 19)
    total = weighted_total(_tensors({**REFINER, **DETECTOR}), loss_weights(released))
    # before: the refiner returned 0.25 * spsd1, 0.25 * mil1, 0.25 * spsd2, 0.25 * mil2, 0.75 * neg, 5 * sisd,
    # and the wrapper's weight_losses 4 * objectness, 1 * rpn box, 4 * classifier, 4 * box
    old = (0.25 * 0.5 + 0.25 * 1.5 + 0.25 * 0.25 + 0.25 * 2.0 + 0.75 * 0.1 + 5.0 * 0.2
           + 4.0 * 0.7 + 1.0 * 0.3 + 4.0 * 1.1 + 4.0 * 0.9)
    assert old == pytest.approx(13.2375)
    assert total.item() == pytest.approx(old, abs=1e-12)
    default = weighted_total(_tensors({**REFINER, **DETECTOR}), loss_weights(_config("ssddet")))
    assert default.item() == pytest.approx(2.1375 + 0.7 + 0.3 + 1.1 + 0.9, abs=1e-12)
    cfg = _config("ssddet")
    cfg.ssddet.w_sisd, cfg.ssddet.w_det = 1.0, 2.0  # the config fields drive the weights
    assert weighted_total(_tensors({**REFINER, **DETECTOR}), loss_weights(cfg)).item() == pytest.approx(
        old - 4.0 * 0.2 - 2.0 * (0.7 + 1.1 + 0.9), abs=1e-12)


def test_oamil_and_vanilla_totals_equal_the_old_ones():
    scores = [torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64),
              torch.tensor(0.8, dtype=torch.float64)]
    terms = {**_tensors(DETECTOR), "loss_oamil": oamil_loss(scores, "refine", 1.0)}  # unweighted: 0.5 + 0.3
    # before: loss_oamil = lambda * [(1 - S_0) + coef * (1 - mean(S_1, S_2))] = 0.1 * 0.8, the rest unweighted
    assert weighted_total(terms, loss_weights(_config("oamil"))).item() == pytest.approx(3.0 + 0.08, abs=1e-12)
    assert loss_weights(_config("vanilla")) == {}
    assert weighted_total(_tensors(DETECTOR), {}).item() == pytest.approx(3.0, abs=1e-12)


@pytest.mark.parametrize("method", ["vanilla", "ssddet", "oamil"])
def test_build_method_carries_the_config_weights(method):
    cfg = _config(method)
    det = build_detector(ModelConfig(backbone="resnet18_fpn", pretrained="none", min_size=64, max_size=96), 2)
    built = build_method(cfg, det, 2)
    assert built.loss_weights == loss_weights(cfg)
    terms = _tensors({**DETECTOR, **(REFINER if method == "ssddet" else {}), "loss_oamil": 0.8})
    assert built.total_loss(terms).item() == pytest.approx(weighted_total(terms, loss_weights(cfg)).item())


def test_det_ramp_scales_only_the_detector_terms():
    cfg = _config("ssddet")
    cfg.ssddet.det_ramp = 0.5
    det = build_detector(ModelConfig(backbone="resnet18_fpn", pretrained="none", min_size=64, max_size=96), 2)
    built = build_method(cfg, det, 2)
    terms = _tensors({**REFINER, **DETECTOR})
    refiner = 2.1375  # the refiner's weighted terms (test above); the detector's weigh 1 each: 3.0
    for progress, scale in ((0.0, 0.0), (0.25, 0.5), (0.5, 1.0), (0.9, 1.0)):
        built.progress = progress
        assert built.total_loss(terms).item() == pytest.approx(refiner + scale * 3.0, abs=1e-12)
    cfg.ssddet.det_ramp = 0.0  # off: the plain weighted total at any progress
    off = build_method(cfg, det, 2)
    off.progress = 0.0
    assert off.total_loss(terms).item() == pytest.approx(refiner + 3.0, abs=1e-12)
