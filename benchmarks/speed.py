"""Median train-step time of SSD-Det vs vanilla Faster R-CNN on the same model, image size and batch, and a
profile of one SSD-Det step by part.

    python benchmarks/speed.py --data ../shared/data/bccd --steps 12 [--set ssddet.sampler=small ...] \
        [--backbone efficientnet_lite0_fpn --backbone mobilenet_v3_large_fpn]
    python benchmarks/speed.py --profile --data ../shared/data/bccd --steps 20 --threads 1 2

For every --backbone (default: the default backbone), each configuration trains from the same initial weights
on the same batches (noise 0.4); the first `--warmup` steps are discarded. Prints one table row per
configuration (the ratio is to the first backbone's vanilla step). A backbone's configurations take turns
batch by batch (vanilla's step 1, SSD-Det's step 1, vanilla's step 2, ...), so that the VM's speed drift hits
them alike. `--rounds R` repeats the whole comparison R times and reports each configuration's median step and
median ratio over the rounds.

--profile times the parts of one SSD-Det training step instead (the Trainer's step: forward, backward, per-group
clipping, SGD), at each --threads count (default 1 and 2): the model code's named scopes (models/profiling.py)
are timed with time.perf_counter, each part its own time less the parts nested in it, so the rows add up to the
step; the median per part over --steps steps after --warmup. With `detach_features` (the default) the refiner's
losses and the detector's share no graph, so the backward runs as two autograd calls, the refiner's first, and
each is a row. Writes --profile-out (JSON) and prints a markdown table. `--trace FILE` adds one step under
torch.profiler: a Chrome trace with the same scopes, and its top operators (e.g. RoIAlign's backward).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ssddet.config import Config
from ssddet.config_overrides import apply_overrides
from ssddet.data.dataset import CocoDetection, collate, training_records
from ssddet.data.splits import load_train_val
from ssddet.engine.accel import scaled_lr
from ssddet.engine.device_defaults import cpu_count
from ssddet.engine.train import clip_per_group
from ssddet.models.detector import build_detector
from ssddet.models.methods import build_method
from ssddet.models.profiling import StepTimer, scope, timing
from ssddet.models.ssddet.refiner import LOSS_NAMES as REFINER_TERMS

# The rows of the profile, in step order: (scope, part). Each row is the scope's own time, less the scopes nested
# in it (the refiner's RoIAlign and trunk calls inside its SPSD, MIL, SISD and keep steps are their own rows).
PARTS = [
    ("transform", "transform (normalise, resize, batch)"),
    ("backbone", "backbone + FPN"),
    ("bank", "bank (banked boxes, priorities, updates)"),
    ("refiner.bags", "refiner: object cap + bag sampling"),
    ("refiner.roi_align", "refiner: RoIAlign forward"),
    ("refiner.trunks", "refiner: trunks (1x1 convs on the FPN maps, FCs)"),
    ("refiner.spsd", "refiner: SPSD regressors"),
    ("refiner.mil", "refiner: MIL heads (stages I and II, losses)"),
    ("refiner.negatives", "refiner: negatives"),
    ("refiner.sisd", "refiner: SISD (IoU head, loss)"),
    ("refiner.keep", "refiner: keep step"),
    ("refiner.mirror", "refiner: mirror view (trust_self, self_view=mirror)"),
    ("refiner", "refiner: the rest (final top-k merge, statistics, outputs)"),
    ("ssddet.targets", "SSD-Det targets: the rest (blend, statistics)"),
    ("rpn", "RPN (anchors, proposals, losses)"),
    ("rcnn", "R-CNN (sampling, RoIAlign, box head, losses)"),
    ("forward", "forward: the rest"),
    ("backward.refiner", "backward: refiner"),
    ("backward.detector", "backward: detector"),
    ("backward", "backward (whole)"),
    ("clip", "gradient clipping (per group)"),
    ("optimizer", "optimizer step (SGD)"),
]
OTHER = "other (zero_grad, the loss sums, the loop)"


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


def _stepper(cfg: Config, num_classes: int):
    """A training step of cfg's method from seed 0's initial weights: (images, targets) -> (seconds, stats)."""
    torch.manual_seed(0)
    method = build_method(cfg, build_detector(cfg.model, num_classes), num_classes).train()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step(images, targets):
        t0 = time.perf_counter()
        losses, stats = method(images, [dict(t) for t in targets], 0.5)
        opt.zero_grad()
        method.total_loss(losses).backward()
        opt.step()
        return time.perf_counter() - t0, stats
    return step


def time_steps(cfgs: list[Config], data, num_classes: int, warmup: int) -> list[tuple[float, dict]]:
    """Each configuration's median step (and its last stats) on the same batches, the configurations taking
    turns batch by batch, so that a drift of the machine's speed (minutes long on this VM) hits them alike."""
    steppers = [_stepper(cfg, num_classes) for cfg in cfgs]
    times: list[list[float]] = [[] for _ in cfgs]
    stats: list[dict] = [{} for _ in cfgs]
    for i, (images, targets) in enumerate(data):
        for j, step in enumerate(steppers):
            t, stats[j] = step(images, targets)
            if i >= warmup:
                times[j].append(t)
    return [(statistics.median(t), st) for t, st in zip(times, stats)]


