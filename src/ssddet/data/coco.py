"""COCO-JSON loading and validation -> per-image records that torchvision detection models can train on.

Labels are contiguous: the sorted category ids map to 1..K (0 is background, as torchvision expects), and the
mapping is kept so detections are written back with the original category ids.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .boxes import xywh_to_xyxy, xyxy_to_xywh

log = logging.getLogger(__name__)

MIN_BOX_SIDE = 0.5  # px; thinner boxes (after clipping to the image) carry no trainable signal
IMAGE_SIZE_FROM_FILE = "image width/height missing in JSON (read from the file)"  # a per-image warning
# a per-image warning: one picture under two ids is seen twice by training, and across splits it is evaluated on
SHARED_FILE = "file_name of an earlier image id (the same file twice; across splits, a train/val leak)"
IMAGE_WARNINGS = (IMAGE_SIZE_FROM_FILE, SHARED_FILE)


@dataclass
class ImageRecord:
    """One image and its usable boxes. Boxes are xyxy in the pixel frame of (width, height)."""

    image_id: int
    path: Path
    width: int
    height: int
    split: str | None
    boxes: np.ndarray  # float32[N, 4]
    labels: np.ndarray  # int64[N], 1..K
    ann_ids: np.ndarray  # int64[N], `internal_ann_ids`: the bank's and the exports' handle on each box
    true_boxes: np.ndarray | None = None  # float32[N, 4], clean boxes (only for monitoring)
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    crowd_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    source_ids: tuple = ()  # [N] each box's id as the JSON gives it ("#i": the i-th annotation, which has none)


@dataclass
class CocoData:
    ann_path: str
    images_root: Path
    categories: list[dict]  # sorted by id
    records: list[ImageRecord]
    warnings: Counter
    info: dict
    warning_examples: dict = field(default_factory=dict)  # warning kind -> first few annotation/image ids
    # every annotation left out (crowd ones too): {"annotation_id", "image_id", "bbox", "category_id", "reason"},
    # the JSON's values as given; `ssddet audit` lists them as invalid
    dropped: list = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def class_names(self) -> list[str]:
        return [str(c.get("name", c["id"])) for c in self.categories]

    @property
    def label_to_cat(self) -> dict[int, int]:
        return {i + 1: int(c["id"]) for i, c in enumerate(self.categories)}

    def select(self, split: str | None) -> list[ImageRecord]:
        """Records of one split (None: all). Raises if the split is requested but absent; warns about the
        images left out whose split differs from it only by case, spaces or quoting ("Train", " train")."""
        if split is None:
            return list(self.records)
        out = [r for r in self.records if r.split == split]
        near = Counter(r.split for r in self.records if r.split != split and split_key(r.split) == split_key(split))
        near_text = ", ".join(f"{n} with {k!r}" for k, n in sorted(near.items()))
        if not out:
            found = sorted({str(r.split) for r in self.records})
            hint = f"; split names match exactly, and {near_text} are not '{split}'" if near else ""
            raise UserError(f"{self.ann_path}: no image has split '{split}' (splits found: {found}){hint}")
        if near:
            log.warning("%s: images of split '%s' selected: %d; left out, since split names match exactly: %s",
                        self.ann_path, split, len(out), near_text)
        return out

    def gt_dict(self, records: list[ImageRecord]) -> dict:
        """COCO ground-truth dict (clean/valid boxes, crowd kept) for `records`, for evaluation."""
        images, anns = [], []
        for r in records:
            images.append({"id": r.image_id, "width": r.width, "height": r.height, "file_name": str(r.path)})
            for box, lab, aid in zip(r.boxes, r.labels, r.ann_ids):
                xywh = xyxy_to_xywh(box).tolist()
                anns.append({"id": int(aid), "image_id": r.image_id,
                             "category_id": self.label_to_cat[int(lab)],
                             "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
            for box, lab in zip(r.crowd_boxes, r.crowd_labels):
                xywh = xyxy_to_xywh(box).tolist()
                anns.append({"id": 0, "image_id": r.image_id, "category_id": self.label_to_cat[int(lab)],
                             "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 1})
        for i, a in enumerate(anns):  # ids must be unique and positive for COCOeval
            a["id"] = i + 1
        return {"images": images, "annotations": anns, "categories": self.categories}


def split_key(split: str | None) -> str:
    """A split value as a person reads it: "Train", " train" and "['train']" (a JSON list) -> "train"."""
    return str(split).strip().strip("[]()'\" ").lower()


def write_json(path: str | Path, d) -> Path:
    """`d` as standard JSON at `path` (folders made): a non-finite number, which Python reads from the tokens NaN
    and Infinity that some tools write, becomes null, since other JSON readers reject those tokens."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return {k: finite(x) for k, x in v.items()} if isinstance(v, dict) else \
            [finite(x) for x in v] if isinstance(v, (list, tuple)) else v

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(d), allow_nan=False))
    return path


