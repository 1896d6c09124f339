"""One-GPU check of the CUDA paths, sized for a single short session on one H200:

1. speed: vanilla and SSD-Det train steps (the Trainer's own step: autocast, GradScaler, per-group clipping) with
   ResNet-50-FPN from scratch at 800x1333, batch 8, without and with AMP; `--iters` timed steps after `--warmup`:
   images/s, peak GPU memory, SSD-Det/vanilla ratio;
2. the CUDA tests (`pytest tests/test_cuda.py`: AMP bf16/fp16 steps, fp32 refiner losses, resume on CUDA);
3. `ssddet train` on CUDA killed (SIGKILL) after its first checkpoint and continued with `--resume`, against an
   uninterrupted run: same epochs/iterations, max weight difference.

    PYTHONPATH=src python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json   # GPU machine, ~5 min
    PYTHONPATH=src python benchmarks/gpu_check.py --smoke                                  # tiny, any machine

The training images are generated (random rectangles on noise, 1333x800 JPEGs), so no dataset is needed.
`--smoke` shrinks everything (resnet18, 96 px, batch 2, 2 steps) and runs on the CPU if there is no GPU: it
checks that the script runs, its timings mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ssddet.config import Config
from ssddet.engine.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    """The subprocesses import this checkout's ssddet (as `PYTHONPATH=src python benchmarks/gpu_check.py` does)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
    return res


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


def time_config(a, data: Path, out: Path, method: str, amp: str | None) -> dict:
    """Images/s and peak memory of `a.iters` Trainer steps after `a.warmup`, on batches loaded once up front."""
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
    trainer.method.train()
    batches = [b for _, b in zip(range(4), trainer.train_loader)]
    cuda = trainer.device.type == "cuda"
    times = []
    for i in range(a.warmup + a.iters):
        if i == a.warmup and cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        losses, _ = trainer.step(*batches[i % len(batches)])  # ends with a host sync (.tolist())
        times.append(time.perf_counter() - t0)
        if not losses:
            raise RuntimeError(f"{method} {amp}: step {i} skipped (non-finite loss)")
    trainer.logger.close()
    step = float(np.median(times[a.warmup:]))
    row = {"method": method, "amp": amp or "fp32", "backbone": a.backbone, "size": f"{a.min_size}x{a.max_size}",
           "batch": a.batch, "median_step_s": step, "images_per_s": a.batch / step,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
           "loss": losses["loss"]}
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return row


def speed(a, tmp: Path) -> list[dict]:
    data = make_data(tmp / "speed_data", n_train=4 * a.batch, n_val=2, size=(a.max_size, a.min_size))
    rows = []
    for amp in (None, *a.amp):
        for method in ("vanilla", "ssddet"):
            rows.append(time_config(a, data, tmp, method, amp))
            r = rows[-1]
            print(f"{method:8s} {r['amp']:5s} {r['images_per_s']:8.2f} img/s  step {r['median_step_s']:.3f} s  "
                  f"peak {r['peak_mem_gib'] or 0:.1f} GiB", flush=True)
        van, ssd = rows[-2], rows[-1]
        ssd["ssddet_over_vanilla"] = ssd["median_step_s"] / van["median_step_s"]
    return rows


def cuda_pytest(a) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(["tests"] if a.full_pytest
                                                                             else ["tests/test_cuda.py"])]
    t0 = time.time()
    res = _run(cmd, a.pytest_timeout)
    tail = (res.stdout + res.stderr).strip().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    return {"command": " ".join(cmd[1:]), "returncode": res.returncode, "seconds": time.time() - t0, "tail": tail}


def _train_cmd(data: Path, out: Path, a, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ssddet.cli", "train", "--data", str(data), "--output", str(out), "--epochs", "3",
            "--batch-size", "2", "--min-size", str(a.resume_size), "--max-size", str(a.resume_size), "--workers",
            "2", "--device", a.device, "--noise", "0.3", "--backbone", "mobilenet_v3_large_fpn", "--pretrained",
            "none", "--seed", "0", *extra]


def resume_check(a, tmp: Path) -> dict:
    """Uninterrupted 3-epoch run vs the same run SIGKILLed once epoch 1's checkpoint exists, then --resume."""
    data = make_data(tmp / "resume_data", n_train=8, n_val=2, size=(a.resume_size, a.resume_size), seed=1)
    straight, killed = tmp / "straight", tmp / "killed"
    if _run(_train_cmd(data, straight, a), 600).returncode != 0:
        return {"error": "the uninterrupted run failed"}
    proc = subprocess.Popen(_train_cmd(data, killed, a), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]
    res = _run(_train_cmd(data, killed, a, "--resume"), 600)
    a_ck = torch.load(straight / "checkpoint.pt", weights_only=True, map_location="cpu")
    b_ck = torch.load(killed / "checkpoint.pt", weights_only=True, map_location="cpu")
    diff = max(float((v.float() - b_ck["method"][k].float()).abs().max()) for k, v in a_ck["method"].items()
               if torch.is_tensor(v) and v.is_floating_point() and v.numel())
    out = {"killed_after_epoch": at, "resume_returncode": res.returncode, "resumed": "resumed from" in res.stderr,
           "epochs_iterations": [(a_ck["epoch"], a_ck["iteration"]), (b_ck["epoch"], b_ck["iteration"])],
           "max_abs_weight_diff": diff}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny settings (any device): check that the script runs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="resnet50_fpn")
    ap.add_argument("--min-size", type=int, default=800)
    ap.add_argument("--max-size", type=int, default=1333)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--amp", nargs="*", default=["bf16"], choices=("bf16", "fp16"), help="AMP dtypes to time "
                    "besides fp32")
    ap.add_argument("--resume-size", type=int, default=320)
    ap.add_argument("--skip", nargs="*", default=[], choices=("speed", "pytest", "resume"))
    ap.add_argument("--full-pytest", action="store_true", help="the whole test suite instead of test_cuda.py")
    ap.add_argument("--pytest-timeout", type=int, default=300)
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args()
    if a.smoke:
        a.backbone, a.min_size, a.max_size, a.batch, a.iters, a.warmup, a.resume_size = (
            "resnet18_fpn", 64, 96, 2, 2, 1, 64)
    if a.device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    report = {"device": torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device,
              "torch": torch.__version__, "smoke": a.smoke}
    with tempfile.TemporaryDirectory() as tmp:
        if "speed" not in a.skip:
            report["speed"] = speed(a, Path(tmp))
        if "pytest" not in a.skip:
            report["pytest"] = cuda_pytest(a)
        if "resume" not in a.skip:
            report["resume"] = resume_check(a, Path(tmp))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2))
    ok = report.get("pytest", {}).get("returncode", 0) == 0 and report.get("resume", {}).get("resumed", True)
    print(json.dumps({k: v for k, v in report.items() if k != "pytest"}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