# ------------------------------------------------------------------------------------------------ --profile
def separable(cfg: Config) -> bool:
    """The refiner's losses reach none of the detector's parameters (its features are detached), so its backward
    can run on its own, before the detector's, with the same gradients."""
    return cfg.train.method == "ssddet" and cfg.ssddet.detach_features


def profiled_step(cfg: Config, method, opt, images, targets, progress: float, check: bool = False) -> dict:
    """One training step as the Trainer takes it (forward, total loss, backward, per-group clipping, SGD), its
    parts in scopes. `check`: that the refiner's backward reached no detector parameter. -> the losses."""
    with scope("forward"):
        losses, _ = method(images, [dict(t) for t in targets], progress)
    opt.zero_grad(set_to_none=True)
    if separable(cfg):
        refiner = method.total_loss({k: v for k, v in losses.items() if k in REFINER_TERMS})
        detector = method.total_loss({k: v for k, v in losses.items() if k not in REFINER_TERMS})
        with scope("backward.refiner"):
            refiner.backward()
        if check:
            _check_disjoint(method)
        with scope("backward.detector"):
            detector.backward()
    else:
        with scope("backward"):
            method.total_loss(losses).backward()
    if cfg.train.clip_grad_norm:
        with scope("clip"):
            clip_per_group(opt, cfg.train.clip_grad_norm)
    with scope("optimizer"):
        opt.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def profile_run(cfg: Config, data, num_classes: int, warmup: int, progress: float, trace: str | None) -> dict:
    """Time the parts of `len(data) - warmup` steps after `warmup` (at the current thread count) -> the medians
    per part (ms), the step's median, and the step-by-step figures."""
    torch.manual_seed(0)
    method = build_method(cfg, build_detector(cfg.model, num_classes), num_classes).train()
    lr = scaled_lr(cfg.train, 1, verbose=False)
    opt = torch.optim.SGD(method.param_groups(lr, cfg.train), lr=lr, momentum=cfg.train.momentum,
                          weight_decay=cfg.train.weight_decay)
    timer, steps = StepTimer(), []
    for i, (images, targets) in enumerate(data):
        timer.reset()
        with timing(timer):
            t0 = time.perf_counter()
            profiled_step(cfg, method, opt, images, targets, progress, check=i == 0)
            wall = time.perf_counter() - t0
        if i >= warmup:
            own = {k: 1e3 * v for k, v in timer.self_s.items()}
            steps.append({"step_ms": 1e3 * wall, "self_ms": own, "total_ms": {k: 1e3 * v for k, v in
                                                                               timer.total_s.items()},
                          "other_ms": 1e3 * wall - sum(own.values())})
    step_ms = statistics.median(s["step_ms"] for s in steps)
    parts = []
    for key, label in PARTS:
        if not any(key in s["self_ms"] for s in steps):
            continue
        ms = statistics.median(s["self_ms"].get(key, 0.0) for s in steps)
        incl = statistics.median(s["total_ms"].get(key, 0.0) for s in steps)
        parts.append({"scope": key, "part": label, "ms": ms, "share": ms / step_ms, "inclusive_ms": incl})
    other = statistics.median(s["other_ms"] for s in steps)
    parts.append({"scope": None, "part": OTHER, "ms": other, "share": other / step_ms, "inclusive_ms": other})
    unlisted = sorted({k for s in steps for k in s["self_ms"]} - {k for k, _ in PARTS})
    out = {"threads": torch.get_num_threads(), "steps": len(steps), "step_ms": step_ms, "parts": parts,
           "unlisted_scopes": unlisted, "per_step": steps}
    if trace:
        out["trace"] = _trace_one_step(cfg, method, opt, data[0], progress, trace)
    return out


