"""OA-MIL box-noise simulator (method.md section 1), reproducing the official generator box for box.

Per kept box (x1, y1, x2, y2) of image (W, H) and level r, four draws in this order from ONE legacy
`np.random.RandomState(seed)` stream: dx = w*U(-r,r), dy = h*U(-r,r), w' = w*(1+U(-r,r)), h' = h*(1+U(-r,r)).
The new box keeps the moved centre, is clipped to [0, W-1] x [0, H-1], and falls back to the clean box when
degenerate. Images go in JSON order, boxes in annotation order; boxes the official parser drops (crowd,
area<=0, w<1 or h<1, no overlap with the image, unknown category) consume no draws and are left untouched.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import UserError
from .boxes import aligned_iou_np, xywh_to_xyxy, xyxy_to_xywh
from .coco import is_crowd


def perturb_box(box: np.ndarray, level: float, width: float, height: float,
                rng: np.random.RandomState) -> np.ndarray:
    """One OA-MIL perturbation. box: float64[4] xyxy -> float64[4] xyxy (consumes exactly 4 draws)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    dx = w * rng.uniform(-level, level)
    dy = h * rng.uniform(-level, level)
    nw = w * (1 + rng.uniform(-level, level))
    nh = h * (1 + rng.uniform(-level, level))
    cx, cy = cx + dx, cy + dy
    out = np.array([max(0.0, cx - nw / 2), max(0.0, cy - nh / 2),
                    min(cx + nw / 2, width - 1), min(cy + nh / 2, height - 1)])
    if out[2] <= out[0] or out[3] <= out[1]:
        return np.asarray(box, dtype=np.float64)  # degenerate after clipping: keep the clean box
    return out


def _official_keeps(ann: dict, img: dict, cat_ids: set) -> bool:
    """The official (mmdet CocoDataset) parser's filter; boxes it drops are never perturbed."""
    if is_crowd(ann.get("iscrowd", 0)) or is_crowd(ann.get("ignore", 0)):
        return False
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return False
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in bbox):
        return False  # strings etc.: the loader rejects these boxes too, so they must not consume draws
    x, y, w, h = (float(v) for v in bbox)
    if not all(np.isfinite([x, y, w, h])):
        return False
    inter_w = max(0.0, min(x + w, img["width"]) - max(x, 0.0))
    inter_h = max(0.0, min(y + h, img["height"]) - max(y, 0.0))
    if inter_w * inter_h == 0:
        return False
    area = ann.get("area", w * h)
    if not isinstance(area, (int, float)) or area <= 0 or w < 1 or h < 1:
        return False
    return _key(ann.get("category_id")) in cat_ids


