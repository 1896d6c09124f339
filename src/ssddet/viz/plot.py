"""`ssddet plot`: training curves of one or more runs from their `log.jsonl` (the per-epoch records
engine/log.py writes), overlaid with the runs' names: val AP and AP50, the mean IoU with the clean boxes of
the noisy / stage-I / refined / detector-target boxes, the total loss and every loss term, one panel each."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

IOU_KEYS = {"iou_noisy": ("noisy", ":"), "iou_stage1": ("stage-I", "-."), "iou_refined": ("refined", "-"),
            "iou_det_target": ("detector target", "--")}
DETECTOR_LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
NCOLS, PANEL_W, PANEL_H, DPI = 4, 4.0, 3.2, 100


def read_epochs(run_dir: str | Path) -> list[dict]:
    """The epoch records of a run's log.jsonl, one per epoch (the last one written wins: a resumed run may
    have logged an epoch twice), sorted by epoch. Unparsable lines (a record cut by a crash) are skipped with a
    counted warning."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no log.jsonl (not a run directory?)")
    epochs: dict[int, dict] = {}
    bad = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and rec.get("kind") == "epoch" and isinstance(rec.get("epoch"), int):
            epochs[rec["epoch"]] = rec
    if bad:
        log.warning("%s: %d unparsable line(s) skipped", path, bad)
    if not epochs:
        raise UserError(f"{path}: no epoch record yet (the first is written at the end of epoch 1)")
    return [epochs[k] for k in sorted(epochs)]


def run_names(runs: list[str | Path]) -> list[str]:
    """The shortest path ends that tell the runs apart (runs/a/ssddet and runs/b/ssddet -> a/ssddet, b/ssddet)."""
    parts = [Path(r).resolve().parts for r in runs]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(r) for r in runs]


def panels(runs: list[list[dict]]) -> list[tuple[str, str]]:
    """(title, what) of every panel: "val:AP", "val:AP50", "iou", "train:loss" and each loss term any run
    logged (the detector's terms first, then the method's)."""
    keys = {k for recs in runs for r in recs for k in r.get("train", {})}
    terms = [k for k in DETECTOR_LOSSES if k in keys] + sorted(k for k in keys if k.startswith("loss_")
                                                               and k not in DETECTOR_LOSSES)
    out = [("val AP", "val:AP"), ("val AP50", "val:AP50")]
    if keys & set(IOU_KEYS):
        out.append(("mean IoU with the clean boxes", "iou"))
    out.append(("total loss", "train:loss"))
    return out + [(k, f"train:{k}") for k in terms]


def figure_size(n_panels: int) -> tuple[int, int]:
    """(width, height) in px of the PNG for `n_panels` panels."""
    rows = math.ceil(n_panels / NCOLS)
    return round(NCOLS * PANEL_W * DPI), round(rows * PANEL_H * DPI)


def _series(recs: list[dict], section: str, key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[section][key]) for r in recs
           if isinstance(r.get(section), dict) and isinstance(r[section].get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def plot_runs(runs: list[list[dict]], names: list[str], out: str | Path) -> Path:
    """Epoch records of each run (`read_epochs`) -> PNG of `figure_size(len(panels(runs)))` px at `out`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    spec = panels(runs)
    w, h = figure_size(len(spec))
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    axes = fig.subplots(math.ceil(len(spec) / NCOLS), NCOLS, squeeze=False).ravel()
    for ax, (title, what) in zip(axes, spec):
        for recs, name, c in zip(runs, names, colours):
            if what == "iou":  # colour: the run, line style: which boxes
                for key, (_, style) in IOU_KEYS.items():
                    x, y = _series(recs, "train", key)
                    ax.plot(x, y, style, color=c, marker=".")
            else:
                section, key = what.split(":")
                x, y = _series(recs, section, key)
                ax.plot(x, y, "-", color=c, marker="o", ms=3, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="run", title_fontsize=7)
    if any(w == "iou" for _, w in spec):
        ax = axes[[w for _, w in spec].index("iou")]
        ax.legend([Line2D([], [], color="k", linestyle=st) for _, st in IOU_KEYS.values()],
                  [kind for kind, _ in IOU_KEYS.values()], fontsize=7, title="boxes", title_fontsize=7)
    for ax in axes[len(spec):]:
        ax.set_visible(False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out
