"""What a trained SSD-Det refiner would do to every training box, for choosing the keep-the-box rule offline.

    python benchmarks/keep_probe.py runs/sweep/n00_ssddet_s0 runs/sweep/n40_ssddet_s0 [--out DIR]

For each run, every object of its training split (with the run's own box noise) goes through the refiner twice,
on the image and on its mirror image, and this records per object, in the JSON's pixel frame: the given box b*,
SPSD-I's regression of b* itself (proposal 0 of bag B1), the stage-I box b̂, the merged box b̃ (before the keep
step), the keep step's scores of (b*, b̃) (stage-II class probability and SISD IoU), b̃ of the mirror pass, and
the clean box. Saves OUT/RUN.npz; `--report` prints, per run, the mean IoU with the clean box of every candidate
and of the keep rules (per-box IoU arm at several thresholds), and the dataset-level signals a rule can use
without the clean boxes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import ssddet.models.ssddet.keep as keep_mod
from ssddet.data.boxes import aligned_iou_np
from ssddet.data.dataset import load_image, record_target
from ssddet.data.splits import training_split_json
from ssddet.engine.refine import load_refiner_method
from ssddet.models.ssddet.keep import agreement_modes

KEYS = ("given", "spsd1", "stage1", "merged", "merged_flip", "clean", "cls", "sisd", "label", "image_id")


def _flip(boxes: torch.Tensor, width: float) -> torch.Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


@torch.no_grad()
def probe(run: Path, limit: int = 0) -> dict[str, np.ndarray]:
    method, cfg, _ = load_refiner_method(run / "checkpoint.pt", torch.device("cpu"))
    method.refiner.cfg.max_objects_per_image = 0
    _, _, records = training_split_json(cfg.data)
    records = records[:limit] if limit else records
    seen: dict = {}
    real = keep_mod.keep_the_box

    def spy(cand, cls, iou, keep_iou, clean=None, **kw):
        seen.update(cand=cand.clone(), cls=cls.clone(), iou=None if iou is None else iou.clone())
        return real(cand, cls, iou, keep_iou, clean, **kw)

    keep_mod.keep_the_box = spy
    rows: dict[str, list] = {k: [] for k in KEYS}
    try:
        for rec in records:
            if len(rec.boxes) == 0 or rec.true_boxes is None:
                continue
            image, sx, sy = load_image(rec)
            target = record_target(rec, sx, sy)
            out = {}
            for flip in (False, True):
                img, t = image, dict(target)
                if flip:
                    img, t["boxes"] = image.flip(-1), _flip(target["boxes"], image.shape[-1])
                images, targets = method.detector.transform([img], [t])
                feats = method.detector.backbone(images.tensors)
                res = method.refiner(feats, images.image_sizes, [targets[0]["boxes"]], [targets[0]["labels"]])
                (h1, w1), (h0, w0) = images.image_sizes[0], img.shape[-2:]
                back = torch.tensor([w0 / w1 / sx, h0 / h1 / sy] * 2)

                def json_frame(b: torch.Tensor, w1=w1, flip=flip, back=back) -> np.ndarray:
                    b = b.float().cpu()
                    return ((_flip(b, w1) if flip else b) * back).numpy()

                out[flip] = {"merged": json_frame(seen["cand"][:, 1]), "spsd1": json_frame(res.bags["bag1"][:, 0]),
                             "stage1": json_frame(res.stage1[0]), "cls": seen["cls"].cpu().numpy(),
                             "sisd": (seen["iou"].cpu().numpy() if seen["iou"] is not None
                                      else np.ones_like(seen["cls"].cpu().numpy()))}
            n = len(rec.boxes)
            rows["given"].append(rec.boxes.astype(np.float64))
            rows["clean"].append(rec.true_boxes.astype(np.float64))
            for k in ("spsd1", "stage1", "merged", "cls", "sisd"):
                rows[k].append(out[False][k])
            rows["merged_flip"].append(out[True]["merged"])
            rows["label"].append(rec.labels)
            rows["image_id"].append(np.full(n, rec.image_id))
    finally:
        keep_mod.keep_the_box = real
    return {k: np.concatenate(v) for k, v in rows.items()}


def report(name: str, d: dict[str, np.ndarray]) -> None:
    def iou(a, b):
        return aligned_iou_np(d[a], d[b])

    q = {k: iou(k, "clean") for k in ("given", "spsd1", "stage1", "merged", "merged_flip")}
    agree = iou("given", "merged")
    print(f"## {name}: {len(agree)} objects")
    print("IoU with clean: " + ", ".join(f"{k} {v.mean():.3f}" for k, v in q.items()))
    print("signals (no clean box): " + ", ".join(f"{k} {v:.3f}" for k, v in {
        "IoU(given, merged)": agree.mean(), "median": np.median(agree),
        "IoU(given, spsd1)": iou("given", "spsd1").mean(), "IoU(given, stage1)": iou("given", "stage1").mean(),
        "IoU(merged, mirror merged)": iou("merged", "merged_flip").mean(),
        "IoU(given, mirror merged)": iou("given", "merged_flip").mean(),
        "cls(given) - cls(merged)": (d["cls"][:, 0] - d["cls"][:, 1]).mean(),
        "sisd(given) - sisd(merged)": (d["sisd"][:, 0] - d["sisd"][:, 1]).mean()}.items()))
    for t in (0.5, 0.6, 0.7, 0.75, 0.8, 0.9):
        keep = agree >= t
        print(f"  keep b* where IoU(b*, b̃) >= {t:.2f}: kept {keep.mean():.1%}, IoU with clean "
              f"{np.where(keep, q['given'], q['merged']).mean():.3f}")
    groups = _groups(d, q)
    by_group(q, agree, groups, d["sisd"])
    modes(q, agree)
    mirror_rule(q, agree, iou("merged", "merged_flip"), groups)
    avg = (d["merged"] + d["merged_flip"]) / 2
    print(f"  mirror-averaged b̃: {aligned_iou_np(avg, d['clean']).mean():.3f}; oracle(b*, b̃) "
          f"{np.maximum(q['given'], q['merged']).mean():.3f}")


EXACT_IOU = 0.99  # a given box this close to its clean box counts as exact (as keep.py's statistics)


def _groups(d: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Boolean masks: the exact and the noised given boxes, and the clean boxes' COCO size classes (area in the
    JSON's pixel frame: < 32², < 96², the rest)."""
    c = d["clean"]
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    exact = q["given"] >= EXACT_IOU
    return {"exact": exact, "noised": ~exact, "small": area < 32 ** 2,
            "medium": (area >= 32 ** 2) & (area < 96 ** 2), "large": area >= 96 ** 2}


