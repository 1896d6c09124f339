"""How well `ssddet audit` tells how noisy a dataset is: for each trained SSD-Det cell of the noise sweep, audit its
own training boxes and compare what the audit sees without the clean boxes (mean IoU of the given boxes with their
refinement, the refiner's agreement with itself between the image and its mirror, the share flagged, the estimate
`ssddet audit` prints or withholds) with the truth (mean IoU of the given boxes with
their clean boxes).

    python benchmarks/audit_calibration.py [--runs runs/sweep] [--data ../shared/data/bccd]

The training boxes of a cell at level L are rewritten by `ssddet noise --split train --noise L` (the generator and
seed the sweep's `--noise` uses, so they are the very boxes the cell trained on; at 0 % `true_bbox` = `bbox`), and
the audit runs on the training split with the cell's `checkpoint.pt`. Writes benchmarks/results/audit_calibration.json
and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import ssddet
from ssddet.engine.audit import estimate_box_iou, estimate_reliable


def noisy_train_json(data: str, level: float, runs: Path) -> Path:
    """The sweep's user-path file for this level (written once, shared with noise_sweep.py)."""
    path = runs / f"n{round(level * 100):02d}_noisy_train.json"
    if not path.is_file():
        noisy = ssddet.noise(Path(data) / "annotations.json", level=level, seed=45, split="train")
        path.write_text(json.dumps(noisy))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/sweep")
    ap.add_argument("--data", default="../shared/data/bccd")
    ap.add_argument("--cells", nargs="*", help="cell names (default: every nXX_ssddet_sY run with a checkpoint)")
    ap.add_argument("--out", default="benchmarks/results/audit_calibration.json")
    a = ap.parse_args(argv)
    runs, out = Path(a.runs), Path(a.out)
    names = a.cells or sorted(p.parent.name for p in runs.glob("n*_ssddet_s*/checkpoint.pt"))
    results = json.loads(out.read_text()) if out.is_file() else {}
    for name in names:
        level = int(re.match(r"n(\d+)_", name).group(1)) / 100
        ckpt = runs / name / "checkpoint.pt"
        done = results.get(name, {})
        if done.get("checkpoint_mtime") == ckpt.stat().st_mtime and "self_agreement" in done:
            # audited already; the estimate and its test are today's, functions of the stored means
            done["estimate_reliable"] = estimate_reliable(done["iou_given_refined"], done["self_agreement"])
            done["iou_estimate"] = (estimate_box_iou(done["iou_given_refined"]) if done["estimate_reliable"]
                                    else None)
            continue
        t0 = time.time()
        rep = ssddet.audit(ckpt, noisy_train_json(a.data, level, runs), images=a.data, split="train")
        s = rep.summary
        results[name] = {"noise": level, "annotations": s["annotations"], "checkpoint_mtime": ckpt.stat().st_mtime,
                         **{k: s.get(k) for k in ("iou_given_refined", "self_agreement", "estimate_reliable",
                                                  "flagged", "iou_estimate", "iou_given_clean", "iou_refined_clean")},
                         "seconds": time.time() - t0}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| cell | noise | IoU(given, refined) | IoU(refined, mirror refined) | flagged | estimate | "
          "true IoU(given, clean) | refined IoU |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in sorted(results.items()):
        est = "withheld" if r.get("iou_estimate") is None else f"{r['iou_estimate']:.3f}"
        f = {k: "–" if r.get(k) is None else f"{r[k]:.3f}" for k in ("iou_given_refined", "self_agreement",
                                                                      "iou_given_clean", "iou_refined_clean")}
        flagged = "–" if r.get("flagged") is None else f"{r['flagged']:.1%}"
        print(f"| {name} | {r['noise']:.0%} | {f['iou_given_refined']} | {f['self_agreement']} | {flagged} | {est} | "
              f"{f['iou_given_clean']} | {f['iou_refined_clean']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
