"""`ssddet audit`'s work: rank every annotation of a dataset by how likely its box is wrong, using a trained SSD-Det
refiner, worst first, as CSV (and HTML with thumbnails).

Score: the refiner refines each given box (every object, no per-image cap, no keep-the-box step) into b̃, and
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

import base64
import csv
import html
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.boxes import aligned_iou_np, xyxy_to_xywh
from ..viz.draw import CLEAN, NOISY, REFINED, draw_boxes, read_rgb, thumbnail

log = logging.getLogger(__name__)
TOP_FRACTION, WRONG_IOU = 0.1, 0.5  # the precision check: top 10 %, "wrong" = IoU < 0.5 with the clean box


@dataclass
class AuditReport:
    rows: list[dict]  # one per annotation, worst first (see `CSV_FIELDS`)
    summary: dict = field(default_factory=dict)

    def __str__(self) -> str:
        """The summary `ssddet audit` prints (`format_summary`)."""
        return format_summary(self.summary)


CSV_FIELDS = ("rank", "score", "iou_given_refined", "confidence", "annotation_id", "image_id", "file_name",
              "category", "given_x", "given_y", "given_w", "given_h", "refined_x", "refined_y", "refined_w",
              "refined_h", "iou_given_clean", "iou_refined_clean")


def refiner_confidence(bags: dict, top_k: int) -> torch.Tensor:
    """Tensor[M] in [0, 1]: mean of the top-k scores the refiner's final merge weighs (stage-II class
    probability x SISD spatial confidence; without SISD the class probability; a one-stage refiner: the
    stage-I score)."""
    from ..models.ssddet.sisd import spatial_confidence

    if "cls2" in bags:
        s = bags["cls2"].float()
        if "sisd" in bags:
            s = s * spatial_confidence(bags["sisd"])
    else:
        s = bags["q1"].float()
    return s.topk(min(int(top_k), s.shape[1]), dim=1).values.mean(dim=1)


def wrong_score(iou: np.ndarray) -> np.ndarray:
    """1 - IoU(given, refined), the ranking score (module docstring)."""
    return 1.0 - iou


def refine_with_confidence(method, records, device, bad=None) -> dict[int, tuple[np.ndarray, float]]:
    """-> {annotation id: (refined xyxy box in the JSON's pixel frame, confidence)}. Objects the refiner
    skips (degenerate boxes) keep their box with confidence 0; unreadable images (`bad`: a data.images.BadImages)
    have no entries."""
    from .refine import refine_chunks

    top_k = method.refiner.cfg.top_k
    # the merged box b̃ itself: the keep-the-box step would hand back the given box wherever it is close to b̃ (or
    # every given box of a dataset it trusts), and the audit asks how far the refiner would move each box
    method.refiner.cfg.keep_given = False
    out: dict[int, tuple[np.ndarray, float]] = {}
    for rec, part, res, back in refine_chunks(method, records, device, bad=bad):
        sel = res.selected[0].cpu()
        conf = torch.zeros(len(sel))
        if sel.any():
            conf[sel] = refiner_confidence(res.bags, top_k).cpu()
        for aid, box, c in zip(rec.ann_ids[part].tolist(), (res.refined[0] * back).cpu().numpy(), conf.tolist()):
            out[int(aid)] = (box.astype(np.float64), float(c))
    return out


def rank_annotations(records, refined: dict[int, tuple[np.ndarray, float]], class_names: list[str]) -> list[dict]:
    """One row per annotation (CSV_FIELDS; the clean-box IoUs None without true_bbox), sorted worst first
    (ties: annotation order)."""
    rows = []
    for rec in records:
        for j, aid in enumerate(rec.ann_ids.tolist()):
            given = rec.boxes[j].astype(np.float64)
            box, conf = refined[int(aid)]
            iou = float(aligned_iou_np(given, box))
            row = {"score": float(wrong_score(np.float64(iou))), "iou_given_refined": iou,
                   "confidence": conf, "annotation_id": rec.source_ids[j] if rec.source_ids else int(aid),
                   "image_id": rec.image_id,
                   "file_name": str(rec.path), "category": class_names[int(rec.labels[j]) - 1],
                   "given": given, "refined": box, "clean": None, "iou_given_clean": None,
                   "iou_refined_clean": None}
            if rec.true_boxes is not None:
                clean = rec.true_boxes[j].astype(np.float64)
                row.update(clean=clean, iou_given_clean=float(aligned_iou_np(given, clean)),
                           iou_refined_clean=float(aligned_iou_np(box, clean)))
            rows.append(row)
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["score"])  # stable: ties keep annotation order
    rows = [rows[i] for i in order]
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def ranking_precision(scores: np.ndarray, iou_clean: np.ndarray, frac: float = TOP_FRACTION,
                      thresh: float = WRONG_IOU) -> tuple[float, float, int]:
    """-> (share of the top ceil(frac * N) by score with iou_clean < thresh, share over all N, top count)."""
    n = len(scores)
    k = max(1, math.ceil(frac * n))
    top = np.argsort(-scores, kind="stable")[:k]
    wrong = iou_clean < thresh
    return float(wrong[top].mean()), float(wrong.mean()), k


def summarise(rows: list[dict]) -> dict:
    """Counts, and with clean boxes the ranking precision (also of the confidence-weighted (1 - IoU) x c
    ranking, for reference) against the base rate."""
    s = {"annotations": len(rows)}
    if not rows:
        return s
    s["mean_confidence"] = float(np.mean([r["confidence"] for r in rows]))
    s.update(box_quality(np.array([r["iou_given_refined"] for r in rows])))
    known = [r for r in rows if r["iou_given_clean"] is not None]
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


def box_quality(iou_given_refined: np.ndarray) -> dict:
    """How good the dataset's boxes look to the refiner, from Tensor[N] IoU(given, b̃): their mean, the estimate of
    their mean IoU with the true boxes (`estimate_box_iou`), and the share of boxes flagged, i.e. moved so far that
    the given box has IoU < WRONG_IOU with its refinement."""
    mean = float(iou_given_refined.mean())
    return {"iou_given_refined": mean, "iou_estimate": estimate_box_iou(mean),
            "flagged": float((iou_given_refined < WRONG_IOU).mean())}


def format_summary(s: dict) -> str:
    lines = [f"audited {s['annotations']} annotations" + (f" (mean refiner confidence {s['mean_confidence']:.3f})"
                                                         if "mean_confidence" in s else "")]
    if "iou_given_refined" in s:
        lines.append(f"box quality: the given boxes have mean IoU {s['iou_given_refined']:.3f} with their "
                     f"refinement; {s['flagged']:.1%} flagged (IoU < {WRONG_IOU} with it); estimated mean IoU with "
                     f"the true boxes {s['iou_estimate']:.2f} (calibrated on BCCD, docs/results.md)")
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


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in rows:
            g, b = xyxy_to_xywh(r["given"]), xyxy_to_xywh(r["refined"])
            flat = {**r, **dict(zip(("given_x", "given_y", "given_w", "given_h"), g.tolist())),
                    **dict(zip(("refined_x", "refined_y", "refined_w", "refined_h"), b.tolist()))}
            w.writerow([_fmt(flat[k]) for k in CSV_FIELDS])
    return path


def crop_thumbnail(image: torch.Tensor, row: dict, size: int = 160) -> str:
    """The given (vermillion), refined (blue) and clean (green) boxes drawn on the image, cropped around them
    with a margin -> base64 PNG data of at most size x size px."""
    h, w = image.shape[-2:]
    sx, sy = w / row["width"], h / row["height"]
    boxes = [b * np.array([sx, sy, sx, sy]) for b in (row["clean"], row["given"], row["refined"]) if b is not None]
    colours = ([CLEAN] if row["clean"] is not None else []) + [NOISY, REFINED]
    drawn = image
    for b, c in zip(boxes, colours):
        drawn = draw_boxes(drawn, b[None], c, width=2)
    allb = np.stack(boxes)
    x0, y0 = allb[:, :2].min(axis=0)
    x1, y1 = allb[:, 2:].max(axis=0)
    m = max(x1 - x0, y1 - y0, 16) * 0.4
    x0, y0 = int(max(0, x0 - m)), int(max(0, y0 - m))
    x1, y1 = int(min(w, x1 + m + 1)), int(min(h, y1 + m + 1))
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(thumbnail(drawn[:, y0:y1, x0:x1], size).permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_html(rows: list[dict], records, summary: dict, path: str | Path, top: int = 200) -> Path:
    """A self-contained page (thumbnails inlined) of the `top` worst annotations."""
    sizes = {r.image_id: (r.width, r.height) for r in records}
    cache: dict[str, torch.Tensor] = {}
    body = []
    for r in rows[:top]:
        if r["file_name"] not in cache:
            cache.clear()  # rows are not grouped by image: keep one decoded image, not all of them
            cache[r["file_name"]] = read_rgb(r["file_name"])
        wh = sizes[r["image_id"]]
        png = crop_thumbnail(cache[r["file_name"]], {**r, "width": wh[0], "height": wh[1]})
        clean = "" if r["iou_given_clean"] is None else f"{r['iou_given_clean']:.2f}"
        body.append(f"<tr><td>{r['rank']}</td><td>{r['score']:.3f}</td><td>{r['iou_given_refined']:.2f}</td>"
                    f"<td>{r['confidence']:.2f}</td><td>{clean}</td><td>{r['annotation_id']}</td>"
                    f"<td>{r['image_id']}</td><td>{html.escape(r['category'])}</td>"
                    f"<td>{html.escape(Path(r['file_name']).name)}</td>"
                    f"<td><img src=\"data:image/png;base64,{png}\"></td></tr>")
    head = ("<tr><th>rank</th><th>score</th><th>IoU given/refined</th><th>confidence</th><th>IoU given/clean</th>"
            "<th>annotation</th><th>image</th><th>category</th><th>file</th><th>boxes</th></tr>")
    key = (f"<span style='color:rgb{NOISY}'>given</span>, <span style='color:rgb{REFINED}'>refined</span>, "
           f"<span style='color:rgb{CLEAN}'>clean</span>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ssddet audit</title><style>"
            "body{font-family:sans-serif} td,th{border-bottom:1px solid #ddd;padding:4px;text-align:left}"
            "</style></head><body><h2>ssddet audit: most likely wrong boxes first</h2>"
            f"<pre>{html.escape(format_summary(summary))}</pre><p>score = 1 - IoU(given, refined). Boxes: {key}. "
            f"Top {min(top, len(rows))} of {len(rows)}.</p>"
            f"<table>{head}{''.join(body)}</table></body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
