"""`ssddet audit`'s work: rank every annotation of a dataset by how likely it is wrong, and every image by the
objects it likely misses, using a trained SSD-Det run (its refiner and its detector), as CSV (and HTML with a
picture per finding; engine/audit_html.py).

Four kinds of error, each with its own score and ranking (how each score is made, and why the scores are comparable
within a kind: engine/audit_kinds.py): `misplaced` (the box is off its object), `wrong_class`, `spurious` (no object
there) for every annotation, and `missing` (a confident detection that no annotation covers) per image. Every
annotation row carries the three annotation scores and `kind`, the first of spurious, wrong_class, misplaced whose
score passes 0.5 (`ok` when none does); each missing object is a row of its own (kind `missing`).

The misplaced score is the one `audit` always had: the refiner refines each given box (every object, no per-image
cap, no keep-the-box step) into b̃, and
    wrong = 1 - IoU(given, b̃),
the further the refiner moves a box, the more likely it is wrong. The refiner's confidence c in b̃ is reported
beside it (CSV column `confidence`: the mean, over the top-k proposals merged into b̃, of the score the final
merge weighs them by, i.e. stage-II class probability of the annotated class x SISD spatial confidence;
method.md 3.1 step 7), but it does not weigh the score: on noisy data c is lower on the wrong boxes than on the
right ones (a bag drawn around a misplaced box holds the object less well), so (1 - IoU) x c demotes exactly the
boxes sought (measured in docs/benchmarks.md, "Looking at the results on BCCD"). With clean boxes (`true_bbox`)
the precision of the ranking is printed: the share of the top 10 % whose given box has IoU < 0.5 with its clean
box, against that share over all annotations (the base rate), and the precision of the confidence-weighted
ranking beside it."""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.boxes import aligned_iou_np, xyxy_to_xywh
from .audit_kinds import KINDS, OK, annotation_kind, class_view, missing_objects, spurious_score, wrong_class_score

log = logging.getLogger(__name__)
TOP_FRACTION, WRONG_IOU = 0.1, 0.5  # the precision check: top 10 %, "wrong" = IoU < 0.5 with the clean box
# the score each kind is ranked by (`kind_rank`); `ok` rows have no kind rank
KIND_SCORE = {"misplaced": "score", "wrong_class": "wrong_class_score", "spurious": "spurious_score",
              "missing": "missing_score"}


@dataclass
class AuditReport:
    rows: list[dict]  # annotations worst (misplaced) first, then the missing objects, most confident first
    summary: dict = field(default_factory=dict)
    # {image id: {"boxes": xyxy [D, 4] JSON frame, "scores": [D], "category_ids": [D]}}: every detection of the
    # trained detector (its own score threshold), the ones the missing-object findings were drawn from
    detections: dict = field(default_factory=dict)

    def __str__(self) -> str:
        """The summary `ssddet audit` prints (`format_summary`)."""
        return format_summary(self.summary)

    def of_kind(self, kind: str) -> list[dict]:
        """The rows whose `kind` is `kind`, most likely first (by `kind_rank`)."""
        return sorted((r for r in self.rows if r["kind"] == kind), key=lambda r: r["kind_rank"] or 0)


CSV_FIELDS = ("rank", "score", "iou_given_refined", "iou_refined_mirror", "confidence", "annotation_id", "image_id",
              "file_name", "category", "given_x", "given_y", "given_w", "given_h", "refined_x", "refined_y",
              "refined_w", "refined_h", "iou_given_clean", "iou_refined_clean",
              # the kinds (engine/audit_kinds.py)
              "kind", "kind_rank", "wrong_class_score", "suggested_category", "spurious_score", "missing_score",
              "detected_x", "detected_y", "detected_w", "detected_h",
              # an annotation the loader left out (kind `invalid`): why
              "problem")
INVALID = "invalid"  # an annotation no command can use (unknown image or category id, unusable bbox)


def wrong_score(iou: np.ndarray) -> np.ndarray:
    """1 - IoU(given, refined), the misplaced score (module docstring)."""
    return 1.0 - iou


