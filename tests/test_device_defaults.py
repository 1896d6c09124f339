"""GPU defaults (engine/device_defaults.py): the values chosen for a device, the fields the user set left alone
wherever they were set, the resolved values recorded for a resume, and the CPU unchanged. The GPU is faked."""
from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from ssddet.cli import main
from ssddet.config import Config
from ssddet.config_overrides import train_config
from ssddet.engine import device_defaults as dd
from ssddet.engine.device_defaults import DeviceInfo, given_fields, gpu_defaults

GIB = 2**30
H100 = DeviceInfo("NVIDIA H100 80GB HBM3", int(79.1 * GIB), cpu_count=16)
V100_16 = DeviceInfo("Tesla V100-SXM2-16GB", int(15.8 * GIB), cpu_count=8)
SMALL = DeviceInfo("GeForce RTX 3070", int(7.8 * GIB), cpu_count=4)


def _sized(min_size: int, max_size: int) -> Config:
    cfg = Config()
    cfg.model.min_size, cfg.model.max_size = min_size, max_size
    return cfg


def test_gpu_defaults_at_the_default_image_size():
    """320x640 needs ~0.46 GiB per image: an 80 GB and a 16 GB GPU both reach the cap of 16 images; the warm-up
    keeps its 200 images; the workers are the CPUs less one, at most 8."""
    big = {"train.batch_size": 16, "train.warmup_iters": 13, "data.num_workers": 8}
    assert gpu_defaults(H100, set(), Config()) == big
    assert gpu_defaults(V100_16, set(), Config()) == {**big, "data.num_workers": 7}
    assert gpu_defaults(SMALL, set(), Config()) == {"train.batch_size": 8, "train.warmup_iters": 25,
                                                    "data.num_workers": 3}


def test_gpu_defaults_follow_the_image_size_and_the_processes():
    """At 800x1333 (~2.4 GiB per image) 16 images fit half of an 80 GB GPU, 3 of a 16 GB one: a power of two,
    never below the CPU default, so 2 (unchanged). Under torchrun the cap is on the total batch, the CPUs are
    shared."""
    assert gpu_defaults(H100, set(), _sized(800, 1333))["train.batch_size"] == 16
    assert "train.batch_size" not in gpu_defaults(V100_16, set(), _sized(800, 1333))
    four = DeviceInfo(H100.name, H100.total_memory, cpu_count=16, local_processes=4, world=4)
    assert gpu_defaults(four, set(), Config()) == {"train.batch_size": 4, "train.warmup_iters": 50,
                                                   "data.num_workers": 3}
    eight = DeviceInfo(H100.name, H100.total_memory, cpu_count=16, local_processes=8, world=8)
    assert gpu_defaults(eight, set(), Config()) == {}  # 2 images x 8 GPUs, 2 CPUs each: the CPU defaults
    assert gpu_defaults(DeviceInfo("x", 80 * GIB, cpu_count=2), {"train.batch_size"}, Config()) == {}


def test_gpu_defaults_leave_given_fields_alone():
    assert gpu_defaults(H100, {"train.batch_size"}, Config()) == {"data.num_workers": 8}  # no warm-up change
    assert gpu_defaults(H100, {"train.warmup_iters", "data.num_workers"}, Config()) == {"train.batch_size": 16}
    assert gpu_defaults(H100, set(dd.GPU_FIELDS), Config()) == {}
    cfg = Config()
    before = cfg.to_dict()
    gpu_defaults(H100, set(), cfg)
    assert cfg.to_dict() == before  # pure


def test_given_fields_from_every_source(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"batch_size": 4}, "data": {}}))
    assert given_fields(path) == {"train.batch_size"}
    assert given_fields({"data": {"num_workers": 1}}) == {"data.num_workers"}
    assert given_fields(fields={"batch_size": 2, "data": "d", "train.warmup_iters": 5, "model.min_size": 64}) == {
        "train.batch_size", "data.data_dir", "train.warmup_iters", "model.min_size"}
    assert given_fields(sets=["train.batch_size=2", "data.num_workers=0"]) == {"train.batch_size", "data.num_workers"}
    assert "ssddet.num_negatives" in given_fields(refiner="fast")
    assert given_fields(Config()) == dd.all_fields() >= set(dd.GPU_FIELDS)  # a Config object: all of it
    assert given_fields() == set()


