"""Resume: a run continued from checkpoint.pt ends bit-identical to the uninterrupted run, after a clean stop
at an epoch boundary and after SIGKILL in the middle of an epoch; checkpoints are weights_only-loadable; a
corrupt or foreign checkpoint.pt gives a clear error.

Exactness holds on CPU because every source of randomness is either restored from the checkpoint (torch /
numpy / python RNGs, used by the flips with --workers 0, the RPN/RoI samplers and the refiner's negatives) or
re-derived from (seed, epoch) (the loader's shuffle order and the DataLoader workers' base seed), and all runs
use one intra-op thread."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_same_state,
    assert_same_weights,
    crash_after_first_epoch,
    identical,
    read_log,
    train_args,
    write_shapes_coco,
)

from ssddet.cli import main
from ssddet.engine import train as train_mod
from ssddet.engine.train import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def epoch_records(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "seconds", "eval_seconds")} for r in read_log(out)
            if r["kind"] == "epoch"]


class _Crash(Exception):
    pass


# ----------------------------------------------------------------------------------------- (a) epoch boundary
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_after_epoch_equals_straight_run(workers, tmp_path, monkeypatch):
    """2 epochs straight vs. epoch 1, a crash right after its checkpoint, then --resume for epoch 2.
    workers=1 covers the worker-process path: the workers' seeds come from the loader generator, re-seeded
    from (seed, epoch) at every epoch, so they do not depend on what ran before."""
    data = write_shapes_coco(tmp_path / "data", n_train=4, n_val=2)
    extra = ["--workers", str(workers), "--warmup-iters", "2", "--noise", "0.2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(train_args(data, straight, "ssddet", 2, 2, *extra)) == 0

    with monkeypatch.context() as m:
        crash_after_first_epoch(m, _Crash)
        with pytest.raises(_Crash):
            main(train_args(data, resumed, "ssddet", 2, 2, *extra))
    assert torch.load(resumed / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert main(train_args(data, resumed, "ssddet", 2, 2, *extra, "--resume")) == 0

    assert_same_weights(straight / "model_final.pt", resumed / "model_final.pt")
    ck_a = torch.load(straight / "checkpoint.pt", weights_only=True)
    ck_b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert (ck_a["epoch"], ck_a["iteration"]) == (ck_b["epoch"], ck_b["iteration"]) == (2, 4)
    assert_same_state(ck_a["method"], ck_b["method"])  # the refiner too, not only the deployed detector
    assert ck_a["optimizer"]["state"].keys() == ck_b["optimizer"]["state"].keys()
    for i, st in ck_a["optimizer"]["state"].items():
        assert identical(st["momentum_buffer"], ck_b["optimizer"]["state"][i]["momentum_buffer"])
    assert ck_a["scheduler"] == ck_b["scheduler"]
    # the same losses, refined-box IoUs and val metrics in the epoch records, and the same final metrics
    assert epoch_records(straight) == epoch_records(resumed)
    assert (straight / "metrics.json").read_text() == (resumed / "metrics.json").read_text()


def test_crash_while_saving_the_last_epoch(tmp_path, monkeypatch):
    """checkpoint.pt is the commit point of an epoch (written last): killed while saving model_final.pt of the
    last epoch, the resumed run re-runs that epoch and leaves a complete, consistent run directory. (Were the
    checkpoint written first, the resume would find the run finished and keep a stale model_final.pt and no
    metrics.json.)"""
    data = write_shapes_coco(tmp_path / "data", n_train=2, n_val=1)
    out = tmp_path / "run"
    real = train_mod.atomic_save

    def crash_on_last_model_final(obj, path):
        if Path(path).name == "model_final.pt" and obj["meta"]["epoch"] == 2:
            raise _Crash
        real(obj, path)

    monkeypatch.setattr(train_mod, "atomic_save", crash_on_last_model_final)
    with pytest.raises(_Crash):
        main(train_args(data, out, "vanilla", 2, 2))
    monkeypatch.setattr(train_mod, "atomic_save", real)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (out / "metrics.json").exists()
    assert main(train_args(data, out, "vanilla", 2, 2, "--resume")) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert torch.load(out / "model_final.pt", weights_only=True)["meta"]["epoch"] == 2
    records = epoch_records(out)
    assert [r["epoch"] for r in records] == [1, 2]  # the crashed attempt's epoch-2 record was dropped
    assert json.loads((out / "metrics.json").read_text())["val"] == records[-1]["val"]


def test_resume_when_finished_or_without_checkpoint(tmp_path, caplog):
    data = write_shapes_coco(tmp_path / "data", n_train=2, n_val=1)
    out = tmp_path / "run"
    # --resume with no checkpoint yet: a warning, then a normal run from scratch
    assert main(train_args(data, out, "vanilla", 1, 2, "--resume")) == 0
    assert "no checkpoint" in caplog.text
    before = (out / "model_final.pt").read_bytes()
    # --resume of a finished run: nothing to do, nothing rewritten; it says so and gives the final metrics
    assert main(train_args(data, out, "vanilla", 1, 2, "--resume")) == 0
    assert (out / "model_final.pt").read_bytes() == before
    assert len(epoch_records(out)) == 1
    assert "nothing to resume" in caplog.text


def test_training_into_a_run_directory_needs_resume(trained, capsys):
    """A second `ssddet train --out RUN` without --resume would overwrite RUN's logs and checkpoints."""
    data, out = trained
    before = (out / "log.jsonl").read_bytes()
    assert main(train_args(data, out, "vanilla", 1, 2)) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "Traceback" not in err
    assert (out / "log.jsonl").read_bytes() == before