def annotation_rows(rec, ev, class_names: list[str]) -> list[dict]:
    """The rows of one image's annotations (CSV_FIELDS; the clean-box IoUs None without true_bbox) from its
    audit_kinds.ImageEvidence `ev`."""
    wrong, other = wrong_class_score(class_view(ev.probs_given, ev.probs_refined), rec.labels)
    spurious = spurious_score(ev.probs_given, ev.probs_refined)
    rows = []
    for j, aid in enumerate(rec.ann_ids.tolist()):
        given, box = rec.boxes[j].astype(np.float64), ev.refined[j]
        iou = float(aligned_iou_np(given, box))
        row = {"score": float(wrong_score(np.float64(iou))), "iou_given_refined": iou,
               "iou_refined_mirror": float(aligned_iou_np(box, ev.refined_mirror[j].astype(np.float64))),
               "confidence": float(ev.confidence[j]), "annotation_id": rec.source_ids[j] if rec.source_ids else aid,
               "image_id": rec.image_id, "file_name": str(rec.path), "category": class_names[int(rec.labels[j]) - 1],
               "label": int(rec.labels[j]), "given": given, "refined": box, "clean": None, "iou_given_clean": None,
               "iou_refined_clean": None, "wrong_class_score": float(wrong[j]),
               "suggested_category": class_names[int(other[j]) - 1] if len(class_names) > 1 else None,
               "spurious_score": float(spurious[j]),
               "missing_score": None, "detected": None, "probs_given": ev.probs_given[j],
               "probs_refined": ev.probs_refined[j]}
        row["kind"] = annotation_kind(row["score"], row["wrong_class_score"], row["spurious_score"])
        if rec.true_boxes is not None:
            clean = rec.true_boxes[j].astype(np.float64)
            row.update(clean=clean, iou_given_clean=float(aligned_iou_np(given, clean)),
                       iou_refined_clean=float(aligned_iou_np(box, clean)))
        rows.append(row)
    return rows


# a row's fields that come from refining and classifying an annotation's box: empty on the rows without one
REFINER_FIELDS = ("score", "iou_given_refined", "iou_refined_mirror", "confidence", "given", "refined", "clean",
                  "iou_given_clean", "iou_refined_clean", "wrong_class_score", "suggested_category", "spurious_score",
                  "probs_given", "probs_refined")


def missing_rows(rec, ev, class_names: list[str], min_score: float) -> list[dict]:
    """One row per likely missing object of the image (audit_kinds.missing_objects)."""
    covered = np.concatenate([rec.boxes.reshape(-1, 4), ev.refined.reshape(-1, 4), rec.crowd_boxes.reshape(-1, 4)])
    blank = dict.fromkeys((*REFINER_FIELDS, "annotation_id"))
    return [{**blank, "kind": "missing", "image_id": rec.image_id, "file_name": str(rec.path),
             "category": class_names[int(ev.det_labels[d]) - 1], "label": int(ev.det_labels[d]),
             "missing_score": float(ev.det_scores[d]), "detected": ev.det_boxes[d]}
            for d in missing_objects(ev.det_boxes, ev.det_scores, covered, min_score)]


def invalid_rows(dataset, records) -> list[dict]:
    """One row (kind `invalid`) per annotation the loader left out (`CocoData.dropped`) that belongs to `records`'
    images or to no image of the file at all, its `problem` the reason."""
    ids = {r.image_id for r in records}
    known = {r.image_id: r for r in dataset.records}
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset.categories}
    blank = dict.fromkeys((*REFINER_FIELDS, "label", "missing_score", "detected"))
    rows = []
    for d in dataset.dropped:
        iid = d["image_id"] if isinstance(d["image_id"], (int, str)) else None
        if iid in ids or iid not in known:
            cat = d["category_id"] if isinstance(d["category_id"], (int, str)) else None
            rows.append({**blank, "kind": INVALID, "annotation_id": d["annotation_id"], "image_id": d["image_id"],
                         "file_name": str(known[iid].path) if iid in known else None,
                         "category": names.get(cat, d["category_id"]),
                         "problem": f"{d['reason']} (bbox {d['bbox']!r})"})
    return rows


def rank_annotations(records, evidence: dict, class_names: list[str], missing_score: float,
                     invalid: list[dict] = ()) -> list[dict]:
    """The `invalid` rows first (annotations no command can use, `invalid_rows`), then every annotation of
    `records` with evidence (audit_kinds.gather_evidence), worst (misplaced score) first (ties: annotation order),
    then the likely missing objects, most confident first; `rank` is the row's place, `kind_rank` its place within
    its kind (by that kind's score; invalid rows in file order)."""
    rows, missing = [], []
    for rec in records:
        ev = evidence.get(rec.image_id)
        if ev is not None:
            rows += annotation_rows(rec, ev, class_names)
            missing += missing_rows(rec, ev, class_names, missing_score)
    rows = [*invalid, *sorted(rows, key=lambda r: -r["score"]), *sorted(missing, key=lambda r: -r["missing_score"])]
    for rank, row in enumerate(rows, start=1):
        row["rank"], row["kind_rank"] = rank, None
    for k, row in enumerate(invalid, start=1):
        row["kind_rank"] = k
    for kind in KINDS:
        key = KIND_SCORE[kind]
        for k, row in enumerate(sorted((r for r in rows if r["kind"] == kind), key=lambda r: -r[key]), start=1):
            row["kind_rank"] = k
    return rows