def _check_disjoint(method) -> None:
    """Right after the refiner's backward: no detector parameter has a gradient yet (the refiner's losses reach
    none), so the two backward rows are the refiner's and the detector's."""
    ids = {id(p) for p in method.refiner.parameters()}
    reached = [n for n, p in method.named_parameters() if id(p) not in ids and p.grad is not None]
    if reached:
        raise RuntimeError(f"the refiner's losses reach detector parameters ({', '.join(reached[:3])}, ...): "
                           "the backward cannot be split")


def _trace_one_step(cfg: Config, method, opt, batch, progress: float, path: str) -> str:
    images, targets = batch
    acts = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts) as prof:
        profiled_step(cfg, method, opt, images, targets, progress)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(path)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return path


def profile(a, base: Config, data, k: int) -> None:
    overrides = [s for s in (a.set[0] if a.set else "").split(";") if s]
    cfg = _with(base, "ssddet", overrides)
    runs = []
    for n in a.threads or [1, 2]:
        torch.set_num_threads(n)
        runs.append(profile_run(cfg, data, k, a.warmup, a.progress, a.trace if not runs else None))
    images = sum(len(b[0]) for b in data) / len(data)
    res = {"what": "wall time per part of one SSD-Det training step (ms, median over the steps after the warm-up); "
                   "each part its own time less the parts nested in it (time.perf_counter at the model's scopes, "
                   "src/ssddet/models/profiling.py)",
           "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": {**machine(), "cpus_usable": cpu_count()},
           "settings": {"data": a.data, "noise": a.noise, "steps": a.steps, "warmup": a.warmup,
                        "progress": a.progress, "batch_size": cfg.train.batch_size, "images_per_step": images,
                        "backbone": cfg.model.backbone, "min_size": cfg.model.min_size,
                        "max_size": cfg.model.max_size, "overrides": overrides,
                        "backward_split": separable(cfg)},
           "config": cfg.to_dict(), "runs": runs}
    if a.profile_out:
        Path(a.profile_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.profile_out).write_text(json.dumps(res, indent=2))
    print(profile_table(runs))
    if a.profile_out:
        print(f"\nwrote {a.profile_out}")