def _check_noise_input(coco, src: str) -> None:
    """The structure the generator walks (a clear error instead of a crash on a malformed file)."""
    if not isinstance(coco, dict):
        raise UserError(f"{src}: top level must be a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise UserError(f"{src}: missing top-level key '{key}'")
        if not isinstance(coco[key], list):
            raise UserError(f"{src}: '{key}' must be a list, got {type(coco[key]).__name__}")
    for key in ("images", "annotations", "categories"):
        for i, item in enumerate(coco[key]):
            if not isinstance(item, dict):
                raise UserError(f"{src}: {key}[{i}] is not an object")
    seen = set()
    for i, im in enumerate(coco["images"]):
        iid = im.get("id")
        if isinstance(iid, bool) or not isinstance(iid, int):
            raise UserError(f"{src}: images[{i}] needs an integer 'id'")
        if iid in seen:
            raise UserError(f"{src}: duplicate image id {iid}")
        seen.add(iid)


def _key(x):
    """x if usable as an id (hashable), else None."""
    try:
        hash(x)
    except TypeError:
        return None
    return x


def add_box_noise(coco: dict, level: float, seed: int = 45, image_ids: Iterable[int] | None = None,
                  src: str = "<dict>") -> tuple[dict, np.ndarray]:
    """Return (noisy COCO dict, IoU of each perturbed box with its clean box).

    `bbox` becomes the noisy box and `true_bbox` keeps the clean one (an existing `true_bbox` is kept, so
    re-noising a noisy file still remembers the original clean box). `image_ids` limits noise to those images
    (e.g. the train split); the others are copied unchanged and consume no draws.
    """
    if not (0.0 <= level < 1.0) or not np.isfinite(level):
        raise UserError(f"noise level must be in [0, 1), got {level}")
    _check_noise_input(coco, src)
    out = copy.deepcopy(coco)
    selected = None if image_ids is None else set(image_ids)
    images = [im for im in out.get("images", []) if selected is None or im.get("id") in selected]
    by_image: dict = {}
    for ann in out.get("annotations", []):
        by_image.setdefault(_key(ann.get("image_id")), []).append(ann)
    cat_ids = {_key(c.get("id")) for c in out.get("categories", [])} - {None}
    rng = np.random.RandomState(seed)  # seeded once per output file, as the official generator
    ious = []
    for im in images:
        if not isinstance(im.get("width"), (int, float)) or not isinstance(im.get("height"), (int, float)):
            raise UserError(f"{src}: image {im.get('id')} needs numeric width/height to add box noise")
        for ann in by_image.get(im.get("id"), []):
            bbox = ann.get("bbox")
            ann.setdefault("true_bbox", list(bbox) if isinstance(bbox, list) else bbox)
            if level == 0 or not _official_keeps(ann, im, cat_ids):
                continue
            clean = xywh_to_xyxy(ann["bbox"])
            noisy = perturb_box(clean, level, im["width"], im["height"], rng)
            ann["bbox"] = [float(v) for v in xyxy_to_xywh(noisy)]
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            ious.append(float(aligned_iou_np(noisy, clean)))
    info = dict(out.get("info") or {}) if isinstance(out.get("info"), dict) else {}
    info["box_noise"] = {"level": level, "seed": seed, "generator": "OA-MIL (RandomState, 4 draws/box)",
                         "ssddet_version": __version__, "boxes_perturbed": len(ious),
                         "mean_iou": float(np.mean(ious)) if ious else None}
    out["info"] = info
    return out, np.asarray(ious)


def noisy_copy(raw: dict, level: float, seed: int, root: str | Path, split: str | None = None,
               src: str = "<dict>") -> tuple[dict, np.ndarray]:
    """`add_box_noise` as both `train --noise` and `ssddet noise` apply it: width/height missing from the JSON
    are read from the image files under `root` (as the loader does), and only the images of `split` are
    perturbed (None: all; the others are copied unchanged and consume no draws).

    Returns (noisy COCO dict, with the image sizes filled in; IoU of each perturbed box with its clean box)."""
    _check_noise_input(raw, src)
    raw = fill_image_sizes(raw, Path(root))
    ids = None if split is None else split_image_ids(raw, split, src)
    for im in raw["images"]:
        if (ids is None or im.get("id") in ids) and not all(_is_size(im.get(k)) for k in ("width", "height")):
            raise UserError(f"{src}: image {im.get('id')} needs numeric width/height to add box noise: none in "
                            f"the JSON, and {Path(root) / str(im.get('file_name'))} cannot be read (image root: "
                            "--images DIR)")
    return add_box_noise(raw, level, seed, ids, src=src)


def split_image_ids(raw: dict, split: str, src: str) -> list:
    """Ids of the images whose `split` field is `split`; a UserError naming the splits present if none."""
    images = [im for im in raw["images"] if isinstance(im, dict)]
    ids = [im.get("id") for im in images if im.get("split") == split]
    if not ids:
        found = sorted({str(im.get("split")) for im in images})
        raise UserError(f"{src}: no image has split '{split}' (splits found: {found})")
    return ids


def _is_size(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1


def fill_image_sizes(raw: dict, root: Path) -> dict:
    """Images without a usable width/height in the JSON get the file's size (the noise generator clips to it),
    as the loader does; what cannot be read is left for the caller to report."""
    from .coco import finite_number, image_size_from_file

    images = raw.get("images") if isinstance(raw, dict) else None
    if not isinstance(images, list):
        return raw
    filled = []
    for im in images:
        if isinstance(im, dict) and isinstance(im.get("file_name"), str) and any(
                (finite_number(im.get(k)) or 0) < 1 for k in ("width", "height")):
            size = image_size_from_file(root / im["file_name"])
            if size is not None:
                im = {**im, "width": size[0], "height": size[1]}
        filled.append(im)
    return {**raw, "images": filled}
