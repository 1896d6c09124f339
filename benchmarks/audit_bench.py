"""`ssddet audit` side by side with cleanlab's object-detection scores, on every kind of box error at once.

    pip install -e ".[bench]"          # cleanlab
    python benchmarks/audit_bench.py [--data ../shared/data/bccd] [--seeds 0 1] [--smoke]

1. The BCCD training split with mixed simulated noise (`ssddet noise --noise 0.4 --missing 0.1 --swap 0.1
   --spurious 0.05 --split train`, noise seed 45): 40 % OA-MIL box noise, 10 % of the annotations removed (kept
   under `missing_annotations`), 10 % given another class (`true_category_id`), 5 % spurious boxes added
   (`"spurious": true`); every real box keeps its clean box as `true_bbox`.
2. One SSD-Det run per seed on it (`ssddet train --train-ann NOISY --val-ann DATA/annotations.json ... --epochs 6
   --eval-every 2 --workers 1 --seed S --out RUNS/sS`; skipped when RUNS/sS/metrics.json exists).
3. `ssddet audit` of the noisy training split with that run. For each kind, the average precision (AP) of the
   audit's ranking against the known errors, and the precision at the true count (the share of errors among the
   top n, n = how many there are):
   - misplaced: the given box has IoU < 0.5 with its `true_bbox`;
   - wrong_class: `category_id` != `true_category_id`;
   - spurious: `"spurious": true`;
   - missing: the removed annotations (at their `true_bbox`); a finding (a detection that no annotation covers)
     finds one at IoU >= 0.5 with the same class, each at most once, most confident findings first.
4. The same for cleanlab 2.x (`cleanlab.object_detection.rank`) fed the same detector's predictions on the same
   images (the detections `ssddet audit` reports, the run's own score threshold 0.05, i.e. what `ssddet predict
   --score 0.05` gives): `compute_badloc_box_scores` (misplaced), `compute_swap_box_scores` (wrong_class),
   `compute_overlooked_box_scores` (missing), and for spurious `compute_badloc_box_scores` (cleanlab has no score
   for a box on no object; badloc, "no prediction of its class matches this box", is the nearest; swap and the
   smaller of the two are reported as variants). Lower cleanlab score = more likely an issue, so 1 - score ranks;
   overlooked's NaN (a prediction under its confidence threshold or touching an annotation) is not a candidate.
5. benchmarks/results/audit_bench.json and .md (with --smoke: RUNS/audit_bench.json and .md, results untouched).

Alternatives to each audit score ("variants": the class evidence on the given box only or on b̃ only, the
refiner's confidence, missing objects covered by the given boxes only, ...) are scored beside it, so the choice of
the default can be checked on every run.

--smoke: a handful of images, one short epoch at a small image size, runs end to end in a minute or two; its
numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

NOISE = {"level": 0.4, "missing": 0.1, "swap": 0.1, "spurious": 0.05}
NOISE_SEED = 45
WRONG_IOU = 0.5  # misplaced: IoU(given, true) below this
MATCH_IOU = 0.5  # a missing-object finding matches a removed annotation at IoU >= this (same class)
KINDS = ("misplaced", "wrong_class", "spurious", "missing")
SMOKE = {"train_images": 4, "val_images": 2, "epochs": 1, "iters": 2, "min_size": 160, "max_size": 224}


# ---------------------------------------------------------------- ranking metrics
def average_precision(scores, hits, n_pos: int) -> float:
    """AP of a ranking, higher score first: the mean over the `n_pos` true errors of the precision at the rank
    where each is found, 0 for one never found (candidates with a NaN score are not found). Tied scores are found
    together, at the end of their tie group (as scikit-learn's average_precision_score)."""
    if n_pos == 0:
        return float("nan")
    s, h = np.asarray(scores, np.float64), np.asarray(hits, bool)
    keep = ~np.isnan(s)
    s, h = s[keep], h[keep]
    if len(s) == 0:
        return 0.0
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], np.cumsum(h[order])
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last index of each tie group
    found = np.diff(np.r_[0, tp[ends]])
    return float((found * tp[ends] / (ends + 1)).sum() / n_pos)


