"""Can `ssddet audit` calibrate its box-quality estimate on the dataset itself? A measured negative result.

The audit sees a = mean IoU(given box, b̃) and wants q = mean IoU(given box, true box). This script tries the
obvious self-calibration: on a sample of the training images, take the refined boxes b̃ as stand-ins for the true
ones, add OA-MIL noise of known levels L to them, refine those noisy boxes with the same refiner, and read q off the
curve of (a_L, q_L) at the observed a. It prints the curve and the estimate against the truth (the file's
`true_bbox`).

    python benchmarks/audit_selfcal.py --checkpoint runs/sweep/n40_ssddet_s0/checkpoint.pt \
        --ann runs/sweep/n40_noisy_train.json --images ../shared/data/bccd [--n 60]

`--ann` may be a `ssddet refine` export (its `noisy_bbox` is taken as the given box). The refiner runs without
the keep-the-box step, as `ssddet audit` runs it. docs/results.md ("How good are my boxes?") reports the outcome.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import time

import numpy as np
import torch

from ssddet.data.boxes import aligned_iou_np, xywh_to_xyxy, xyxy_to_xywh
from ssddet.data.coco import internal_ann_ids, parse_coco
from ssddet.data.noise import add_box_noise
from ssddet.engine.refine import load_refiner_method, only_images, refine_records

LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4)


def given_file(path: str, n: int, seed: int = 0) -> dict:
    """The training split's given boxes (`noisy_bbox` of an export back in `bbox`), `n` images drawn with `seed`."""
    raw = json.load(open(path))
    for a in raw["annotations"]:
        if "noisy_bbox" in a:
            a["bbox"] = a.pop("noisy_bbox")
    images = [im for im in raw["images"] if im.get("split") == "train"]
    images = random.Random(seed).sample(images, min(n, len(images)))
    return only_images(raw, {im["id"] for im in images})


def refined_pairs(method, raw: dict, images: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """-> (given [N, 4], b̃ [N, 4], true [N, 4] (the given box where the file has none), internal ids [N])."""
    refined = refine_records(method, parse_coco(raw, "sample", images).select("train"), torch.device("cpu"))
    given, ref, true, keys = [], [], [], []
    for a, k in zip(raw["annotations"], internal_ann_ids(raw["annotations"])):
        if k in refined:
            given.append(xywh_to_xyxy(np.asarray(a["bbox"], float)))
            true.append(xywh_to_xyxy(np.asarray(a.get("true_bbox", a["bbox"]), float)))
            ref.append(refined[k])
            keys.append(k)
    return np.array(given), np.array(ref), np.array(true), keys


def stand_in(raw: dict, refined: np.ndarray, keys: list) -> dict:
    """The sample with b̃ as its boxes (no `true_bbox`: the noise generator then records b̃ as the clean box)."""
    by_key = dict(zip(keys, refined))
    out = copy.deepcopy(raw)
    out["annotations"] = [{**{f: v for f, v in a.items() if f not in ("true_bbox", "noised")},
                           "bbox": [float(x) for x in xyxy_to_xywh(by_key[k])]}
                          for a, k in zip(raw["annotations"], internal_ann_ids(raw["annotations"])) if k in by_key]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--ann", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--n", type=int, default=60, help="training images sampled (seed 0)")
    a = ap.parse_args(argv)
    t0 = time.time()
    method, _, _ = load_refiner_method(a.checkpoint, torch.device("cpu"))
    method.refiner.cfg.keep_given = False
    raw = given_file(a.ann, a.n)
    given, ref, true, keys = refined_pairs(method, raw, a.images)
    agree, q = aligned_iou_np(given, ref).mean(), aligned_iou_np(given, true).mean()
    print(f"given boxes: a = {agree:.3f}, true q = {q:.3f}, IoU(b̃, true) = {aligned_iou_np(ref, true).mean():.3f} "
          f"({len(given)} boxes)")
    curve = []
    for level in LEVELS:
        noisy, _ = add_box_noise(stand_in(raw, ref, keys), level, seed=1)
        g, r, t, _ = refined_pairs(method, noisy, a.images)
        curve.append((aligned_iou_np(g, r).mean(), aligned_iou_np(g, t).mean()))
        print(f"  b̃ + noise {level:.1f}: a_L = {curve[-1][0]:.3f}, q_L = {curve[-1][1]:.3f}")
    x, y = np.array(curve).T
    order = np.argsort(x)
    print(f"self-calibrated estimate {np.interp(agree, x[order], y[order]):.3f} against the true {q:.3f} "
          f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
