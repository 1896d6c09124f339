"""Train several methods under the same budget and seed and tabulate val AP and refined-box IoU.

    python benchmarks/compare.py --data ../shared/data/bccd --epochs 10 --out benchmarks/results/bccd \
        --run clean:vanilla:0 --run noisy:vanilla:0.4 --run ssddet:ssddet:0.4 --run oamil:oamil:0.4

Each --run is NAME:METHOD:NOISE[:--set overrides separated by ';']. Runs go one after another (one CPU job at a
time); a finished run (metrics.json present) is not rerun. Prints a markdown table, writes OUT/summary.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def last_epoch(run: Path) -> dict:
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"epoch"' in line]
    epochs = [r for r in recs if r.get("kind") == "epoch"]
    return epochs[-1] if epochs else {}


def epoch_series(run: Path, key: str) -> list:
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [round(r["train"].get(key, float("nan")), 3) for r in recs if r.get("kind") == "epoch"]


def run_one(name, method, noise, sets, a) -> dict:
    out = Path(a.out) / name
    if not (out / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "ssddet.cli", "train", "--data", a.data, "--method", method, "--noise", noise,
               "--epochs", str(a.epochs), "--seed", str(a.seed), "--output", str(out), *a.extra.split()]
        for s in sets:
            cmd += ["--set", s]
        t0 = time.time()
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        (out / "wall_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    metrics = json.loads((out / "metrics.json").read_text())
    ep = last_epoch(out)
    train = ep.get("train", {})
    return {"name": name, "method": method, "noise": float(noise), "sets": sets,
            "AP": metrics["val"]["AP"], "AP50": metrics["val"]["AP50"], "AP75": metrics["val"]["AP75"],
            "best_AP": metrics["best_AP"], "iou_noisy": train.get("iou_noisy"),
            "iou_refined": train.get("iou_refined"), "iou_det_target": train.get("iou_det_target"),
            "iou_refined_per_epoch": epoch_series(out, "iou_refined"),
            "wall_s": float((out / "wall_seconds.txt").read_text()) if (out / "wall_seconds.txt").exists() else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/bccd")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/bccd")
    ap.add_argument("--extra", default="", help="extra `ssddet train` arguments for every run")
    ap.add_argument("--run", action="append", required=True)
    a = ap.parse_args()
    rows = []
    for spec in a.run:
        name, method, noise, *rest = spec.split(":", 3)
        rows.append(run_one(name, method, noise, [s for s in (rest[0] if rest else "").split(";") if s], a))
        Path(a.out, "summary.json").write_text(json.dumps(rows, indent=2))
    print("| run | method | noise | AP | AP50 | AP75 | IoU noisy | IoU refined | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    for r in rows:
        print(f"| {r['name']} | {r['method']} | {r['noise']} | {f(r['AP'])} | {f(r['AP50'])} | {f(r['AP75'])} | "
              f"{f(r['iou_noisy'])} | {f(r['iou_refined'])} | {(r['wall_s'] or 0) / 60:.1f} |")


if __name__ == "__main__":
    main()