def precision_at_count(scores, hits, n_pos: int) -> float:
    """The share of true errors among the top `n_pos` by score (n_pos: how many errors there are; a shorter list
    still divides by n_pos). A tie group across the cut counts at its mean hit rate."""
    if n_pos == 0:
        return float("nan")
    s, h = np.asarray(scores, np.float64), np.asarray(hits, np.float64)
    keep = ~np.isnan(s)
    s, h = s[keep], h[keep]
    if len(s) <= n_pos:
        return float(h.sum() / n_pos)
    cut = np.sort(s)[::-1][n_pos - 1]
    above, tie = s > cut, s == cut
    return float((h[above].sum() + (n_pos - above.sum()) * h[tie].mean()) / n_pos)


def ranking_metrics(scores, hits, n_pos: int) -> dict:
    return {"ap": average_precision(scores, hits, n_pos), "p_at_count": precision_at_count(scores, hits, n_pos)}


# ---------------------------------------------------------------- ground truth of the noisy file
def xywh_to_xyxy(b) -> np.ndarray:
    x, y, w, h = (float(v) for v in b)
    return np.array([x, y, x + w, y + h])


def box_iou_np(a, b) -> np.ndarray:
    return box_iou(torch.as_tensor(np.asarray(a, np.float64).reshape(-1, 4)),
                   torch.as_tensor(np.asarray(b, np.float64).reshape(-1, 4))).numpy()


def annotation_truth(noisy: dict) -> dict:
    """{annotation id: {misplaced, wrong_class, spurious}} of the noisy file's annotations."""
    out = {}
    for a in noisy["annotations"]:
        spurious = bool(a.get("spurious"))
        tb = a.get("true_bbox")
        iou = float(box_iou_np(xywh_to_xyxy(a["bbox"]), xywh_to_xyxy(tb))[0, 0]) if tb and not spurious else 1.0
        out[a["id"]] = {"misplaced": iou < WRONG_IOU, "spurious": spurious,
                        "wrong_class": a.get("true_category_id", a["category_id"]) != a["category_id"]}
    return out


def removed_objects(noisy: dict, image_ids: set) -> list[dict]:
    """The removed annotations of the audited images: {image_id, box xyxy (the true box), category_id}."""
    return [{"image_id": a["image_id"], "box": xywh_to_xyxy(a.get("true_bbox") or a["bbox"]),
             "category_id": a["category_id"]} for a in noisy.get("missing_annotations", [])
            if a["image_id"] in image_ids]


def match_findings(findings: list[dict], removed: list[dict]) -> np.ndarray:
    """Bool per finding ({image_id, box, category_id, score}): it finds a removed annotation not found by a more
    confident finding, at IoU >= MATCH_IOU with the same class."""
    hits = np.zeros(len(findings), bool)
    taken = np.zeros(len(removed), bool)
    by_image: dict = {}
    for i, r in enumerate(removed):
        by_image.setdefault(r["image_id"], []).append(i)
    for f in sorted(range(len(findings)), key=lambda i: -findings[i]["score"]):
        cand = [i for i in by_image.get(findings[f]["image_id"], [])
                if not taken[i] and removed[i]["category_id"] == findings[f]["category_id"]]
        if not cand:
            continue
        ious = box_iou_np(findings[f]["box"], np.stack([removed[i]["box"] for i in cand]))[0]
        if ious.max() >= MATCH_IOU:
            taken[cand[int(ious.argmax())]] = hits[f] = True
    return hits


# ---------------------------------------------------------------- the audit's scores and their variants
def audit_scores(rep, removed: list[dict], truth: dict, label_to_cat: dict) -> dict:
    """{kind: {name: metrics}}: the audit's default score of each kind ("audit") and its variants."""
    from ssddet.engine.audit_kinds import spurious_score, wrong_class_score

    anns = [r for r in rep.rows if r["kind"] not in ("missing", "invalid")]
    pg, pr = np.stack([r["probs_given"] for r in anns]), np.stack([r["probs_refined"] for r in anns])
    labels = np.array([r["label"] for r in anns])
    conf = np.array([r["confidence"] for r in anns])
    iou = np.array([r["iou_given_refined"] for r in anns])
    variants = {
        "misplaced": {"audit": 1 - iou, "(1 - IoU) x confidence": (1 - iou) * conf},
        "wrong_class": {"audit": np.array([r["wrong_class_score"] for r in anns]),
                        "given box only": wrong_class_score(pg, labels)[0].numpy(),
                        "refined box only": wrong_class_score(pr, labels)[0].numpy(),
                        "1 - refiner confidence": 1 - conf},
        "spurious": {"audit": np.array([r["spurious_score"] for r in anns]),
                     "given box only": spurious_score(pg, pg).numpy(), "1 - refiner confidence": 1 - conf},
    }
    out = {}
    for kind, named in variants.items():
        hits = np.array([truth[r["annotation_id"]][kind] for r in anns])
        out[kind] = {name: ranking_metrics(s, hits, int(hits.sum())) for name, s in named.items()}
    out["missing"] = {name: ranking_metrics([f["score"] for f in fs], match_findings(fs, removed), len(removed))
                      for name, fs in missing_variants(rep, anns, label_to_cat).items()}
    return out


