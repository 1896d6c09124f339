"""Per-epoch summary of finished (or running) `ssddet train` run directories, from their log.jsonl.

    python benchmarks/summarize_runs.py RUN_DIR [RUN_DIR ...] [--json OUT.json]

Prints, per run and epoch: val AP50/AP (epochs that were evaluated), the mean IoU with the clean boxes of the
noisy boxes, of SSD-Det's refined boxes b̃ and of the detector's targets, and the epoch's seconds; with --json
writes the same figures plus the final val metrics (metrics.json) and command.txt.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

TRAIN_KEYS = ("iou_noisy", "iou_stage1", "iou_refined", "iou_det_target", "bag_iou_max", "grad_norm")


def summarize(run: Path) -> dict:
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    epochs = []
    for r in recs:
        if r.get("kind") != "epoch":
            continue
        val = r.get("val") or {}
        epochs.append({"epoch": r["epoch"], "seconds": round(r["seconds"], 1),
                       **({"eval_seconds": r["eval_seconds"]} if "eval_seconds" in r else {}),
                       **{k: round(val[k], 4) for k in ("AP", "AP50", "AP75") if k in val},
                       **{k: round(r["train"][k], 4) for k in TRAIN_KEYS if k in r.get("train", {})}})
    out = {"run": str(run), "epochs": epochs}
    if (run / "metrics.json").is_file():
        out["final_val"] = json.loads((run / "metrics.json").read_text())["val"]
    if (run / "command.txt").is_file():
        out["command"] = (run / "command.txt").read_text().strip().splitlines()[-1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", help="write the summaries here")
    a = ap.parse_args()
    rows = [summarize(r) for r in a.runs if (r / "log.jsonl").is_file()]
    for s in rows:
        print(s["run"], s.get("command", ""))
        for e in s["epochs"]:
            print("  " + " ".join(f"{k}={v}" for k, v in e.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
