"""Median train-step time of SSD-Det vs vanilla Faster R-CNN on the same model, image size and batch, and a
profile of where the refiner's time goes.

    python benchmarks/speed.py --data ../shared/data/bccd --steps 12 [--set ssddet.sampler=small ...] \
        [--backbone efficientnet_lite0_fpn --backbone mobilenet_v3_large_fpn]

For every --backbone (default: the default backbone), each configuration trains from the same initial weights
on the same batches (noise 0.4); the first `--warmup` steps are discarded. Prints one table row per
configuration (the ratio is to the first backbone's vanilla step) and, with --profile, a torch.profiler summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.data import DataLoader

from ssddet.config import Config
from ssddet.config_overrides import apply_overrides
from ssddet.data.dataset import CocoDetection, collate, training_records
from ssddet.data.splits import load_train_val
from ssddet.models.detector import build_detector
from ssddet.models.methods import build_method


def batches(cfg: Config, n: int):
    splits = load_train_val(cfg.data)
    ds = CocoDetection(training_records(splits.train_records, False, "train"), train=False)
    loader = DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=False, collate_fn=collate)
    out = []
    for images, targets in loader:
        out.append((list(images), list(targets)))
        if len(out) == n:
            break
    return out, splits.train.num_classes


def time_steps(cfg: Config, data, num_classes: int, warmup: int, profile: bool = False):
    torch.manual_seed(0)
    method = build_method(cfg, build_detector(cfg.model, num_classes), num_classes).train()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    times, stats = [], {}
    for i, (images, targets) in enumerate(data):
        t0 = time.perf_counter()
        losses, stats = method(images, [dict(t) for t in targets], 0.5)
        opt.zero_grad()
        method.total_loss(losses).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    prof = None
    if profile:
        images, targets = data[0]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            losses, _ = method(images, [dict(t) for t in targets], 0.5)
            method.total_loss(losses).backward()
    return statistics.median(times), stats, prof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/bccd")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.4)
    ap.add_argument("--set", action="append", default=[], help="overrides for the ssddet runs, ';'-separated "
                    "per configuration, e.g. --set 'ssddet.sampler=small;ssddet.trunk_dim=256'")
    ap.add_argument("--profile", action="store_true", help="profile one step of each SSD-Det configuration")
    ap.add_argument("--backbone", action="append", default=[], help="backbones to time (repeatable); the "
                    "ratios of the table are to the first backbone's vanilla step")
    ap.add_argument("--min-size", type=int, default=0, help="image size (default: the config default)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    base = Config()
    base.data.data_dir, base.data.noise = a.data, a.noise
    if a.min_size:
        base.model.min_size = a.min_size
    data, k = batches(base, a.steps + a.warmup)
    rows = []
    t_ref = None
    print(f"{'config':60s} {'step s':>8s} {'x vanilla':>9s} {'RoIs/it':>8s}")
    for backbone in a.backbone or [base.model.backbone]:
        base.model.backbone = backbone
        t_van, _, _ = time_steps(_with(base, "vanilla", []), data, k, a.warmup)
        t_ref = t_ref or t_van
        rows.append({"config": f"{backbone} vanilla", "step_s": t_van, "ratio": t_van / t_ref})
        print(f"{backbone + ' vanilla':60s} {t_van:8.3f} {t_van / t_ref:9.2f}")
        for spec in a.set or [""]:
            overrides = [s for s in spec.split(";") if s]
            t, stats, prof = time_steps(_with(base, "ssddet", overrides), data, k, a.warmup, a.profile)
            name = f"{backbone} ssddet " + " ".join(overrides)
            rows.append({"config": name, "step_s": t, "ratio": t / t_ref, "rois": stats.get("num_rois_shared"),
                         "iou_refined": stats.get("iou_refined"), "iou_noisy": stats.get("iou_noisy")})
            print(f"{name:60s} {t:8.3f} {t / t_ref:9.2f} {stats.get('num_rois_shared', 0):8.0f}")
            if prof is not None:
                print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


def _with(base: Config, method: str, overrides: list[str]) -> Config:
    cfg = Config.from_dict(base.to_dict())
    cfg.train.method = method
    apply_overrides(cfg, overrides)
    return cfg


if __name__ == "__main__":
    main()
