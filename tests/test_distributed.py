"""Multi-process training with torchrun (DDP over gloo on CPU): both ranks train, rank 0 writes the run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import tiny_coco_dict, write_coco


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_two_processes(tmp_path):
    data = tmp_path / "data"
    write_coco(data, tiny_coco_dict())
    out = tmp_path / "run"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun if os.path.exists(torchrun) else "torchrun", "--nproc_per_node", "2", "-m", "ssddet.cli",
           "train", "--data", str(data), "--noise", "0.3", "--epochs", "2", "--min-size", "64", "--max-size", "96",
           "--workers", "0", "--batch-size", "1", "--device", "cpu", "--output", str(out),
           "--set", "ssddet.trunk_dim=32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    epochs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"kind": "epoch"' in x]
    assert [e["epoch"] for e in epochs] == [1, 2]  # one writer (rank 0), one record per epoch
    # 2 training images with boxes over 2 ranks at batch 1: one iteration per rank and epoch
    assert epochs[-1]["iteration"] == 2
    assert (out / "model_final.pt").is_file() and "val" in json.loads((out / "metrics.json").read_text())
