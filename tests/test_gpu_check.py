"""benchmarks/gpu_check.py on the CPU (--smoke): one entry per section, saved after each, and a failing section
or timing configuration recorded as such while the others still run and are written; the epoch section runs on
the CPU with utilisation reported as not available."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def test_failed_section_leaves_the_others_saved(gpu_check, tmp_path, monkeypatch):
    """resume and one timing configuration fail (injected); pytest and the other configuration are measured, and
    the JSON on disk grows section by section."""
    saved = []
    save = gpu_check.Report.save

    def spy(self):
        save(self)
        saved.append(json.loads(Path(self.path).read_text())["sections"])

    monkeypatch.setattr(gpu_check.Report, "save", spy)
    out = tmp_path / "res" / "gpu_check.json"
    rc = gpu_check.main(["--smoke", "--device", "cpu", "--amp", "--out", str(out), "--skip", "epoch",
                         "--fail-section", "resume", "speed/ssddet-fp32"])
    assert rc == 1  # a failed section fails the check
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == ["pytest", "resume", "speed"]  # correctness first
    assert sections["pytest"]["returncode"] == 0 and "skipped" in sections["pytest"]["summary"]
    assert "needs CUDA" in (tmp_path / "res" / "pytest_cuda.txt").read_text()  # the full output, in its file
    assert sections["resume"]["error"] == "RuntimeError: injected failure (--fail-section)"
    assert sections["speed"]["vanilla-fp32"]["images_per_s"] > 0
    assert "injected failure" in sections["speed"]["ssddet-fp32"]["error"]
    assert sections["speed"]["ssddet_over_vanilla"] == {}  # no ratio without both timings
    assert report["passed"] is False and report["fp32"]["fp32_means"] == "fp32 convolutions, fp32 matmuls"
    # saved at the start, after each section and each configuration: pytest was on disk before resume ran
    assert [list(s) for s in saved[:3]] == [[], ["pytest"], ["pytest", "resume"]]
    assert list(saved[3]["speed"]) == ["vanilla-fp32"]


def test_timeouts_and_the_budget_are_entries_not_crashes(gpu_check, tmp_path):
    report = gpu_check.Report(tmp_path / "r.json", {"device": "cpu"}, [], budget_s=None)

    def times_out():
        raise subprocess.TimeoutExpired(["ssddet", "train"], 5)

    assert report.run("resume", times_out)["error"].startswith("TimeoutExpired: Command '['ssddet', 'train']'")
    assert report.run("speed/vanilla-fp32", lambda: {"images_per_s": 1.0})["images_per_s"] == 1.0
    report.deadline = 0.0  # spent: nothing more starts
    assert "skipped" in report.run("speed/ssddet-fp32", lambda: {"images_per_s": 1.0})
    on_disk = json.loads((tmp_path / "r.json").read_text())["sections"]
    assert set(on_disk) == {"resume", "speed"} and set(on_disk["speed"]) == {"vanilla-fp32", "ssddet-fp32"}
    assert not gpu_check.passed(on_disk)


def test_epoch_section_runs_on_the_cpu(gpu_check, tmp_path, one_torch_thread):
    """--smoke on the CPU: an epoch of 2 steps of vanilla and of SSD-Det at the device's defaults (the CPU's: none
    applied), a validation, and utilisation not available (said why)."""
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--smoke", "--device", "cpu", "--out", str(out), "--skip", "pytest", "resume", "speed",
                         "--epoch-data", str(tmp_path / "missing")])
    assert rc == 0
    report = json.loads(out.read_text())
    epoch = report["sections"]["epoch"]
    assert list(report["sections"]) == ["epoch"] and set(epoch) == {"vanilla", "ssddet", "ssddet_over_vanilla_epoch",
                                                                    "seconds"}
    for method in ("vanilla", "ssddet"):
        r = epoch[method]
        assert r["method"] == method and r["device"] == "cpu" and r["data"] == "generated (smoke)"
        assert [e["steps"] for e in r["epochs"]] == [2] and r["epochs"][0]["images_per_s"] > 0
        assert r["settings"]["gpu_defaults_applied"] == {} and r["settings"]["train.batch_size"] == 2
        assert 0 < r["in_steps_fraction"] <= 1 and r["eval_s"] > 0 and "val_AP" in r
        assert r["utilisation"] == {"available": False, "source": None, "cuda_events_in_step_fraction": None,
                                    "note": "not on CUDA: no utilisation"}
    assert epoch["ssddet_over_vanilla_epoch"] > 0


def test_utilisation_off_cuda_is_not_available(gpu_check):
    with gpu_check.Utilisation(torch.device("cpu")) as u:
        pass
    assert u.result() == {"available": False, "source": None}