def by_group(q: dict[str, np.ndarray], agree: np.ndarray, groups: dict[str, np.ndarray], sisd: np.ndarray) -> None:
    """Per group: its count, IoU(b*, b̃) quartiles, and the mean IoU with clean of b*, b̃ and the IoU-arm rules;
    the SISD head's IoU estimate of b* and of b̃ (sisd: Array[N, 2])."""
    for name, m in groups.items():
        if not m.any():
            continue
        a = agree[m]
        rules = " ".join(f"t{round(t * 100)} {np.where(a >= t, q['given'][m], q['merged'][m]).mean():.3f}"
                         for t in (0.5, 0.6, 0.7, 0.8))
        print(f"  {name:7s} n={int(m.sum()):5d} IoU(b*, b̃) q25/50/75 {np.quantile(a, 0.25):.3f}/"
              f"{np.median(a):.3f}/{np.quantile(a, 0.75):.3f}; IoU with clean: b* {q['given'][m].mean():.3f} "
              f"b̃ {q['merged'][m].mean():.3f} {rules}; SISD b* {sisd[m, 0].mean():.3f} b̃ {sisd[m, 1].mean():.3f}")


def modes(q: dict[str, np.ndarray], agree: np.ndarray) -> None:
    """The shape of the agreement distribution (a candidate signal for the keep rule, docs/benchmarks.md): the two
    modes, their separation (difference of the means over the pooled SD) and what the IoU arm at 0.5 gives."""
    w, mu, sd = (t.numpy() for t in agreement_modes(torch.from_numpy(agree)))  # the keep step's own fit
    sep = abs(mu[1] - mu[0]) / np.sqrt((sd ** 2).mean())
    t50 = np.where(agree >= 0.5, q["given"], q["merged"]).mean()
    print(f"  agreement modes: weights {w.round(2)}, means {mu.round(3)}, SDs {sd.round(3)}, separation "
          f"{sep:.2f}; t50 {t50:.3f} against b̃ {q['merged'].mean():.3f}")


def mirror_rule(q: dict[str, np.ndarray], agree: np.ndarray, mirror: np.ndarray, groups: dict) -> None:
    """A per-box significance test (a candidate keep rule, docs/benchmarks.md): the refiner's move of b* counts
    only where it is larger than its disagreement with itself, keep b* where IoU(b*, b̃) >= IoU(b̃, b̃ of the
    mirror image) - delta. Prints, for the exact and the noised boxes, the mean of both and what the rule gives."""
    print("  mirror self-consistency IoU(b̃, b̃ mirror): " + ", ".join(
        f"{g} {mirror[groups[g]].mean():.3f} (agreement {agree[groups[g]].mean():.3f})"
        for g in ("exact", "noised") if groups[g].any()))
    for delta in (0.0, 0.05, 0.1):
        keep = agree >= mirror - delta
        out = np.where(keep, q["given"], q["merged"])
        print(f"    keep b* where IoU(b*, b̃) >= mirror - {delta:.2f}: kept {keep.mean():.1%}, IoU with clean "
              + ", ".join(f"{g} {out[groups[g]].mean():.3f}" for g in ("exact", "noised") if groups[g].any()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/keep_probe"))
    ap.add_argument("--limit", type=int, default=0, help="only the first N training images (a smoke test)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for run in a.runs:
        path = a.out / f"{run.name}.npz"
        if not path.is_file():
            np.savez_compressed(path, **probe(run, a.limit))
        report(run.name, dict(np.load(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
