"""COCO evaluation (faster-coco-eval: the same 12 numbers as pycocotools, much faster) and prediction
export."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.boxes import xyxy_to_xywh
from ..data.images import BadImages
from ..data.results import detection_entry
from ..errors import UserError
from .distributed import broadcast_from_main, gather_to_main

log = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@torch.no_grad()
def predict(detector, loader: DataLoader, device: torch.device, label_to_cat: dict[int, int],
            progress: bool = True, bad: BadImages | None = None) -> list[dict]:
    """Run the detector over a loader -> COCO results list [{image_id, category_id, bbox xywh, score}].
    Unreadable images are handled by `bad` (default: skipped with a warning; its `files` lists them)."""
    detector.eval()
    bad = bad if bad is not None else BadImages()
    results = []
    with tqdm(loader, desc="eval", leave=False, disable=not progress) as bar:  # closed on errors too
        for batch in bar:
            images, targets = bad.take(batch)
            if not images:
                continue
            outputs = detector([img.to(device, non_blocking=True) for img in images])
            for out, tgt in zip(outputs, targets):
                # the file's frame -> the JSON's, which its ground truth (and a COCO results file) uses
                sx, sy = tgt.get("file_scale", (1.0, 1.0))
                boxes = xyxy_to_xywh(out["boxes"].float().cpu().numpy() / np.array([sx, sy, sx, sy]))
                for box, score, lab in zip(boxes, out["scores"].cpu().tolist(), out["labels"].cpu().tolist()):
                    results.append({"image_id": int(tgt["image_id"]), "category_id": label_to_cat[int(lab)],
                                    "bbox": [round(float(v), 3) for v in box], "score": round(float(score), 5)})
    return results


def evaluate_sharded(detector, loader: DataLoader, device: torch.device, data, records: list,
                     progress: bool = True, bad: BadImages | None = None) -> dict:
    """COCO metrics of `records` (of CocoData `data`) when each process predicts its share of them (`loader`
    over a ShardedBatchSampler): no rank idles in a barrier through a long validation, which NCCL would time out.
    Rank 0 scores the gathered detections and shares the metrics; one process is the plain case. Images that
    could not be read (skipped under `bad`) are left out of the ground truth too (`readable`)."""
    bad = bad if bad is not None else BadImages()
    dets = predict(detector, loader, device, data.label_to_cat, progress=progress, bad=bad)
    parts = gather_to_main((dets, list(bad.files)))
    metrics = None
    if parts is not None:
        kept = readable(records, {f for _, files in parts for f in files})
        metrics = coco_evaluate(data.gt_dict(kept), merge_rank_results(
            [d for d, _ in parts], [r.image_id for r in kept])) if kept or not records else NOTHING_READ
    metrics = broadcast_from_main(metrics)
    if metrics == NOTHING_READ:  # on every rank: an AP of 0 would read like a model that found nothing
        raise UserError(f"{data.ann_path}: none of the {len(records)} images to evaluate could be read (see the "
                        "warnings above): there is no AP to report; repair or replace the files (`ssddet check`)")
    return metrics


NOTHING_READ = "no image of the evaluation set could be read"


def readable(records: list, unreadable) -> list:
    """`records` without those whose file is in `unreadable` (paths as strings): an image the model never saw
    is not scored as missed objects."""
    return [r for r in records if str(r.path) not in unreadable]


def merge_rank_results(parts: list[list[dict]], image_order: list[int]) -> list[dict]:
    """Detections predicted by several processes (each image by one of them) -> one list in the order a single
    process produces: by the image's position in `image_order`, each image's detections in their own order."""
    pos = {iid: i for i, iid in enumerate(image_order)}
    return sorted((r for part in parts for r in part), key=lambda r: pos[r["image_id"]])  # stable


def _coco(d: dict) -> COCO:
    coco = COCO()
    coco.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def class_keys(categories: list[dict]) -> dict:
    """{category id: its per_class key}: the name, or "name (id N)" where two categories share a name."""
    names = [str(c.get("name", c["id"])) for c in categories]
    return {c["id"]: f"{n} (id {c['id']})" if names.count(n) > 1 else n for c, n in zip(categories, names)}


def coco_evaluate(gt: dict, results: list[dict]) -> dict:
    """gt: COCO dict; results: COCO results list -> {AP, AP50, ..., per_class: {name: AP}}.

    With no detections at all every metric is 0 (pycocotools would raise instead)."""
    out = {k: 0.0 for k in STAT_NAMES}
    names = class_keys(gt["categories"])
    out["per_class"] = {n: 0.0 for n in names.values()}
    present = {a["category_id"] for a in gt["annotations"] if not a.get("iscrowd")}
    _warn_once(len(gt["images"]), tuple(n for c, n in names.items() if c not in present))
    if not results or not present:  # no box to match (all crowd: faster-coco-eval's -1): every metric is 0
        return out
    gt_coco = _coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        dt_coco = gt_coco.loadRes([dict(r) for r in results])  # loadRes adds fields to the dicts it gets
        ev = COCOeval_faster(gt_coco, dt_coco, iouType="bbox", print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out.update({k: float(v) for k, v in zip(STAT_NAMES, ev.stats[:12])})
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        out["per_class"][names[cat_id]] = float(np.mean(p[p > -1])) if (p > -1).any() else 0.0
    return out


@functools.lru_cache(maxsize=16)
def _warn_once(num_images: int, absent: tuple[str, ...]) -> None:
    """Say once per evaluation set that a class without ground truth scores 0, which reads like a class the model
    missed (COCO has no AP for it)."""
    if absent:
        log.warning("the evaluation set (%d images) has no box of %s: %s AP is reported as 0", num_images,
                    ", ".join(absent), "its" if len(absent) == 1 else "their")


def load_results(path: str | Path, gt: dict) -> list[dict]:
    """Read and validate a COCO results file against the ground truth's images and categories."""
    p = Path(path)
    try:
        res = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: results file not found") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read the results file ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer literal over 4300 digits
        raise UserError(f"{p}: not valid JSON ({e})") from None
    except RecursionError:
        raise UserError(f"{p}: not valid JSON: nested too deeply to read") from None
    if isinstance(res, dict) and "annotations" in res:
        res = res["annotations"]
    if not isinstance(res, list):
        raise UserError(f"{p}: a COCO results file is a list of detections")
    image_ids = {im["id"] for im in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    kept = []
    for i, r in enumerate(res):
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox"} <= r.keys():
            raise UserError(f"{p}: entry {i} needs image_id, category_id and bbox")
        cat, iid = r["category_id"], r["image_id"]
        if isinstance(cat, bool) or not isinstance(cat, int) or cat not in cat_ids:
            raise UserError(f"{p}: entry {i} has category_id {cat!r} unknown to the ground truth "
                            f"(known: {sorted(cat_ids)})")
        if isinstance(iid, bool) or not isinstance(iid, int):
            raise UserError(f"{p}: entry {i} has a non-integer image_id {iid!r}")
        bbox, score = detection_entry(p, i, r)
        if bbox[2] < 0 or bbox[3] < 0:  # xyxy written as xywh, most often
            raise UserError(f"{p}: entry {i} has a bbox of negative width or height {r['bbox']!r} (COCO results "
                            "are [x, y, width, height])")
        if iid in image_ids:
            kept.append({**r, "bbox": bbox, "score": score})
    if len(kept) < len(res):
        log.warning("%s: %d detection(s) on images outside the evaluated split ignored", p,
                    len(res) - len(kept))
    return kept


def format_metrics(m: dict) -> str:
    head = " ".join(f"{k}={m[k]:.3f}" for k in STAT_NAMES[:6])
    per = ", ".join(f"{k}: {v:.3f}" for k, v in m.get("per_class", {}).items())
    return f"{head}\nper-class AP: {per}"