# ------------------------------------------------------------------------------------------ (b) SIGKILL
# One intra-op thread per process (as in-process), and an iteration record per step (so the test can tell when
# epoch 2 is under way).
_RUN = ("import sys, torch; torch.set_num_threads(1); import ssddet.engine.train as t; t.LOG_EVERY = 1; "
        "from ssddet.cli import main; sys.exit(main(sys.argv[1:]))")


def _cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-c", _RUN, *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _iteration_records(out: Path, epoch: int) -> list[dict]:
    p = out / "log.jsonl"
    if not p.is_file():
        return []
    recs = []
    for line in p.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:  # a line being written
            continue
    return [r for r in recs if r.get("kind") == "train" and r.get("epoch") == epoch]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    # 8 images, batch 1: 8 iterations per epoch, plenty of time to kill in the middle of epoch 2
    data = write_shapes_coco(tmp_path / "data", n_train=8, n_val=2)
    ref, run = tmp_path / "ref", tmp_path / "run"
    extra = ["--warmup-iters", "4", "--noise", "0.2"]
    ref_proc = subprocess.Popen(_cmd(train_args(data, ref, "vanilla", 3, 1, *extra)), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.Popen(_cmd(train_args(data, run, "vanilla", 3, 1, *extra)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not ((run / "checkpoint.pt").is_file() and _iteration_records(run, 2)):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "epoch 2 never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = max(r["iteration"] for r in _iteration_records(run, 2))
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and ck["iteration"] == 8 < killed_at < 16, "not killed in the middle of epoch 2"

    resume = subprocess.run(_cmd(train_args(data, run, "vanilla", 3, 1, *extra, "--resume")), env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert "resumed from" in resume.stderr
    _, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err[-3000:]

    # bit-identical: every tensor of the deployed model (same thread count, CPU kernels are deterministic)
    assert_same_weights(ref / "model_final.pt", run / "model_final.pt")
    assert_same_weights(ref / "model_best.pt", run / "model_best.pt")
    # the log reads as one uninterrupted run: the killed run's partial epoch 2 records were dropped on resume
    def losses(out):
        return [(r["iteration"], r["epoch"], r["loss"], r["lr"]) for r in read_log(out)
                if r["kind"] == "train"]

    assert losses(run) == losses(ref)
    assert [r["iteration"] for r in read_log(run) if r["kind"] == "train"] == list(range(1, 25))
    assert epoch_records(run) == epoch_records(ref)
    assert len((run / "command.txt").read_text().splitlines()) == 4  # two runs, two lines each
    assert not list(run.glob("*.tmp"))  # a save cut by the kill leaves no temp file behind

    # everything the run wrote loads with weights_only=True (no pickled code)
    for name in ("checkpoint.pt", "model_best.pt", "model_final.pt"):
        obj = torch.load(run / name, map_location="cpu", weights_only=True)
        assert isinstance(obj, dict)


# ------------------------------------------------------------------------------------------ bad checkpoints
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A finished 1-epoch vanilla run (with its dataset)."""
    root = tmp_path_factory.mktemp("resume_bad")
    data = write_shapes_coco(root / "data", n_train=2, n_val=1)
    out = root / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(train_args(data, out, "vanilla", 1, 2, "--max-iters-per-epoch", "1")) == 0
    finally:
        torch.set_num_threads(n)
    yield data, out
    shutil.rmtree(root, ignore_errors=True)  # its checkpoints (see conftest._drop_tmp_path_of_passed_tests)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_gives_clear_error(damage, trained, tmp_path, capsys):
    data, src = trained
    out = tmp_path / "run"
    out.mkdir()
    blob = (src / "checkpoint.pt").read_bytes()
    bad = {"truncated": blob[: len(blob) // 2], "garbage": b"\x00not a zip" * 50, "empty": b""}[damage]
    (out / "checkpoint.pt").write_bytes(bad)
    assert main(train_args(data, out, "vanilla", 2, 2, "--resume")) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "cannot resume" in err and "corrupt" in err, err
    assert "Traceback" not in err


def test_foreign_or_mismatched_checkpoint_gives_clear_error(trained, tmp_path, capsys):
    data, src = trained
    out = tmp_path / "run"
    out.mkdir()
    # a deployable model file is not a training checkpoint
    (out / "checkpoint.pt").write_bytes((src / "model_final.pt").read_bytes())
    assert main(train_args(data, out, "vanilla", 2, 2, "--resume")) == 2
    err = capsys.readouterr().err
    assert "not an ssddet training checkpoint" in err and "missing" in err, err
    # a vanilla checkpoint resumed as SSD-Det (refiner weights missing)
    (out / "checkpoint.pt").write_bytes((src / "checkpoint.pt").read_bytes())
    assert main(train_args(data, out, "ssddet", 2, 2, "--resume")) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "vanilla" in err and "ssddet" in err, err


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resume_restores_cpu_rng_states_whatever_the_device(trained, tmp_path, monkeypatch):
    """On CUDA the checkpoint was loaded with map_location=<device>, which moved the saved CPU RNG states onto
    the GPU, and torch.set_rng_state raised TypeError. Simulated here with the meta device (tensors that are
    not on the CPU) as the training device: the resume must still restore the saved CPU RNG states."""
    import shutil

    import numpy as np

    from ssddet.cli import build_parser
    from ssddet.config_overrides import config_from_args

    data, src = trained
    out = tmp_path / "run"
    shutil.copytree(src, out)
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    monkeypatch.setattr(train_mod, "init_distributed", lambda device: (torch.device("meta"), 0, 1))
    cfg = config_from_args(build_parser().parse_args(train_args(data, out, "vanilla", 2, 2, "--resume")))
    torch.manual_seed(12345)
    np.random.seed(12345)
    trainer = Trainer(cfg, resume=True)
    assert (trainer.epoch, trainer.iteration) == (saved["epoch"], saved["iteration"]) == (1, 1)
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert np.array_equal(np.random.get_state()[1], saved["rng"]["numpy"][1].numpy().astype(np.uint32))
    assert next(trainer.method.parameters()).device.type == "meta"  # the model stayed on its device