def read_json(path: str | Path, what: str = "annotation file") -> dict:
    """Read a COCO JSON file with a clear error for missing, truncated or non-object files.
    `what` names the file in messages (e.g. "config file")."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} not found")
    if p.stat().st_size == 0:
        raise UserError(f"{p}: {what} is empty (expected JSON)")
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer literal over 4300 digits
        raise UserError(f"{p}: not valid JSON ({e})") from None
    except RecursionError:
        raise UserError(f"{p}: not a COCO {what}: JSON nested too deeply to read") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{p}: top level must be a JSON object with images/annotations/categories")
    return d


def is_crowd(value: Any) -> bool:
    """COCO's `iscrowd` flag, read leniently: a non-zero number, true, or a string other than "", "0", "false"."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false")
    return bool(value)


def _int64_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and -(2**62) <= x < 2**63


def internal_ann_ids(annotations: list) -> list[int]:
    """The int64 key of each entry of a COCO `annotations` list: its own id where that is an integer that fits,
    else (a string, a missing or a huge id) a negative stand-in below every such id, so no two collide. A
    function of the whole list (positions count): exports look their boxes up with it on the list parsed."""
    ids = [a.get("id") if isinstance(a, dict) else None for a in annotations]
    low = min([x for x in ids if _int64_id(x)] + [0])
    return [x if _int64_id(x) else low - 1 - i for i, x in enumerate(ids)]


def _hashable(x: Any) -> Any:
    """x if it can be a dict key (an id), else None (a list/dict id is invalid, not a crash)."""
    try:
        hash(x)
    except TypeError:
        return None
    return x


def finite_number(x: Any) -> float | None:
    """A JSON value -> float if it is a finite number (not a bool, not an int beyond float's range), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        f = float(x)
    except OverflowError:  # an integer such as 10**400
        return None
    return f if math.isfinite(f) else None


def _check_structure(d: dict, src: str) -> None:
    for key in ("images", "annotations", "categories"):
        if key not in d:
            raise UserError(f"{src}: missing top-level key '{key}'")
        if not isinstance(d[key], list):
            raise UserError(f"{src}: '{key}' must be a list, got {type(d[key]).__name__}")
    if not d["categories"]:
        raise UserError(f"{src}: 'categories' is empty")


def _parse_categories(d: dict, src: str) -> list[dict]:
    seen = set()
    cats = []
    for i, c in enumerate(d["categories"]):
        if not isinstance(c, dict) or isinstance(c.get("id"), bool) or not isinstance(c.get("id"), int):
            raise UserError(f"{src}: categories[{i}] needs an integer 'id'")
        if c["id"] in seen:
            raise UserError(f"{src}: duplicate category id {c['id']}")
        seen.add(c["id"])
        extra = {"supercategory": c["supercategory"]} if "supercategory" in c else {}
        cats.append({"id": c["id"], "name": str(c.get("name", c["id"])), **extra})
    return sorted(cats, key=lambda c: c["id"])


def image_size_from_file(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, EXIF orientation applied (as every command sees the image); None
    if it cannot be read."""
    from .images import UnreadableImage, image_size

    try:
        return image_size(path)
    except UnreadableImage:
        return None


