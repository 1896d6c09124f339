"""The named scopes of a training step (models/profiling.py) change no result, with or without a timer or a torch
profiler; the timer's nested accounting; `benchmarks/speed.py --profile` end to end on a tiny set."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import CHEAP_MODEL_FIELDS, identical, load_benchmark, write_shapes_coco

from ssddet.config import Config
from ssddet.data.coco import load_coco
from ssddet.data.dataset import CocoDetection
from ssddet.models import profiling
from ssddet.models.detector import build_detector
from ssddet.models.methods import build_method
from ssddet.models.profiling import StepTimer, scope, timing

ROOT = Path(__file__).resolve().parents[1]
CHEAP = {**{f"model.{k}": v for k, v in CHEAP_MODEL_FIELDS.items()}, "model.backbone": "resnet18_fpn",
         "model.pretrained": "none", "model.min_size": 64, "model.max_size": 96, "ssddet.trunk_dim": 64,
         "ssddet.num_negatives": 32, "ssddet.max_objects_per_image": 3}
REFINER_SCOPES = {"refiner", "refiner.bags", "refiner.roi_align", "refiner.trunks", "refiner.spsd", "refiner.mil",
                  "refiner.negatives", "refiner.sisd", "refiner.keep", "refiner.mirror"}
SCOPES = {"transform", "backbone", "rpn", "rcnn", "bank", "ssddet.targets", *REFINER_SCOPES}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg() -> Config:
    cfg = Config()
    for name, value in CHEAP.items():
        section, key = name.split(".")
        setattr(getattr(cfg, section), key, value)
    return cfg


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = write_shapes_coco(tmp_path_factory.mktemp("prof") / "shapes", n_train=2, n_val=0)
    ds = CocoDetection(load_coco(root / "annotations.json").select("train"))
    images, targets = zip(*[ds[i] for i in range(len(ds))])
    for t in targets:  # noisy boxes with their clean ones, so every statistic runs too
        t["true_boxes"] = t["boxes"].clone()
        t["boxes"] = t["boxes"] + torch.tensor([2.0, -1.0, 3.0, 1.0])
    return list(images), list(targets)


def _train(batch, steps: int = 3) -> tuple[list, list]:
    """SSD-Det steps from a fixed seed -> (losses per step, gradients per step)."""
    torch.manual_seed(0)
    cfg = _cfg()
    method = build_method(cfg, build_detector(cfg.model, 2), 2).train()
    opt = torch.optim.SGD(method.param_groups(0.01, cfg.train), lr=0.01, momentum=0.9)
    images, targets = batch
    losses_seen, grads_seen = [], []
    for _ in range(steps):
        losses, _ = method(images, [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in t.items()}
                                    for t in targets], 0.5)
        opt.zero_grad(set_to_none=True)
        method.total_loss(losses).backward()
        losses_seen.append({k: v.detach().clone() for k, v in losses.items()})
        grads_seen.append([p.grad.clone() for p in method.parameters() if p.grad is not None])
        opt.step()
    return losses_seen, grads_seen


def test_scopes_change_no_result(batch):
    """The same losses and gradients, bit for bit, plain, under a StepTimer and under torch.profiler (which sees
    the scopes by name)."""
    plain = _train(batch)
    timer = StepTimer()
    with timing(timer):
        timed = _train(batch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        profiled = _train(batch)
    assert identical(plain, timed) and identical(plain, profiled)
    assert set(timer.calls) == SCOPES
    assert SCOPES <= {e.key for e in prof.key_averages()}


def test_scopes_are_a_shared_no_op_when_nothing_listens():
    assert profiling._timer is None
    assert scope("backbone") is scope("rpn")  # one nullcontext, no record_function


def test_timer_nested_accounting():
    timer = StepTimer()
    with timing(timer):
        with scope("outer"):
            sum(range(10000))
            for _ in range(2):
                with scope("inner"):
                    sum(range(10000))
    assert profiling._timer is None  # restored
    assert timer.calls == {"outer": 1, "inner": 2}
    assert timer.total_s["outer"] == pytest.approx(timer.self_s["outer"] + timer.total_s["inner"], abs=1e-12)
    assert timer.self_s["inner"] == timer.total_s["inner"] > 0


def test_speed_profile_end_to_end(tmp_path, monkeypatch, capsys):
    """`benchmarks/speed.py --profile`: every part timed, the rows add up to the step, the backward split in two
    (the refiner's features are detached), a JSON and a markdown table; --trace writes a Chrome trace."""
    data = write_shapes_coco(tmp_path / "shapes", n_train=6, n_val=1)
    speed = load_benchmark("speed")
    sets = ";".join(f"{k}={json.dumps(v)}" for k, v in CHEAP.items())
    out, trace = tmp_path / "res" / "profile.json", tmp_path / "trace.json"
    monkeypatch.setattr(sys, "argv", ["speed.py", "--profile", "--data", str(data), "--noise", "0.3", "--steps",
                                      "2", "--warmup", "1", "--threads", "1", "--set", sets, "--profile-out",
                                      str(out), "--trace", str(trace)])
    speed.main()
    res = json.loads(out.read_text())
    assert res["settings"]["backward_split"] is True and res["config"]["model"]["min_size"] == 64
    (run,) = res["runs"]
    assert run["threads"] == 1 and run["steps"] == 2 and not run["unlisted_scopes"]
    scopes = {p["scope"] for p in run["parts"]}
    # the mirror view measures one step in 8: of the 2 timed steps, none or one
    assert SCOPES - {"refiner.mirror"} | {"forward", "backward.refiner", "backward.detector", "clip", "optimizer",
                                          None} == scopes - {"refiner.mirror"}
    for step in run["per_step"]:  # own times + the rest = the step
        assert sum(step["self_ms"].values()) + step["other_ms"] == pytest.approx(step["step_ms"])
    printed = capsys.readouterr().out
    assert "| refiner: RoIAlign forward |" in printed and "| backward: refiner |" in printed
    assert trace.is_file() and run["trace"] == str(trace)