@pytest.fixture
def fake_h100(monkeypatch):
    """torch sees one 80 GB GPU on a 16-CPU machine (nothing runs on it: train_config only configures)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=int(79.1 * GIB)))
    monkeypatch.setattr(dd, "cpu_count", lambda: 16)
    for var in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)


def _chosen(cfg: Config) -> tuple[int, int, int]:
    return cfg.train.batch_size, cfg.train.warmup_iters, cfg.data.num_workers


def test_train_config_on_a_gpu(fake_h100, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ssddet")
    cfg = train_config(fields={"data": "d"}, output=tmp_path / "run")
    assert _chosen(cfg) == (16, 13, 8)
    lines = [r.getMessage() for r in caplog.records if "GPU defaults" in r.getMessage()]
    assert lines == ["GPU defaults for NVIDIA H100 80GB HBM3 (79 GiB, 16 CPUs): batch_size 16, warmup_iters 13, "
                     "num_workers 8; set one to keep your own (--batch-size, --warmup-iters, --workers); the LR "
                     "follows the batch (--lr-ref-batch)"]
    assert cfg.train.lr == Config().train.lr  # the linear rule scales it when the run starts (accel.scaled_lr)
    # given by name, by --set (even at the CPU default's value), in a config file or dict: kept
    assert _chosen(train_config(fields={"batch_size": 2}, output="o")) == (2, 100, 8)
    assert _chosen(train_config(sets=["train.batch_size=2", "data.num_workers=2"], output="o")) == (2, 100, 2)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"batch_size": 4}}))
    assert _chosen(train_config(path, output="o")) == (4, 100, 8)
    assert _chosen(train_config({"train": {"warmup_iters": 7}}, output="o")) == (16, 7, 8)
    assert _chosen(train_config(Config(), output="o")) == (2, 100, 2)  # a Config object is used as given
    assert _chosen(train_config(fields={"device": "cpu"}, output="o")) == (2, 100, 2)  # the CPU asked for


def test_the_resolved_values_are_recorded_and_resumed(fake_h100, tmp_path, monkeypatch):
    """config.json (what the Trainer writes: cfg.to_dict()) holds the chosen values; --resume reads them back
    whatever the GPU is now."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = train_config(fields={"data": "d"}, output=run)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name="small", total_memory=int(4.5 * GIB)))
    assert _chosen(train_config(resume=True, output=run)) == (16, 13, 8)
    assert _chosen(train_config(fields={"data": "d"}, output="o")) == (4, 50, 8)  # a fresh run: this GPU's


def test_cli_flags_count_as_given(fake_h100, tmp_path, capsys):
    def printed(*flags):
        assert main(["train", "--data", "d", "--out", str(tmp_path / "r"), "--print-config", *flags]) == 0
        d = json.loads(capsys.readouterr().out)
        return d["train"]["batch_size"], d["train"]["warmup_iters"], d["data"]["num_workers"]

    assert printed() == (16, 13, 8)
    assert printed("--batch-size", "2", "--workers", "4") == (2, 100, 4)
    assert printed("--warmup-iters", "100") == (16, 100, 8)


def test_nothing_changes_on_the_cpu(monkeypatch, tmp_path):
    """The CPU's resolved config is the one without device defaults at all (the CPU benchmarks stay as they
    were), also when a GPU is there but --device cpu is asked for."""
    def both():
        with_defaults = train_config(fields={"data": "d", "noise": 0.4}, output="o").to_dict()
        with monkeypatch.context() as m:
            m.setattr(dd, "apply_device_defaults", lambda cfg, given: {})
            without = train_config(fields={"data": "d", "noise": 0.4}, output="o").to_dict()
        return with_defaults, without

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    a, b = both()
    assert a == b and (a["train"]["batch_size"], a["data"]["num_workers"], a["train"]["warmup_iters"]) == (2, 2, 100)
    assert dd.cuda_device_info("auto") is None and dd.cuda_device_info("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dd.cuda_device_info("cpu") is None