def report_detections(records, evidence: dict, label_to_cat: dict[int, int]) -> dict:
    """AuditReport.detections from the evidence."""
    return {r.image_id: {"boxes": ev.det_boxes, "scores": ev.det_scores,
                         "category_ids": np.array([label_to_cat[int(k)] for k in ev.det_labels], np.int64)}
            for r in records if (ev := evidence.get(r.image_id)) is not None}


def ranking_precision(scores: np.ndarray, iou_clean: np.ndarray, frac: float = TOP_FRACTION,
                      thresh: float = WRONG_IOU) -> tuple[float, float, int]:
    """-> (share of the top ceil(frac * N) by score with iou_clean < thresh, share over all N, top count)."""
    n = len(scores)
    k = max(1, math.ceil(frac * n))
    top = np.argsort(-scores, kind="stable")[:k]
    wrong = iou_clean < thresh
    return float(wrong[top].mean()), float(wrong.mean()), k


def summarise(rows: list[dict], missing_score: float | None = None) -> dict:
    """Counts and the share of each kind; with clean boxes the ranking precision (also of the confidence-weighted
    (1 - IoU) x c ranking, for reference) against the base rate."""
    anns = [r for r in rows if r["kind"] not in ("missing", INVALID)]
    s = {"annotations": len(anns), "kinds": {k: sum(r["kind"] == k for r in rows) for k in (*KINDS, OK, INVALID)}}
    if missing_score is not None:
        s["missing_min_score"] = missing_score
    if not anns:
        return s
    s["mean_confidence"] = float(np.mean([r["confidence"] for r in anns]))
    s.update(box_quality(np.array([r["iou_given_refined"] for r in anns]),
                         np.array([r["iou_refined_mirror"] for r in anns])))
    known = [r for r in anns if r["iou_given_clean"] is not None]
    if known:
        clean = np.array([r["iou_given_clean"] for r in known])
        prec, base, k = ranking_precision(np.array([r["score"] for r in known]), clean)
        weighted = np.array([(1.0 - r["iou_given_refined"]) * r["confidence"] for r in known])
        prec_w, _, _ = ranking_precision(weighted, clean)
        s.update(with_clean=len(known), top=k, precision=prec, base_rate=base, precision_weighted=prec_w,
                 iou_given_clean=float(clean.mean()),
                 iou_refined_clean=float(np.mean([r["iou_refined_clean"] for r in known])))
    return s


# (mean IoU(given, b̃), mean IoU(given, clean)) of the training boxes at 40 % and 0 % OA-MIL noise, audited with the
# refiners trained on them (BCCD, pretrained Lite0, 6 epochs, the default config, means over seeds 0 and 1;
# benchmarks/audit_calibration.py). The refiner moves even exact boxes by its own error, so the raw mean
# understates clean boxes and overstates noisy ones.
CALIBRATION = ((0.497, 0.462), (0.783, 1.0))


def estimate_box_iou(iou_given_refined: float) -> float:
    """The mean IoU of the given boxes with the true ones, estimated from their mean IoU with the refined ones:
    the straight line through CALIBRATION, clipped to [0, 1]."""
    (a0, q0), (a1, q1) = CALIBRATION
    return float(np.clip(q0 + (iou_given_refined - a0) * (q1 - q0) / (a1 - a0), 0.0, 1.0))


def box_quality(iou_given_refined: np.ndarray, iou_refined_mirror: np.ndarray | None = None) -> dict:
    """How good the dataset's boxes look to the refiner, from Tensor[N] IoU(given, b̃): their mean, the estimate of
    their mean IoU with the true boxes (`estimate_box_iou`), and the share of boxes flagged, i.e. moved so far that
    the given box has IoU < WRONG_IOU with its refinement.

    With Tensor[N] IoU(b̃, b̃ of the mirror image), the refiner's agreement with itself: where the given boxes
    agree with b̃ not clearly less (`estimate_reliable`) than b̃ agrees with itself, the refiner's moves are within
    its own noise, it cannot tell these boxes apart from right ones, and the estimate is withheld (None).
    Measured on the sets whose truth is known (docs/results.md): refiners that learned the boxes sit well below
    their self-agreement (BCCD 0-40 % noise: 0.06-0.30 below), ones that learned little near or above it
    (Aquarium: -0.002 to +0.039, where the line's estimates were 0.69-0.71 against true 1.00 and 0.46)."""
    mean = float(iou_given_refined.mean())
    out = {"iou_given_refined": mean, "iou_estimate": estimate_box_iou(mean),
           "flagged": float((iou_given_refined < WRONG_IOU).mean())}
    if iou_refined_mirror is not None and len(iou_refined_mirror):
        self_agreement = float(np.mean(iou_refined_mirror))
        reliable = estimate_reliable(mean, self_agreement)
        out.update(self_agreement=self_agreement, estimate_reliable=reliable,
                   iou_estimate=out["iou_estimate"] if reliable else None)
    return out


