"""`ssddet train` / `ssddet eval` end to end on a tiny dataset of coloured rectangles (CPU, seconds per run):
run files, logs, checkpoints, eval parity with the last epoch, NaN policies and the LR schedule."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import read_log, train_args, write_shapes_coco

from ssddet.cli import main
from ssddet.config import Config
from ssddet.engine import train as train_mod
from ssddet.engine.checkpoint import load_checkpoint
from ssddet.engine.train import lr_factor
from ssddet.models.methods import DetectionMethod, loss_weights


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tests share 2 cores with other work (and determinism across processes needs
    the same thread count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def shapes(tmp_path) -> Path:
    return write_shapes_coco(tmp_path / "shapes")


# ----------------------------------------------------------------------------------------------- train + eval
LOSS_TERMS = {
    "vanilla": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
    "ssddet": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_spsd1",
               "loss_mil1", "loss_spsd2", "loss_mil2", "loss_neg", "loss_sisd"},
    "oamil": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_oamil"},
}


@pytest.mark.parametrize("method", ["vanilla", "ssddet", "oamil"])
def test_train_writes_run_files_and_eval_matches_last_epoch(method, shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "LOG_EVERY", 1)  # an iteration record per step
    out = tmp_path / "run"
    noise = [] if method == "vanilla" else ["--noise", "0.3"]
    assert main(train_args(shapes, out, method, 2, 2, "--warmup-iters", "0", *noise)) == 0
    for name in ("config.json", "command.txt", "log.jsonl", "checkpoint.pt", "model_best.pt",
                 "model_final.pt", "metrics.json"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir()), "no TensorBoard event file"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["method"] == method and cfg["train"]["epochs"] == 2
    assert cfg["data"]["noise"] == (None if method == "vanilla" else 0.3)
    assert (out / "command.txt").read_text().startswith("# ssddet ")

    recs = read_log(out)
    iters = [r for r in recs if r["kind"] == "train"]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["iteration"] for r in iters] == [1, 2, 3, 4]  # 4 images / batch 2 = 2 it/epoch
    assert [r["epoch"] for r in iters] == [1, 1, 2, 2]  # 1-based, like the epoch records
    weights = loss_weights(Config.from_dict(cfg))
    for r in iters:  # the log keeps each unweighted term and the weighted total that was optimised
        assert LOSS_TERMS[method] <= set(r), set(r)
        assert math.isclose(r["loss"], sum(weights.get(k, 1.0) * r[k] for k in LOSS_TERMS[method]), rel_tol=1e-4)
        assert r["lr"] > 0
    assert [r["epoch"] for r in epochs] == [1, 2] and [r["iteration"] for r in epochs] == [2, 4]
    for r in epochs:
        assert r["skipped_steps"] == 0
        assert LOSS_TERMS[method] | {"loss"} <= set(r["train"])
        assert {"AP", "AP50", "per_class"} <= set(r["val"])
        assert set(r["val"]["per_class"]) == {"red", "green"}
        if method != "vanilla":  # clean-box IoU of the noisy and the refined training boxes
            assert 0.0 < r["train"]["iou_noisy"] < 1.0
            assert 0.0 <= r["train"]["iou_refined"] <= 1.0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"] == epochs[-1]["val"]
    assert metrics["best_AP"] == max(r["val"]["AP"] for r in epochs)
    final = torch.load(out / "model_final.pt", map_location="cpu", weights_only=True)
    assert final["meta"]["method"] == method and final["meta"]["epoch"] == 2
    assert [c["id"] for c in final["meta"]["categories"]] == [3, 7]
    best = torch.load(out / "model_best.pt", map_location="cpu", weights_only=True)
    assert best["meta"]["metrics"]["AP"] == metrics["best_AP"]

    # the deployed model, rebuilt by `ssddet eval`, reproduces the last epoch's validation exactly
    capsys.readouterr()
    res = tmp_path / "dets.json"
    assert main(["eval", "--checkpoint", str(out / "model_final.pt"), "--data", str(shapes), "--split", "val",
                 "--workers", "0", "--json", "--save-results", str(res)]) == 0
    assert json.loads(capsys.readouterr().out) == epochs[-1]["val"]
    assert len(json.loads(res.read_text())) > 0  # the comparison is not between two empty result sets
    # a training checkpoint.pt evaluates the same (its detector part)
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--data", str(shapes), "--split", "val",
                 "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == epochs[-1]["val"]


def test_command_txt_records_the_given_arguments(shapes, tmp_path, monkeypatch):
    seen = {}

    def fake_train(cfg, resume=False, command=None):
        seen["command"] = command
        return {}

    monkeypatch.setattr(train_mod, "train", fake_train)
    assert main(train_args(shapes, tmp_path / "run", "oamil", 1, 2)) == 0
    assert "--method oamil" in seen["command"] and str(tmp_path / "run") in seen["command"]


# ------------------------------------------------------------------------------------------------ NaN policy
def _nan_at(monkeypatch, call: int, term: str = "loss_box_reg") -> None:
    """Make `term` NaN in the `call`-th training forward (1-based)."""
    orig = DetectionMethod.forward
    n = {"calls": 0}

    def forward(self, images, targets, progress=0.0):
        losses, stats = orig(self, images, targets, progress)
        n["calls"] += 1
        if n["calls"] == call:
            losses = {**losses, term: losses[term] * float("nan")}
        return losses, stats

    monkeypatch.setattr(DetectionMethod, "forward", forward)


def test_nan_policy_stop_names_term_and_iteration(shapes, tmp_path, monkeypatch, capsys):
    _nan_at(monkeypatch, 3)
    out = tmp_path / "run"
    assert main(train_args(shapes, out, "vanilla", 2, 2)) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at iteration 3" in err and "loss_box_reg=nan" in err, err
    assert "--nan-policy skip" in err
    # epoch 1 (iterations 1-2) completed and was checkpointed; nothing of epoch 2 was
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_log(out) if r["kind"] == "epoch"] == [1]


def test_nan_policy_skip_counts_and_continues(shapes, tmp_path, monkeypatch):
    _nan_at(monkeypatch, 3, "loss_classifier")
    out = tmp_path / "run"
    assert main(train_args(shapes, out, "vanilla", 2, 2, "--nan-policy", "skip")) == 0
    epochs = [r for r in read_log(out) if r["kind"] == "epoch"]
    assert [r["skipped_steps"] for r in epochs] == [0, 1]
    assert epochs[-1]["iteration"] == 4  # the skipped step still counts as an iteration (LR schedule)
    assert math.isfinite(epochs[-1]["train"]["loss"])
    state = torch.load(out / "model_final.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert load_checkpoint(out / "checkpoint.pt")["skipped"] == 1


def test_nan_gradient_with_finite_loss_is_caught(shapes, tmp_path, monkeypatch, capsys):
    """A finite loss whose gradient is NaN must not silently turn the weights into NaN."""
    orig = DetectionMethod.forward
    n = {"calls": 0}

    def forward(self, images, targets, progress=0.0):
        losses, stats = orig(self, images, targets, progress)
        n["calls"] += 1
        if n["calls"] == 2:
            poison = self.detector.roi_heads.box_predictor.cls_score.bias.sum() * 0.0  # value 0
            poison.register_hook(lambda g: g * float("nan"))  # ... gradient NaN
            losses = {**losses, "loss_classifier": losses["loss_classifier"] + poison}
        return losses, stats

    monkeypatch.setattr(DetectionMethod, "forward", forward)
    assert main(train_args(shapes, tmp_path / "stop", "vanilla", 1, 2)) == 2
    err = capsys.readouterr().err
    assert "iteration 2" in err and "grad_norm=nan" in err, err

    n["calls"] = 0
    assert main(train_args(shapes, tmp_path / "skip", "vanilla", 1, 2, "--nan-policy", "skip")) == 0
    epoch = [r for r in read_log(tmp_path / "skip") if r["kind"] == "epoch"][-1]
    assert epoch["skipped_steps"] == 1
    state = torch.load(tmp_path / "skip" / "model_final.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------------ LR schedule
def _sched(**kw):
    base = dict(warmup_iters=10, warmup_factor=0.1, lr_schedule="multistep", lr_steps=[0.5, 0.75],
                lr_gamma=0.1)
    return SimpleNamespace(**{**base, **kw})


def test_lr_factor_warmup_and_multistep():
    cfg = _sched()
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(5, 100, cfg) == pytest.approx(0.1 + 0.9 * 5 / 10)  # linear warm-up
    assert lr_factor(9, 100, cfg) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)  # warm-up over
    assert lr_factor(49, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(50, 100, cfg) == pytest.approx(0.1)  # first step at 50% of training
    assert lr_factor(74, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(75, 100, cfg) == pytest.approx(0.01)
    assert lr_factor(99, 100, cfg) == pytest.approx(0.01)
    # the paper schedule: 12 epochs, steps after epochs 8 and 11, 10 it/epoch
    paper = _sched(warmup_iters=0, lr_steps=[8 / 12, 11 / 12])
    assert [lr_factor(e * 10, 120, paper) for e in (7, 8, 10, 11)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert lr_factor(79, 120, paper) == pytest.approx(1.0)


def test_lr_factor_cosine():
    cfg = _sched(lr_schedule="cosine", warmup_iters=0)
    assert lr_factor(0, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(25, 100, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(50, 100, cfg) == pytest.approx(0.5)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0, abs=1e-12)
    warm = _sched(lr_schedule="cosine", warmup_iters=10, warmup_factor=0.5)
    assert lr_factor(4, 100, warm) == pytest.approx((0.5 + 0.5 * 0.4) * 0.5 * (1 + math.cos(math.pi * 0.04)))


def test_trainer_applies_schedule(shapes, tmp_path, monkeypatch):
    """The LR logged for each iteration is base_lr x lr_factor: LambdaLR is stepped once per step."""
    monkeypatch.setattr(train_mod, "LOG_EVERY", 1)
    out = tmp_path / "run"
    assert main(train_args(shapes, out, "vanilla", 2, 2, "--lr", "0.02", "--warmup-iters", "2",
                           "--lr-schedule", "cosine", "--max-iters-per-epoch", "2")) == 0
    cfg = SimpleNamespace(warmup_iters=2, warmup_factor=0.001, lr_schedule="cosine", lr_steps=[],
                          lr_gamma=0.1)
    lrs = [r["lr"] for r in read_log(out) if r["kind"] == "train"]
    # iteration record k (1-based) shows the LR that step used: lr_factor of 0-based iteration k - 1
    assert lrs == pytest.approx([0.02 * lr_factor(it, 4, cfg) for it in (0, 1, 2, 3)])
    assert lrs[0] == pytest.approx(0.02 * 0.001)  # warm-up starts at warmup_factor


def test_lr_factor_takes_a_groups_own_steps():
    cfg = _sched(warmup_iters=0)
    assert lr_factor(60, 100, cfg) == pytest.approx(0.1)  # cfg.lr_steps [0.5, 0.75]
    assert lr_factor(60, 100, cfg, steps=[0.9]) == pytest.approx(1.0)
    assert lr_factor(95, 100, cfg, steps=[0.9]) == pytest.approx(0.1)
    assert lr_factor(95, 100, cfg, steps=[]) == pytest.approx(1.0)


def test_ssddet_detector_decays_on_its_own_steps(shapes, tmp_path, monkeypatch):
    """ssddet.det_lr_steps moves the detector's decay points; the refiner's heads keep train.lr_steps."""
    monkeypatch.setattr(train_mod, "LOG_EVERY", 1)
    out = tmp_path / "run"
    assert main(train_args(shapes, out, "ssddet", 2, 2, "--noise", "0.3", "--lr", "0.02", "--warmup-iters", "0",
                           "--set", "train.lr_steps=[0.5]", "--set", "ssddet.det_lr_steps=[]",
                           "--set", "ssddet.refiner_lr_mult=2")) == 0
    assert [r["lr"] for r in read_log(out) if r["kind"] == "train"] == pytest.approx([0.02] * 4)
    det, refiner = load_checkpoint(out / "checkpoint.pt")["optimizer"]["param_groups"]
    assert det["lr"] == pytest.approx(0.02) and refiner["lr"] == pytest.approx(0.02 * 2 * 0.1)


def test_time_budget_stops_cleanly_and_deterministic_flag(shapes, tmp_path):
    """train.time_budget_min: the epoch in progress is cut short, evaluated and saved, and the run ends with
    the usual files; train.deterministic switches PyTorch to deterministic kernels."""
    out = tmp_path / "run"
    try:
        assert main(train_args(shapes, out, "vanilla", 5, 2, "--set", "train.time_budget_min=1e-6",
                               "--set", "train.deterministic=true")) == 0
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    (epoch,) = [r for r in read_log(out) if r["kind"] == "epoch"]
    assert epoch["stopped"] == "time budget" and epoch["epoch"] == 1 and epoch["iteration"] == 1
    assert json.loads((out / "metrics.json").read_text())["val"] == epoch["val"]
    ck = load_checkpoint(out / "checkpoint.pt")
    assert (ck["epoch"], ck["iteration"]) == (1, 1)
    assert (out / "model_final.pt").is_file()