def _parse_images(d: dict, src: str, root: Path, warn: Counter, examples: dict) -> dict[int, dict]:
    images: dict[int, dict] = {}
    files: set[str] = set()
    for i, im in enumerate(d["images"]):
        if not isinstance(im, dict) or isinstance(im.get("id"), bool) or not isinstance(im.get("id"), int):
            raise UserError(f"{src}: images[{i}] needs an integer 'id'")
        iid = im["id"]
        if iid in images:
            raise UserError(f"{src}: duplicate image id {iid}")
        fn = im.get("file_name")
        if not isinstance(fn, str) or not fn:
            raise UserError(f"{src}: image {iid} has no 'file_name'")
        w, h = finite_number(im.get("width")), finite_number(im.get("height"))
        path = root / fn
        key = os.path.normpath(path)
        if key in files:
            _note(warn, examples, SHARED_FILE, iid, src)
        files.add(key)
        if w is None or h is None or w < 1 or h < 1:
            size = image_size_from_file(path)
            if size is None:
                raise UserError(f"{src}: image {iid} ({fn}) has no valid width/height and the file {path} "
                                "cannot be read")
            w, h = size
            _note(warn, examples, IMAGE_SIZE_FROM_FILE, iid, src)
        split = im.get("split")
        images[iid] = {"id": iid, "path": path, "width": int(round(w)), "height": int(round(h)),
                       "split": None if split is None else str(split), "order": i}
    return images


