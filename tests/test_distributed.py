"""Multi-process training (DDP over gloo on CPU, 2 processes).

- `torchrun` end to end through the CLI: both ranks train, rank 0 writes the run, --sync-bn / --amp say in one
  line that they do nothing here.
- In-process ranks (torch.multiprocessing spawn; one module-scoped set of runs, several tests read it): the SSD-Det
  box bank is one logical bank (identical on both ranks, holding what either rank refined); a run crashed after
  epoch 1 and resumed ends bit-identical to an uninterrupted one (per-rank RNG states, the bank resumed whole);
  evaluation sharded over 2 ranks gives the same metrics as one process; cross-rank means of dicts whose keys
  differ per rank; the linear LR scaling rule.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import assert_same_weights, tiny_coco_dict, train_args, write_coco, write_shapes_coco
from PIL import Image

from ssddet.cli import main

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(TORCHRUN),
                    reason="torchrun not installed")
def test_torchrun_two_processes(tmp_path):
    data = tmp_path / "data"
    write_coco(data, tiny_coco_dict())
    out = tmp_path / "run"
    cmd = [TORCHRUN if os.path.exists(TORCHRUN) else "torchrun", "--standalone", "--nproc_per_node", "2",
           "-m", "ssddet.cli", "train", "--data", str(data), "--noise", "0.3", "--epochs", "2", "--min-size", "64",
           "--max-size", "96", "--workers", "0", "--batch-size", "1", "--device", "cpu", "--out", str(out),
           "--set", "ssddet.trunk_dim=32", "--sync-bn", "--amp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    epochs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"kind": "epoch"' in x]
    assert [e["epoch"] for e in epochs] == [1, 2]  # one writer (rank 0), one record per epoch
    # 2 training images with boxes over 2 ranks at batch 1: one iteration per rank and epoch
    assert epochs[-1]["iteration"] == 2
    assert (out / "model_final.pt").is_file() and "val" in json.loads((out / "metrics.json").read_text())
    # the pretrained Lite0 freezes every BatchNorm; --amp is CUDA-only: one line each (rank 0 only)
    assert res.stderr.count("--sync-bn: nothing to convert") == 1, res.stderr[-2000:]
    assert res.stderr.count("--amp needs CUDA: training on cpu in float32") == 1


# ------------------------------------------------------------------------------------- in-process 2 ranks
WORLD = 2
VAL_HEIGHTS = (96, 64, 80, 48, 96)  # val images of several shapes: batches with padding


class _Crash(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dataset(root: Path) -> Path:
    """8 training images (96 px) and 5 val images of several heights (their boxes scaled along)."""
    write_shapes_coco(root, n_train=8, n_val=len(VAL_HEIGHTS))
    coco = json.loads((root / "annotations.json").read_text())
    val = [im for im in coco["images"] if im["split"] == "val"]
    for im, h in zip(val, VAL_HEIGHTS):
        path = root / im["file_name"]
        Image.open(path).resize((96, h)).save(path)
        for a in coco["annotations"]:
            if a["image_id"] == im["id"]:
                x, y, w, bh = a["bbox"]
                a["bbox"] = [x, y * h / 96, w, bh * h / 96]
                a["area"] = w * bh * h / 96
        im["height"] = h
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    # one object of the two per image refined per step: the other takes its bank box, so the bank matters;
    # --lr-ref-batch 2 at 2 images x 2 ranks: the LR doubles (linear scaling)
    return train_args(data, out, "ssddet", 2, 2, "--noise", "0.3", "--warmup-iters", "2", "--lr-ref-batch", "2",
                      "--set", "ssddet.max_objects_per_image=1", "--set", "model.box_score_thresh=0.0", *extra)


def _train(port: int, argv: list[str], crash_after_epoch1: bool = False) -> dict:
    """One `ssddet train` on this rank; -> what the test needs of this rank: the annotations it refined and the
    bank after epoch 1, the bank right after a resume."""
    from ssddet.engine.train import Trainer
    from ssddet.models.ssddet.bank import BoxBank

    os.environ["MASTER_PORT"] = str(port)
    seen: dict = {"refined": set()}
    orig_update, orig_save, orig_resume = BoxBank.update_all_ranks, Trainer._save, Trainer._resume

    def update(self, ann_ids, boxes, merged=None):
        seen["refined"].update(ann_ids.tolist())
        orig_update(self, ann_ids, boxes, merged)

    def save(self, metrics, **kw):
        orig_save(self, metrics, **kw)
        if self.epoch == 1:
            seen["epoch1"] = {"refined": set(seen["refined"]), "bank": dict(self.method.bank.boxes)}
            if crash_after_epoch1:
                raise _Crash

    def resume(self):
        ok = orig_resume(self)
        seen["resumed_bank"] = dict(self.method.bank.boxes)
        return ok

    BoxBank.update_all_ranks, Trainer._save, Trainer._resume = update, save, resume
    try:
        assert main(argv) == 0
    except _Crash:
        pass
    finally:
        BoxBank.update_all_ranks, Trainer._save, Trainer._resume = orig_update, orig_save, orig_resume
        if dist.is_initialized():
            dist.destroy_process_group()
    return seen


def _means_with_a_skipped_value(port: int, rank: int) -> dict:
    """Rank 0 logged loss twice and iou once; rank 1 logged loss once and a non-finite iou (dropped)."""
    from ssddet.engine.distributed import mean_across_ranks
    from ssddet.engine.log import Averager

    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo")
    avg = Averager()
    for values in ([{"loss": 1.0, "iou": 0.5}, {"loss": 3.0}] if rank == 0 else [{"loss": 8.0, "iou": float("nan")}]):
        avg.add(values)
    try:
        return mean_across_ranks(avg.sums, avg.counts)
    finally:
        dist.destroy_process_group()


def _rank_worker(rank: int, ports: list[int], data: Path, root: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    res = {"straight": _train(ports[0], _args(data, root / "straight")),
           "crashed": _train(ports[1], _args(data, root / "resumed"), crash_after_epoch1=True),
           "resumed": _train(ports[2], _args(data, root / "resumed", "--resume")),
           "means": _means_with_a_skipped_value(ports[3], rank)}
    torch.save(res, root / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """-> (dataset, runs directory, per-rank results of `_rank_worker`)."""
    root = tmp_path_factory.mktemp("ddp")
    data = _dataset(root / "data")
    mp.spawn(_rank_worker, args=([_free_port() for _ in range(4)], data, root), nprocs=WORLD, join=True)
    yield data, root, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    shutil.rmtree(root, ignore_errors=True)  # its checkpoints (see conftest._drop_tmp_path_of_passed_tests)


def test_box_bank_is_one_bank_across_ranks(two_ranks):
    _, _, ranks = two_ranks
    after1 = [r["straight"]["epoch1"] for r in ranks]
    refined = after1[0]["refined"] | after1[1]["refined"]
    assert after1[0]["refined"] != refined and after1[1]["refined"] != refined  # each rank saw only some
    for r in after1:  # every annotation either rank refined, with the same box on both ranks
        assert set(r["bank"]) == refined
    assert after1[0]["bank"] == after1[1]["bank"]
    # the crashed run is the same run up to its crash
    assert all(r["crashed"]["epoch1"]["bank"] == after1[0]["bank"] for r in ranks)


def test_killed_and_resumed_two_process_run_equals_uninterrupted(two_ranks):
    _, root, ranks = two_ranks
    for r in ranks:  # each rank resumed the whole bank
        assert r["resumed"]["resumed_bank"] == r["crashed"]["epoch1"]["bank"]
    straight, resumed = root / "straight", root / "resumed"
    assert_same_weights(straight / "model_final.pt", resumed / "model_final.pt")
    ck = torch.load(straight / "checkpoint.pt", weights_only=True)
    ck_r = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["iteration"]) == (ck_r["epoch"], ck_r["iteration"]) == (2, 4)
    assert len(ck["rng_ranks"]) == WORLD  # one RNG state per rank, and they differ (seed + rank)
    assert not torch.equal(ck["rng_ranks"][0]["torch"], ck["rng_ranks"][1]["torch"])
    assert ck["method"]["bank._extra_state"]["ids"].tolist() == ck_r["method"]["bank._extra_state"]["ids"].tolist()
    # linear LR scaling: 2 images x 2 ranks for a --lr given for 2 images
    assert ck["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(2 * 0.005)


@pytest.mark.usefixtures("one_torch_thread")
def test_sharded_evaluation_equals_one_process(two_ranks, capsys):
    data, root, _ = two_ranks
    ddp = json.loads((root / "straight" / "metrics.json").read_text())["val"]  # 2 ranks, 3 val batches
    assert main(["eval", "--checkpoint", str(root / "straight" / "model_final.pt"), "--data", str(data),
                 "--batch-size", "2", "--workers", "0", "--device", "cpu", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["AR100"] > 0  # not a trivial 0 == 0
    assert one == ddp


def test_cross_rank_means_with_a_key_skipped_on_one_rank(two_ranks):
    _, _, ranks = two_ranks
    for r in ranks:  # (1 + 3 + 8) / 3 values; iou: only rank 0's finite value
        assert r["means"] == {"iou": 0.5, "loss": 4.0}