def missing_variants(rep, anns: list[dict], label_to_cat: dict) -> dict:
    """{name: findings}: the audit's missing rows, and the same detections covered by the given boxes only."""
    from ssddet.engine.audit_kinds import missing_objects

    audit = [{"image_id": r["image_id"], "box": r["detected"], "category_id": label_to_cat[r["label"]],
              "score": r["missing_score"]} for r in rep.rows if r["kind"] == "missing"]
    given: dict = {}
    for r in anns:
        given.setdefault(r["image_id"], []).append(r["given"])
    min_score = rep.summary.get("missing_min_score", 0.5)
    only_given = []
    for iid, d in rep.detections.items():
        keep = missing_objects(d["boxes"], d["scores"], np.array(given.get(iid, [])).reshape(-1, 4), min_score)
        only_given += [{"image_id": iid, "box": d["boxes"][k], "category_id": int(d["category_ids"][k]),
                        "score": float(d["scores"][k])} for k in keep]
    return {"audit": audit, "given boxes only cover": only_given}


# ---------------------------------------------------------------- cleanlab on the same predictions
def cleanlab_inputs(noisy: dict, rep, cats: list[int]) -> tuple[list, list, list]:
    """(labels, predictions, annotation ids per image) in cleanlab's formats for the audited images: labels
    {'bboxes': xyxy [L, 4], 'labels': [L] in 0..K-1}; predictions: K + 1 arrays [M_k, 5] (x1, y1, x2, y2, score)
    per image, the last one empty: with exactly three classes cleanlab's format sniffing (`_get_prediction_type`)
    can take K per-class arrays for its (boxes, labels, probs) form, one more class never predicted rules that out."""
    index = {c: k for k, c in enumerate(cats)}
    by_image: dict = {}
    for a in noisy["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    labels, preds, ids = [], [], []
    for iid, d in rep.detections.items():
        anns = by_image.get(iid, [])
        labels.append({"bboxes": np.array([xywh_to_xyxy(a["bbox"]) for a in anns]).reshape(-1, 4),
                       "labels": np.array([index[a["category_id"]] for a in anns], np.int64)})
        ids.append([a["id"] for a in anns])
        cls = np.array([index[int(c)] for c in d["category_ids"]], np.int64)
        per = [np.c_[d["boxes"][cls == k], d["scores"][cls == k]].reshape(-1, 5) for k in range(len(cats))]
        pred = np.empty(len(cats) + 1, dtype=object)  # one array per class (np.array would stack equal shapes)
        for k, arr in enumerate([*per, np.zeros((0, 5))]):
            pred[k] = arr
        preds.append(pred)
    return labels, preds, ids


def cleanlab_scores(noisy: dict, rep, removed: list[dict], truth: dict, cats: list[int]) -> dict:
    """{kind: {name: metrics}} of cleanlab's scores (1 - score ranks: lower cleanlab score = more likely)."""
    from cleanlab.object_detection import rank

    labels, preds, ids = cleanlab_inputs(noisy, rep, cats)
    audited = {r["annotation_id"] for r in rep.rows if r["kind"] not in ("missing", "invalid")}
    flat = [(i, j) for i, per in enumerate(ids) for j, aid in enumerate(per) if aid in audited]
    badloc = rank.compute_badloc_box_scores(labels=labels, predictions=preds)
    swap = rank.compute_swap_box_scores(labels=labels, predictions=preds)
    bl = np.array([1 - badloc[i][j] for i, j in flat])
    sw = np.array([1 - swap[i][j] for i, j in flat])
    hits = {k: np.array([truth[ids[i][j]][k] for i, j in flat]) for k in ("misplaced", "wrong_class", "spurious")}
    out = {"misplaced": {"badloc": ranking_metrics(bl, hits["misplaced"], int(hits["misplaced"].sum()))},
           "wrong_class": {"swap": ranking_metrics(sw, hits["wrong_class"], int(hits["wrong_class"].sum()))},
           "spurious": {name: ranking_metrics(s, hits["spurious"], int(hits["spurious"].sum()))
                        for name, s in (("badloc", bl), ("swap", sw), ("max(1 - badloc, 1 - swap)",
                                                                          np.maximum(bl, sw)))}}
    out["missing"] = {}
    for name, thresh in (("overlooked", None), ("overlooked, high_probability_threshold=0.5", 0.5)):
        over = rank.compute_overlooked_box_scores(labels=labels, predictions=preds, high_probability_threshold=thresh)
        findings = overlooked_findings(over, preds, list(rep.detections), cats)
        out["missing"][name] = ranking_metrics([f["score"] for f in findings], match_findings(findings, removed),
                                               len(removed))
    return out


def overlooked_findings(over: list, preds: list, image_ids: list, cats: list[int]) -> list[dict]:
    """cleanlab's overlooked scores -> findings (the non-NaN ones, score 1 - overlooked)."""
    out = []
    for iid, scores, pred in zip(image_ids, over, preds):
        boxes = np.concatenate([p[:, :4] for p in pred])
        labels = np.concatenate([np.full(len(p), k) for k, p in enumerate(pred)])
        out += [{"image_id": iid, "box": boxes[m], "category_id": cats[int(labels[m])], "score": 1 - float(s)}
                for m, s in enumerate(scores) if not math.isnan(s)]
    return out


# ---------------------------------------------------------------- the pipeline
def ssddet_cli(args: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"$ ssddet {' '.join(args)}\n")
        f.flush()
        subprocess.run([sys.executable, "-m", "ssddet.cli", *args], stdout=f, stderr=subprocess.STDOUT, check=True)


def smoke_subset(data: Path, out: Path) -> Path:
    """A few train and val images of DATA/annotations.json -> OUT/subset.json (image paths still under DATA)."""
    raw = json.loads((data / "annotations.json").read_text())
    keep = set()
    for split, n in (("train", SMOKE["train_images"]), ("val", SMOKE["val_images"])):
        keep |= {im["id"] for im in [im for im in raw["images"] if im.get("split") == split][:n]}
    sub = {**raw, "images": [im for im in raw["images"] if im["id"] in keep],
           "annotations": [a for a in raw["annotations"] if a["image_id"] in keep]}
    path = out / "subset.json"
    path.write_text(json.dumps(sub))
    return path


def noisy_split(source: Path, data: Path, out: Path) -> Path:
    """The mixed-noise copy of the training split (`ssddet noise`, NOISE, seed NOISE_SEED), written once (delete it,
    and the runs trained on it, to rebuild)."""
    import ssddet

    path = out / "noisy_train.json"
    if not path.is_file():
        ssddet.noise(source, images=data, level=NOISE["level"], missing=NOISE["missing"], swap=NOISE["swap"],
                     spurious=NOISE["spurious"], seed=NOISE_SEED, split="train", out=path)
    return path


def train(noisy: Path, val: Path, data: Path, seed: int, run: Path, smoke: bool, log: Path) -> None:
    if (run / "metrics.json").is_file():
        return
    args = ["train", "--train-ann", str(noisy), "--val-ann", str(val), "--images", str(data), "--workers", "1",
            "--seed", str(seed), "--out", str(run)]
    if smoke:
        args += ["--epochs", str(SMOKE["epochs"]), "--eval-every", "1", "--min-size", str(SMOKE["min_size"]),
                 "--set", f"train.max_iters_per_epoch={SMOKE['iters']}", "--set",
                 f"model.max_size={SMOKE['max_size']}"]
    else:
        args += ["--epochs", "6", "--eval-every", "2"]
    ssddet_cli(args, log)


def evaluate_seed(noisy_path: Path, data: Path, run: Path, missing_score: float) -> dict:
    import ssddet

    t0 = time.time()
    rep = ssddet.audit(run / "checkpoint.pt", noisy_path, images=data, split="train", out=run / "audit.csv",
                       missing_score=missing_score)
    noisy = json.loads(noisy_path.read_text())
    cats = sorted(c["id"] for c in noisy["categories"])
    label_to_cat = {k + 1: c for k, c in enumerate(cats)}
    truth = annotation_truth(noisy)
    removed = removed_objects(noisy, set(rep.detections))
    anns = [r for r in rep.rows if r["kind"] not in ("missing", "invalid")]
    counts = {k: int(sum(truth[r["annotation_id"]][k] for r in anns)) for k in ("misplaced", "wrong_class",
                                                                                 "spurious")}
    return {"true_counts": {**counts, "missing": len(removed)}, "annotations": len(anns),
            "images": len(rep.detections), "audit_kinds": rep.summary["kinds"],
            "audit": audit_scores(rep, removed, truth, label_to_cat),
            "cleanlab": cleanlab_scores(noisy, rep, removed, truth, cats), "seconds": round(time.time() - t0, 1)}


PRIMARY = {"audit": dict.fromkeys(KINDS, "audit"),
           "cleanlab": {"misplaced": "badloc", "wrong_class": "swap", "spurious": "badloc", "missing": "overlooked"}}


def mean_over_seeds(seeds: dict) -> dict:
    """{tool: {kind: {name: {ap, p_at_count}}}} averaged over the seeds (NaN-aware)."""
    first = next(iter(seeds.values()))
    out: dict = {}
    for tool in ("audit", "cleanlab"):
        for kind, named in first[tool].items():
            for name, m in named.items():
                out.setdefault(tool, {}).setdefault(kind, {})[name] = {
                    key: float(np.nanmean([s[tool][kind][name][key] for s in seeds.values()])) for key in m}
    return out


def markdown(result: dict) -> str:
    mean, seeds = result["mean"], result["seeds"]
    counts = next(iter(seeds.values()))["true_counts"]
    lines = [f"Mixed noise on the BCCD training split (box {NOISE['level']:.0%}, missing {NOISE['missing']:.0%}, "
             f"swapped {NOISE['swap']:.0%}, spurious {NOISE['spurious']:.0%}; noise seed {NOISE_SEED}), SSD-Det "
             f"trained on it, seeds {', '.join(seeds)}; AP of each ranking and precision at the true count.", "",
             "| kind | true errors | `ssddet audit` AP | P@count | cleanlab score | cleanlab AP | P@count |",
             "|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        a, name = mean["audit"][kind]["audit"], PRIMARY["cleanlab"][kind]
        c = mean["cleanlab"][kind][name]
        lines.append(f"| {kind} | {counts[kind]} | {a['ap']:.3f} | {a['p_at_count']:.3f} | {name} | {c['ap']:.3f} | "
                     f"{c['p_at_count']:.3f} |")
    lines += ["", "| tool | kind | score | AP | P@count |", "|---|---|---|---|---|"]
    for tool in ("audit", "cleanlab"):
        for kind, named in mean[tool].items():
            for name, m in named.items():
                lines.append(f"| {tool} | {kind} | {name} | {m['ap']:.3f} | {m['p_at_count']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/bccd", help="dataset dir: annotations.json with a `split` "
                    "per image, images under it")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--runs", default=None, help="run folder (default: runs/audit_bench, --smoke: "
                    "runs/audit_bench_smoke)")
    ap.add_argument("--missing-score", type=float, default=0.05, help="the audit's missing-object threshold here "
                    "(default 0.05, every detection: the AP ranks them all)")
    ap.add_argument("--out", default="benchmarks/results/audit_bench.json")
    ap.add_argument("--smoke", action="store_true", help="a few images, one short epoch: checks the pipeline")
    a = ap.parse_args(argv)
    data = Path(a.data)
    runs = Path(a.runs or ("runs/audit_bench_smoke" if a.smoke else "runs/audit_bench"))
    runs.mkdir(parents=True, exist_ok=True)
    out = runs / "audit_bench.json" if a.smoke else Path(a.out)
    source = smoke_subset(data, runs) if a.smoke else data / "annotations.json"
    noisy = noisy_split(source, data, runs)
    seeds = {}
    for seed in a.seeds:
        run = runs / f"s{seed}"
        train(noisy, source, data, seed, run, a.smoke, runs / f"s{seed}.log")
        seeds[str(seed)] = evaluate_seed(noisy, data, run, a.missing_score)
        print(f"seed {seed}: audited {seeds[str(seed)]['annotations']} annotations in "
              f"{seeds[str(seed)]['seconds']} s", flush=True)
    info = json.loads(noisy.read_text()).get("info", {})  # what the simulator did (a stale file shows here)
    result = {"noise": {**NOISE, "seed": NOISE_SEED}, "simulated": {k: info.get(k) for k in ("box_noise",
                                                                                             "label_noise")},
              "missing_score": a.missing_score, "smoke": a.smoke, "seeds": seeds, "mean": mean_over_seeds(seeds)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md + f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