def machine() -> dict:
    """noise_sweep's record of the machine (CPU model, kernels, versions), for the issue's "report the machine"."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:  # loaded by path (the tests), not run as a script
        sys.path.insert(0, here)
    from noise_sweep import machine as sweep_machine

    return sweep_machine()


def profile_table(runs: list[dict]) -> str:
    """Markdown: one row per part, ms per step and share of the step for each thread count."""
    head = "| part | " + " | ".join(f"{r['threads']} thread{'s' * (r['threads'] > 1)}: ms per step | share"
                                     for r in runs) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(runs)]
    parts = [p["part"] for p in runs[0]["parts"]]
    for part in parts:
        cells = []
        for r in runs:
            p = next((p for p in r["parts"] if p["part"] == part), None)
            cells += [f"{p['ms']:.1f}", f"{100 * p['share']:.1f} %"] if p else ["–", "–"]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| **step (median)** | " + " | ".join(f"**{r['step_ms']:.1f}** | 100 %" for r in runs) + " |")
    lines.append("")
    for r in runs:  # the nested parts together (inclusive times), not rows of the table
        incl = {p["scope"]: p["inclusive_ms"] for p in r["parts"]}
        back = sum(incl.get(k, 0.0) for k in ("backward", "backward.refiner", "backward.detector"))
        lines.append(f"{r['threads']} thread(s): the refiner's forward {incl.get('refiner', 0.0):.1f} ms "
                     f"({100 * incl.get('refiner', 0.0) / r['step_ms']:.1f} %), the whole backward {back:.1f} ms "
                     f"({100 * back / r['step_ms']:.1f} %), over {r['steps']} steps")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/bccd")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.4)
    ap.add_argument("--set", action="append", default=[], help="overrides for the ssddet runs, ';'-separated "
                    "per configuration, e.g. --set 'ssddet.sampler=small;ssddet.trunk_dim=256'")
    ap.add_argument("--profile", action="store_true", help="time the parts of one SSD-Det step (the first --set "
                    "configuration) at each --threads count, instead of the comparison table")
    ap.add_argument("--profile-out", default="benchmarks/results/speed_profile.json", help="--profile: the JSON")
    ap.add_argument("--progress", type=float, default=0.5, help="fraction of training the steps are taken at "
                    "(SSD-Det's warm-up blend, keep-step trust and ignore band depend on it)")
    ap.add_argument("--trace", help="--profile: one more step under torch.profiler, its Chrome trace written here "
                    "and its top operators printed")
    ap.add_argument("--backbone", action="append", default=[], help="backbones to time (repeatable); the "
                    "ratios of the table are to the first backbone's vanilla step")
    ap.add_argument("--min-size", type=int, default=0, help="image size (default: the config default)")
    ap.add_argument("--threads", type=int, nargs="+", default=[], help="torch threads, one run per count (default: "
                    "torch's; --profile: 1 2)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the whole comparison this many times, each "
                    "round from the same initial weights, and report each configuration's median step and median "
                    "ratio over the rounds (this VM's speed drifts by ~10 %% over minutes: rounds spread the "
                    "configurations over the same minutes)")
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args()
    base = Config()
    base.data.data_dir, base.data.noise = a.data, a.noise
    if a.min_size:
        base.model.min_size = a.min_size
    if a.backbone:
        base.model.backbone = a.backbone[0]
    data, k = batches(base, a.steps + a.warmup)
    if a.profile:
        profile(a, base, data, k)
        return
    rows = []
    for n in a.threads or [0]:
        if n:
            torch.set_num_threads(n)
            print(f"{n} thread(s)")
        rounds = [compare(a, base, data, k) for _ in range(max(a.rounds, 1))]
        rows += rounds[0] if len(rounds) == 1 else over_rounds(rounds)
    if a.out:
        host = machine()  # the "report the machine": each row says where it was measured
        with open(a.out, "w") as f:
            json.dump([{**r, "machine": host} for r in rows], f, indent=2)


def compare(a, base: Config, data, k: int) -> list[dict]:
    """One row per configuration at the current thread count (printed as it is measured)."""
    rows = []
    t_ref = None
    print(f"{'config':60s} {'step s':>8s} {'x vanilla':>9s} {'RoIs/it':>8s}")
    for backbone in a.backbone or [base.model.backbone]:
        base.model.backbone = backbone
        specs = [[s for s in spec.split(";") if s] for spec in a.set or [""]]
        cfgs = [_with(base, "vanilla", [])] + [_with(base, "ssddet", o) for o in specs]
        (t_van, _), *ssddet = time_steps(cfgs, data, k, a.warmup)
        t_ref = t_ref or t_van
        rows.append({"config": f"{backbone} vanilla", "step_s": t_van, "ratio": t_van / t_ref,
                     "threads": torch.get_num_threads()})
        print(f"{backbone + ' vanilla':60s} {t_van:8.3f} {t_van / t_ref:9.2f}")
        for overrides, (t, stats) in zip(specs, ssddet):
            name = f"{backbone} ssddet " + " ".join(overrides)
            rows.append({"config": name, "step_s": t, "ratio": t / t_ref, "rois": stats.get("num_rois_shared"),
                         "iou_refined": stats.get("iou_refined"), "iou_noisy": stats.get("iou_noisy"),
                         "threads": torch.get_num_threads()})
            print(f"{name:60s} {t:8.3f} {t / t_ref:9.2f} {stats.get('num_rois_shared', 0):8.0f}")
    return rows


def over_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Each configuration's median step and median ratio over the rounds, with every round's values."""
    rows = []
    print(f"median over {len(rounds)} rounds")
    for i, first in enumerate(rounds[0]):
        steps = [r[i]["step_s"] for r in rounds]
        ratios = [r[i]["ratio"] for r in rounds]
        row = {**first, "step_s": statistics.median(steps), "ratio": statistics.median(ratios),
               "rounds_step_s": steps, "rounds_ratio": ratios}
        rows.append(row)
        print(f"{row['config']:60s} {row['step_s']:8.3f} {row['ratio']:9.2f}  (ratios "
              + " ".join(f"{x:.2f}" for x in ratios) + ")")
    return rows


def _with(base: Config, method: str, overrides: list[str]) -> Config:
    cfg = Config.from_dict(base.to_dict())
    cfg.train.method = method
    apply_overrides(cfg, overrides)
    return cfg


if __name__ == "__main__":
    main()