def parse_box(bbox: Any) -> np.ndarray | None:
    """COCO [x, y, w, h] -> float64[4] xyxy, or None if not 4 finite numbers."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    vals = [finite_number(v) for v in bbox]
    if any(v is None for v in vals):
        return None
    return xywh_to_xyxy(vals)


def _clip_box(box: np.ndarray, w: int, h: int) -> tuple[np.ndarray | None, str | None]:
    """Clip xyxy to the image; return (box, None) or (None, reason) when nothing usable is left."""
    if (box[2:] - box[:2] <= 0).any():
        return None, "non-positive width/height"
    clipped = np.clip(box, 0, [w, h, w, h])
    side = clipped[2:] - clipped[:2]
    if (side <= 0).any():
        return None, "outside the image (nothing left after clipping)"
    if (side < MIN_BOX_SIDE).any():
        return None, f"side under {MIN_BOX_SIDE} px (after clipping to the image)"
    if not np.array_equal(clipped, box):
        return clipped, "clipped"
    return clipped, None


def _note(warn: Counter, examples: dict, reason: str, ann_id: Any, src: str) -> None:
    warn[reason] += 1
    if warn[reason] <= 3:
        examples.setdefault(reason, []).append(ann_id)
        log.debug("%s: annotation %s: %s", src, ann_id, reason)


BAD_TRUE_BOX = "true_bbox is not 4 finite numbers with positive width/height (its image's clean boxes unknown)"


def _true_box(a: dict, warn: Counter, examples: dict, src: str) -> np.ndarray | None:
    """An annotation's clean box (xyxy) if it has a valid `true_bbox`; a present but invalid one is counted, since
    it silently turns off the clean-box statistics of its whole image (`ImageRecord.true_boxes`)."""
    if "true_bbox" not in a:
        return None
    true = parse_box(a["true_bbox"])
    if true is None or true[2] <= true[0] or true[3] <= true[1]:
        _note(warn, examples, BAD_TRUE_BOX, a.get("id"), src)
        return None
    return true


def parse_coco(d: dict, src: str, images_root: str | Path) -> CocoData:
    """Validate a COCO dict and build per-image records. Fatal structure problems raise `UserError`;
    per-annotation problems drop (or clip) the box and are counted in `CocoData.warnings`."""
    _check_structure(d, src)
    root = Path(images_root)
    cats = _parse_categories(d, src)
    cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
    warn: Counter = Counter()
    examples: dict[str, list] = {}
    images = _parse_images(d, src, root, warn, examples)
    slot_keys = ("boxes", "labels", "ids", "source", "true", "crowd", "crowd_labels")
    per_image: dict[int, dict[str, list]] = {iid: {k: [] for k in slot_keys} for iid in images}
    ann_ids, keys, dropped = set(), internal_ann_ids(d["annotations"]), []
    for i, a in enumerate(d["annotations"]):
        if not isinstance(a, dict):
            raise UserError(f"{src}: annotations[{i}] is not an object")
        aid = a.get("id", f"#{i}")
        if _hashable(aid) is None:
            raise UserError(f"{src}: annotations[{i}] has an invalid id {aid!r}")
        if aid in ann_ids:
            raise UserError(f"{src}: duplicate annotation id {aid}")
        ann_ids.add(aid)
        iid = _hashable(a.get("image_id"))
        box = parse_box(a.get("bbox"))
        reason = ("unknown image_id" if iid is None or iid not in images else
                  "unknown category_id" if _hashable(a.get("category_id")) not in cat_to_label else
                  "bbox is not 4 finite numbers" if box is None else None)
        if reason is None:
            box, reason = _clip_box(box, images[iid]["width"], images[iid]["height"])
            if reason and box is not None:  # clipped, kept
                _note(warn, examples, reason, aid, src)
                reason = None
        if reason:
            _note(warn, examples, f"{reason} (skipped)", aid, src)
            dropped.append({"annotation_id": aid, "image_id": a.get("image_id"), "bbox": a.get("bbox"),
                            "category_id": a.get("category_id"), "reason": reason})
            continue
        slot = per_image[iid]
        if is_crowd(a.get("iscrowd", 0)):
            slot["crowd"].append(box)
            slot["crowd_labels"].append(cat_to_label[a["category_id"]])
            continue
        true = _true_box(a, warn, examples, src)
        slot["boxes"].append(box)
        slot["labels"].append(cat_to_label[a["category_id"]])
        slot["ids"].append(keys[i])
        slot["source"].append(aid)
        slot["true"].append(true)
    for reason, n in warn.items():
        ex = examples.get(reason)
        log.warning("%s: %d %s: %s%s", src, n, warning_unit(reason), reason,
                    f" (e.g. ids {ex})" if ex else "")
    order = sorted(images, key=lambda k: images[k]["order"])
    records = [_make_record(images[iid], per_image[iid]) for iid in order]
    info = d.get("info", {}) if isinstance(d.get("info"), dict) else {}
    return CocoData(ann_path=src, images_root=root, categories=cats, records=records, warnings=warn,
                    info=info, warning_examples=examples, dropped=dropped)


def warning_unit(reason: str) -> str:
    """What a warning kind counts: images or annotations."""
    return "image(s)" if reason in IMAGE_WARNINGS else "annotation(s)"


def _make_record(im: dict, slot: dict) -> ImageRecord:
    n = len(slot["boxes"])
    boxes = np.asarray(slot["boxes"], np.float32).reshape(n, 4)
    has_true = n > 0 and all(t is not None for t in slot["true"])
    true = np.asarray(slot["true"], np.float32).reshape(n, 4) if has_true else None
    return ImageRecord(image_id=im["id"], path=im["path"], width=im["width"], height=im["height"],
                       split=im["split"], boxes=boxes, labels=np.asarray(slot["labels"], np.int64),
                       ann_ids=np.asarray(slot["ids"], np.int64), true_boxes=true,
                       crowd_boxes=np.asarray(slot["crowd"], np.float32).reshape(-1, 4),
                       crowd_labels=np.asarray(slot["crowd_labels"], np.int64), source_ids=tuple(slot["source"]))


def load_coco(ann_path: str | Path, images_root: str | Path | None = None) -> CocoData:
    """Load and validate a COCO file. `images_root` defaults to the JSON's directory."""
    ann_path = Path(ann_path)
    root = Path(images_root) if images_root is not None else ann_path.parent
    return parse_coco(read_json(ann_path), str(ann_path), root)


def check_image_files(records: list[ImageRecord], src: str) -> None:
    """Fail early (before a long run starts) when image files are missing."""
    missing = [r for r in records if not r.path.is_file()]
    if missing:
        names = ", ".join(f"{r.path} (image {r.image_id})" for r in missing[:5])
        raise UserError(f"{src}: {len(missing)} image file(s) not found, e.g. {names}")