# How far below the refiner's self-agreement the given boxes' agreement must sit for its moves to count. Chosen
# between the two sets measured (docs/results.md): BCCD's closest cell sat 0.058 below, Aquarium's cells from
# 0.002 below to 0.039 above (at the defaults of 2026-12-07: BCCD 0.082 below, Aquarium 0.007 below to 0.046
# above); not yet checked on a third set.
SELF_MARGIN = 0.03


def estimate_reliable(iou_given_refined: float, self_agreement: float) -> bool:
    """Whether the given boxes agree with their refinement (mean IoU) clearly less than the refinement agrees
    with itself on the mirror image (mean IoU): only then do the refiner's moves say something about the boxes."""
    return iou_given_refined < self_agreement - SELF_MARGIN


def format_kinds(s: dict) -> str:
    """The estimated share of each kind: of the annotations, and the missing objects against their count."""
    n, kinds = s["annotations"], s["kinds"]
    share = ", ".join(f"{k.replace('_', ' ')} {kinds[k]} ({kinds[k] / n:.1%})" for k in ("misplaced", "wrong_class",
                                                                                         "spurious", OK))
    at = f" (detections with score >= {s['missing_min_score']:g} that overlap no annotation)" \
        if "missing_min_score" in s else ""
    return (f"kinds of the annotations (the first of spurious, wrong class, misplaced whose score passes 0.5): {share}"
            f"; likely missing objects: {kinds['missing']}{at}, as many as {kinds['missing'] / n:.1%} of the "
            "annotations")


def _box_quality_line(s: dict) -> str:
    line = (f"box quality: the given boxes have mean IoU {s['iou_given_refined']:.3f} with their refinement; "
            f"{s['flagged']:.1%} flagged (IoU < {WRONG_IOU} with it)")
    mirror = (f"the refiner agrees with itself (image against mirror image) at mean IoU {s['self_agreement']:.3f}"
              if "self_agreement" in s else "")
    if s.get("iou_estimate") is None:
        return (f"{line}; {mirror}, no better than with the given boxes: its moves are within its own noise, so it "
                "cannot judge these boxes (no estimate of their quality; its misplaced ranking is weak here)")
    return (f"{line}; {mirror + '; ' if mirror else ''}estimated mean IoU with the true boxes "
            f"{s['iou_estimate']:.2f} (calibrated on BCCD, docs/results.md)")


def format_summary(s: dict) -> str:
    lines = [f"audited {s['annotations']} annotations" + (f" (mean refiner confidence {s['mean_confidence']:.3f})"
                                                         if "mean_confidence" in s else "")]
    if "iou_given_refined" in s:
        lines.append(_box_quality_line(s))
    if "kinds" in s and s["annotations"]:
        lines.append(format_kinds(s))
    if s.get("kinds", {}).get(INVALID):
        lines.append(f"invalid annotations, left out by every command (unknown image or category id, unusable bbox; "
                     f"kind `{INVALID}`, first in the CSV): {s['kinds'][INVALID]}")
    if "precision" in s:
        lift = s["precision"] / s["base_rate"] if s["base_rate"] > 0 else float("inf")
        lines.append(f"ranking precision: {s['precision']:.3f} of the top {TOP_FRACTION:.0%} ({s['top']} boxes) have "
                     f"IoU < {WRONG_IOU} with their clean box, against a base rate of {s['base_rate']:.3f} "
                     f"({lift:.2f}x); ranking by (1 - IoU) x confidence instead: {s['precision_weighted']:.3f}")
        lines.append(f"mean IoU with the clean boxes: given {s['iou_given_clean']:.3f}, refined "
                     f"{s['iou_refined_clean']:.3f}")
    if s.get("skipped_images"):
        lines.append(f"skipped {s['skipped_images']} unreadable image(s): their annotations are not ranked")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


def _xywh(names: tuple[str, ...], box) -> dict:
    return dict(zip(names, [None] * 4 if box is None else xyxy_to_xywh(np.asarray(box)).tolist()))


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in rows:
            flat = {**r, **_xywh(("given_x", "given_y", "given_w", "given_h"), r["given"]),
                    **_xywh(("refined_x", "refined_y", "refined_w", "refined_h"), r["refined"]),
                    **_xywh(("detected_x", "detected_y", "detected_w", "detected_h"), r["detected"])}
            w.writerow([_fmt(flat.get(k)) for k in CSV_FIELDS])  # `problem`: invalid rows only
    return path
