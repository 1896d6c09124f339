"""Train several methods under the same budget and seed and tabulate val AP and refined-box IoU.

    python benchmarks/compare.py --data ../shared/data/bccd --epochs 10 --out benchmarks/results/bccd \
        --run clean:vanilla:0 --run noisy:vanilla:0.4 --run ssddet:ssddet:0.4 --run oamil:oamil:0.4

Each --run is NAME:METHOD:NOISE[:--set overrides separated by ';']. `--jobs N` runs N at a time, each with
(CPU cores / N) threads; a finished run (metrics.json present) is not rerun. Every run is scored at the end of
its schedule on the val split and, with `--test-split test`, on the test split (`ssddet eval` of model_final.pt).
Prints a markdown table with the share of the clean-minus-noisy AP gap each run recovers (when runs named
`clean` and `noisy` are among them), writes OUT/summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def last_epoch(run: Path) -> dict:
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"epoch"' in line]
    epochs = [r for r in recs if r.get("kind") == "epoch"]
    return epochs[-1] if epochs else {}


def epoch_series(run: Path, key: str) -> list:
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [round(r["train"].get(key, float("nan")), 3) for r in recs if r.get("kind") == "epoch"]


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def test_metrics(out: Path, a, threads: int) -> dict | None:
    """AP of the run's final model on the test split (cached in OUT/NAME/test_metrics.json)."""
    if not a.test_split:
        return None
    path = out / "test_metrics.json"
    if not path.is_file():
        cmd = [sys.executable, "-m", "ssddet.cli", "eval", "--data", a.data, "--split", a.test_split, "--checkpoint",
               str(out / "model_final.pt"), "--workers", "1", "--json"]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env(threads))
        path.write_text(res.stdout)
    return json.loads(path.read_text())


def run_one(name, method, noise, sets, a, threads: int) -> dict:
    out = Path(a.out) / name
    if not (out / "metrics.json").is_file():
        shutil.rmtree(out, ignore_errors=True)  # a crashed run: `ssddet train` starts afresh
        cmd = [sys.executable, "-m", "ssddet.cli", "train", "--data", a.data, "--method", method, "--noise", noise,
               "--epochs", str(a.epochs), "--seed", str(a.seed), "--out", str(out), *a.extra.split()]
        for s in sets:
            cmd += ["--set", s]
        t0 = time.time()
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(threads))
        (out / "wall_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    metrics = json.loads((out / "metrics.json").read_text())
    test = test_metrics(out, a, threads)
    ep = last_epoch(out)
    train = ep.get("train", {})
    return {"name": name, "method": method, "noise": float(noise), "sets": sets,
            "AP": metrics["val"]["AP"], "AP50": metrics["val"]["AP50"], "AP75": metrics["val"]["AP75"],
            "best_AP": metrics["best_AP"], "iou_noisy": train.get("iou_noisy"),
            "iou_refined": train.get("iou_refined"), "iou_det_target": train.get("iou_det_target"),
            "iou_refined_per_epoch": epoch_series(out, "iou_refined"),
            "wall_s": float((out / "wall_seconds.txt").read_text()) if (out / "wall_seconds.txt").exists() else None,
            **({"test_AP": test["AP"], "test_AP50": test["AP50"], "test_AP75": test["AP75"],
                "test_per_class_AP": test.get("per_class")} if test else {})}


def gap_recovered(rows: list[dict], key: str) -> dict[str, float]:
    """(run - noisy) / (clean - noisy) of metric `key`, when runs named clean and noisy exist."""
    by = {r["name"]: r for r in rows}
    if "clean" not in by or "noisy" not in by or key not in by["clean"]:
        return {}
    gap = by["clean"][key] - by["noisy"][key]
    return {r["name"]: (r[key] - by["noisy"][key]) / gap for r in rows if gap > 0 and key in r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/bccd")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/bccd")
    ap.add_argument("--extra", default="", help="extra `ssddet train` arguments for every run")
    ap.add_argument("--run", action="append", required=True)
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (threads split evenly)")
    ap.add_argument("--threads", type=int, default=0, help="threads per run (default: CPU cores / jobs)")
    ap.add_argument("--test-split", default="", help="also score model_final.pt on this split (e.g. test)")
    a = ap.parse_args()
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)

    def one(spec: str) -> dict:
        name, method, noise, *rest = spec.split(":", 3)
        return run_one(name, method, noise, [s for s in (rest[0] if rest else "").split(";") if s], a, threads)

    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(one, a.run))
    gaps = {k: gap_recovered(rows, k) for k in ("AP", "test_AP")}
    for r in rows:
        r["gap_recovered_val"], r["gap_recovered_test"] = gaps["AP"].get(r["name"]), gaps["test_AP"].get(r["name"])
    Path(a.out, "summary.json").write_text(json.dumps(rows, indent=2))

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    def pct(v):
        return "-" if v is None else f"{100 * v:.0f}%"

    print("| run | method | noise | val AP | val AP50 | val AP75 | test AP | test AP50 | test AP75 | gap recovered "
          "(val / test AP) | IoU noisy | IoU refined | minutes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['method']} | {r['noise']} | {f(r['AP'])} | {f(r['AP50'])} | {f(r['AP75'])} | "
              f"{f(r.get('test_AP'))} | {f(r.get('test_AP50'))} | {f(r.get('test_AP75'))} | "
              f"{pct(r['gap_recovered_val'])} / {pct(r['gap_recovered_test'])} | "
              f"{f(r['iou_noisy'])} | {f(r['iou_refined'])} | {(r['wall_s'] or 0) / 60:.1f} |")


if __name__ == "__main__":
    main()
