"""OA-MIL box-noise simulator (method.md section 1), reproducing the official generator box for box.

Per kept box (x1, y1, x2, y2) of image (W, H) and level r, four draws in this order from ONE legacy
`np.random.RandomState(seed)` stream: dx = w*U(-r,r), dy = h*U(-r,r), w' = w*(1+U(-r,r)), h' = h*(1+U(-r,r)).
The new box keeps the moved centre, is clipped to [0, W-1] x [0, H-1], and falls back to the clean box when
degenerate. Images go in JSON order, boxes in annotation order; boxes the official parser drops (crowd,
area<=0, w<1 or h<1, no overlap with the image, unknown category) consume no draws and are left untouched.

Partial noise (`fraction` < 1): a subset of round(fraction x eligible boxes), chosen by a generator of its own
(`derived_rng`), is perturbed from that same stream, in the same order; the other boxes consume no draws. The
label errors (missing, spurious, class-swapped annotations) are in `label_noise.py`.
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


# One derived generator per kind of simulated error, so that turning one on changes nothing another does.
DERIVED_STREAMS = {"fraction": 1, "missing": 2, "spurious": 3, "swap": 4}


def derived_rng(seed: int, kind: str) -> np.random.RandomState:
    """The seeded generator of one error kind, derived from the noise seed (SeedSequence of (seed, kind)), apart
    from the OA-MIL stream itself: legacy `RandomState`, whose streams numpy keeps frozen across versions."""
    state = np.random.SeedSequence([seed, DERIVED_STREAMS[kind]]).generate_state(1)[0]
    return np.random.RandomState(int(state))


def check_fraction(what: str, value) -> float:
    """A share of boxes or annotations: a number in [0, 1] (a UserError naming `what` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f"{what} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def share_count(fraction: float, n: int) -> int:
    """round(fraction x n), halves rounded up (Python's round() would take 0.5 x 5 to 2 but 0.5 x 7 to 4)."""
    return int(np.floor(fraction * n + 0.5))


def pick(n: int, fraction: float, rng: np.random.RandomState) -> list[int]:
    """The sorted positions of a seeded share of n items (no draws for none or all of them)."""
    k = share_count(fraction, n)
    if k in (0, n):
        return list(range(k))
    return sorted(int(i) for i in rng.permutation(n)[:k])


def check_seed(seed) -> None:
    """What `RandomState` and `SeedSequence` accept, as a UserError rather than numpy's ValueError mid-run."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise UserError(f"noise seed must be an integer in [0, 2**32), got {seed!r}")


def official_keeps(ann: dict, img: dict, cat_ids: set) -> bool:
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


def check_noise_input(coco, src: str) -> None:
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
                  src: str = "<dict>", fraction: float = 1.0) -> tuple[dict, np.ndarray]:
    """Return (noisy COCO dict, IoU of each perturbed box with its clean box).

    `bbox` becomes the noisy box and `true_bbox` keeps the clean one (an existing `true_bbox` is kept, so
    re-noising a noisy file still remembers the original clean box). `image_ids` limits noise to those images
    (e.g. the train split); the others are copied unchanged and consume no draws. `fraction` < 1 perturbs only
    a seeded share of the eligible boxes and marks every annotation of those images `noised` true/false (for
    evaluation); 1 leaves the output as it always was, without the flag.
    """
    if not (0.0 <= level < 1.0) or not np.isfinite(level):
        raise UserError(f"noise level must be in [0, 1), got {level}")
    fraction = check_fraction("noise fraction", fraction)
    check_seed(seed)
    check_noise_input(coco, src)
    out = copy.deepcopy(coco)
    pairs = _image_annotations(out, image_ids, src)
    cat_ids = {_key(c.get("id")) for c in out.get("categories", [])} - {None}
    for _, ann in pairs:
        bbox = ann.get("bbox")
        ann.setdefault("true_bbox", list(bbox) if isinstance(bbox, list) else bbox)
    eligible = [(im, ann) for im, ann in pairs if official_keeps(ann, im, cat_ids)]
    chosen = [eligible[i] for i in pick(len(eligible), fraction, derived_rng(seed, "fraction"))]
    if fraction < 1:
        noised = {id(ann) for _, ann in chosen}
        for _, ann in pairs:
            ann["noised"] = id(ann) in noised
    rng = np.random.RandomState(seed)  # seeded once per output file, as the official generator
    ious = [] if level == 0 else [_perturb_ann(ann, im, level, rng) for im, ann in chosen]
    _record_box_noise(out, level, seed, ious, fraction, len(eligible))
    return out, np.asarray(ious)


def _image_annotations(coco: dict, image_ids: Iterable[int] | None, src: str) -> list[tuple[dict, dict]]:
    """(image, annotation) of the images to noise (all, or those of `image_ids`), images in JSON order and each
    image's annotations in annotation order: the order of the OA-MIL stream."""
    selected = None if image_ids is None else set(image_ids)
    by_image: dict = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(_key(ann.get("image_id")), []).append(ann)
    pairs = []
    for im in coco.get("images", []):
        if selected is not None and im.get("id") not in selected:
            continue
        if not isinstance(im.get("width"), (int, float)) or not isinstance(im.get("height"), (int, float)):
            raise UserError(f"{src}: image {im.get('id')} needs numeric width/height to add box noise")
        pairs += [(im, ann) for ann in by_image.get(im.get("id"), [])]
    return pairs


def _perturb_ann(ann: dict, im: dict, level: float, rng: np.random.RandomState) -> float:
    """Perturb one annotation's box in place (4 draws) -> its IoU with the clean box."""
    clean = xywh_to_xyxy(ann["bbox"])
    noisy = perturb_box(clean, level, im["width"], im["height"], rng)
    ann["bbox"] = [float(v) for v in xyxy_to_xywh(noisy)]
    ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    return float(aligned_iou_np(noisy, clean))


def _record_box_noise(out: dict, level: float, seed: int, ious: list, fraction: float, eligible: int) -> None:
    """info.box_noise; the partial-noise keys only when noise is partial (a full run's file is as it always was)."""
    info = dict(out.get("info") or {}) if isinstance(out.get("info"), dict) else {}
    info["box_noise"] = {"level": level, "seed": seed, "generator": "OA-MIL (RandomState, 4 draws/box)",
                         "ssddet_version": __version__, "boxes_perturbed": len(ious),
                         "mean_iou": float(np.mean(ious)) if ious else None}
    if fraction < 1:
        info["box_noise"].update(fraction=fraction, boxes_eligible=eligible)
    out["info"] = info


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
