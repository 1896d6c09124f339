"""Convert a YOLO-txt dataset (Ultralytics or Darknet layout) to COCO JSON with a `split` field per image.

Labels: one `.txt` per image, one line per object, `class cx cy w h` normalised by the image's width and
height. A line with more numbers is an Ultralytics segment, `class x1 y1 x2 y2 ...`: its bounding box is used.
An image's label file is its path with the last `images` folder replaced by `labels` and the suffix by `.txt`
(Ultralytics), else the `.txt` beside the image (Darknet); an image without one has no objects.

Class names come from the dataset YAML's `names` (a list, or a {index: name} mapping) or from a names file
(one name per line: Darknet's `obj.names`, `classes.txt`). Category id = class index + 1 (COCO ids start at 1).

Boxes: COCO [x, y, w, h] = [(cx - w/2) W, (cy - h/2) H, w W, h H] in pixels, not rounded. After conversion
every box is converted back and compared with its source line (`max_roundtrip_error` in the stats).
Malformed lines, unknown classes, empty boxes and values outside YOLO's normalised range (centre in [0, 1],
size in (0, 1], up to `NORM_SLACK`) are skipped and counted; unreadable images, and images whose label file is
not UTF-8 text, are skipped and counted; boxes reaching outside the image are clipped to it (counted:
`clipped`), so that the output passes `ssddet check --strict`; the round-trip check compares the boxes before
clipping. Any other text input that is not UTF-8 (the YAML, a names file, a split list) is a one-line error.
An image listed under several splits is converted once per split, with a warning.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import UserError
from .boxes import clip_to_image, xywh_to_xyxy, xyxy_to_xywh
from .coco import MIN_BOX_SIDE, image_size_from_file

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Label tools write 1.0000001 for a box at the image edge (float32 arithmetic): such a box is kept (and clipped),
# while anything further out is not a normalised value (pixels, a broken export) and is skipped.
NORM_SLACK = 1e-6
OUT_OF_RANGE = "values outside YOLO's normalised range (centre in [0, 1], size in (0, 1])"
LABEL_NOT_UTF8 = "label file not UTF-8 text (its image left out)"


def _read_text(p: Path) -> str:
    """A text input's contents. Not UTF-8 (a Latin-1 or UTF-16 export) is a one-line error naming the file, not
    a UnicodeDecodeError; a UTF-8 byte-order mark (Windows editors) is dropped, or it would spoil the first line."""
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_names(path: str | Path) -> list[str]:
    """Class names from a names file (one per line, blank lines ignored) or a dataset YAML (`names`)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: names file not found")
    if p.suffix.lower() in (".yaml", ".yml"):
        return _yaml_names(_read_yaml(p), p)
    names = [line.strip() for line in _read_text(p).splitlines() if line.strip()]
    if not names:
        raise UserError(f"{p}: no class names in the file")
    return names


def _read_yaml(p: Path) -> dict:
    import yaml

    try:
        d = yaml.safe_load(_read_text(p))
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{p}: expected a mapping with names and train/val/test entries")
    return d


def _yaml_names(d: dict, p: Path) -> list[str]:
    names = d.get("names")
    if isinstance(names, dict):
        try:
            idx = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise UserError(f"{p}: `names` keys must be class indices 0..K-1") from None
        if idx != list(range(len(idx))):
            raise UserError(f"{p}: `names` must have the indices 0..{len(idx) - 1}, got {idx}")
        names = [names[k] if k in names else names[str(k)] for k in idx]
    if not isinstance(names, list) or not names:
        raise UserError(f"{p}: needs `names`, a list or an {{index: name}} mapping of the classes")
    return [str(n) for n in names]


def _list_images(entry, root: Path, p: Path) -> list[Path]:
    """A YAML split entry (folder, .txt list of image paths, or a list of those) -> image paths."""
    out: list[Path] = []
    for e in entry if isinstance(entry, list) else [entry]:
        q = Path(str(e))
        q = q if q.is_absolute() else root / q
        if q.is_dir():
            out += sorted(f for f in q.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif q.is_file() and q.suffix.lower() == ".txt":
            for line in _read_text(q).splitlines():
                if line.strip():
                    f = Path(line.strip())
                    out.append(f if f.is_absolute() else (q.parent / f if (q.parent / f).exists() else root / f))
        else:
            raise UserError(f"{p}: split entry {e!r}: {q} is neither a folder nor a .txt list of images")
    return out


def yaml_splits(yaml_path: str | Path) -> tuple[list[str], dict[str, list[Path]]]:
    """An Ultralytics dataset YAML -> (class names, {split: image paths}). `path` (the dataset root) is
    relative to the YAML's folder, and the split entries relative to it."""
    p = Path(yaml_path)
    if not p.is_file():
        raise UserError(f"{p}: dataset YAML not found")
    d = _read_yaml(p)
    root = Path(str(d.get("path") or "."))
    root = root if root.is_absolute() else p.parent / root
    splits = {s: _list_images(d[s], root, p) for s in ("train", "val", "test") if d.get(s)}
    if not splits:
        raise UserError(f"{p}: no train/val/test entry")
    return _yaml_names(d, p), splits


def label_path(image: Path) -> Path:
    """The label file of an image: .../images/x.jpg -> .../labels/x.txt if that exists, else x.txt beside it."""
    parts = list(image.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        ultra = Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
        if ultra.is_file():
            return ultra
    return image.with_suffix(".txt")


def parse_line(line: str) -> tuple[int, np.ndarray] | str:
    """One label line -> (class index, normalised [cx, cy, w, h]) or the reason it is skipped."""
    fields = line.split()
    try:
        vals = [float(v) for v in fields]
    except ValueError:
        return "malformed line (not numbers)"
    if len(vals) < 5 or (len(vals) > 5 and len(vals) % 2 == 0):
        return "malformed line (expected class cx cy w h, or class x1 y1 x2 y2 ... for a segment)"
    if not np.isfinite(vals).all() or vals[0] != int(vals[0]) or vals[0] < 0:
        return "malformed line (class index not an integer >= 0, or a non-finite number)"
    if len(vals) == 5:
        box = np.array(vals[1:], dtype=np.float64)
    else:
        pts = np.array(vals[1:], dtype=np.float64).reshape(-1, 2)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        with np.errstate(over="ignore"):  # an overflow (points near +-1e308) is inf, rejected as out of range below
            box = np.concatenate([(lo + hi) / 2, hi - lo])
    if box[2] <= 0 or box[3] <= 0:
        return "empty box (w or h <= 0)"
    # finite values of any size pass the checks above, but 1e308 overflows to inf in pixels (a NaN bbox), and
    # 1e200 loses the centre to rounding; also catches a segment whose extent overflows (hi - lo = inf)
    if not (np.all(box >= -NORM_SLACK) and np.all(box <= 1 + NORM_SLACK)):
        return OUT_OF_RANGE
    return int(vals[0]), box


def to_coco_box(box: np.ndarray, width: int, height: int) -> list[float]:
    """Normalised [cx, cy, w, h] -> COCO [x, y, w, h] in pixels."""
    cx, cy, w, h = box.tolist()
    return [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]


def to_yolo_box(bbox: list[float], width: int, height: int) -> np.ndarray:
    """COCO [x, y, w, h] in pixels -> normalised [cx, cy, w, h] (the inverse of `to_coco_box`)."""
    x, y, w, h = bbox
    return np.array([(x + w / 2) / width, (y + h / 2) / height, w / width, h / height])


def _label_lines(lab: Path) -> list[str] | None:
    """An image's label lines ([] without a label file), or None when the file is not UTF-8 text."""
    if not lab.is_file():
        return []
    try:
        return lab.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        return None


def _line_bbox(line: str, n_names: int, w: int, h: int) -> tuple[int, list[float], float, bool] | str:
    """One label line -> (class index, COCO bbox clipped to the image, round-trip error, clipped?) or the reason
    it is skipped."""
    got = parse_line(line)
    if isinstance(got, str):
        return got
    cls, box = got
    if cls >= n_names:
        return f"class index outside the {n_names} names"
    bbox = to_coco_box(box, w, h)
    error = float(np.abs(to_yolo_box(bbox, w, h) - box).max())  # before clipping, which changes the box on purpose
    inside = clip_to_image(xywh_to_xyxy(bbox), w, h, MIN_BOX_SIDE)
    if inside is None:
        return "box outside its image"
    clipped = not np.array_equal(inside, xywh_to_xyxy(bbox))
    return cls, xyxy_to_xywh(inside).tolist() if clipped else bbox, error, clipped


def _warn_multi_split(splits: dict[str, list[Path]]) -> None:
    """`train:` and `val:` naming one folder put its images in both splits, and nothing else would say so: each is
    converted once per split (as listed), and a model is then evaluated on images it was trained on."""
    where: dict[Path, list[str]] = {}
    for split, paths in splits.items():
        for path in paths:
            seen = where.setdefault(path.resolve(), [])
            if split not in seen:
                seen.append(split)
    multi = [(p, s) for p, s in where.items() if len(s) > 1]
    if multi:
        log.warning("%d image(s) in more than one split (e.g. %s: %s): each is converted once per split, so a model "
                    "is evaluated on images it was trained on", len(multi), multi[0][0], ", ".join(multi[0][1]))


def convert(splits: dict[str, list[Path]], names: list[str], base: Path) -> dict:
    """{split: image paths} + class names -> COCO dict (file_name relative to `base`; the counts and the
    round-trip check in info.ssddet_yolo2coco)."""
    images, anns, skipped, examples = [], [], Counter(), {}
    clipped, errors = 0, []

    def skip(reason: str, where: str) -> None:
        skipped[reason] += 1
        examples.setdefault(reason, where)

    _warn_multi_split(splits)
    for split, paths in splits.items():
        for path in paths:
            size = image_size_from_file(path)
            if size is None:
                skip("unreadable or missing image", str(path))
                continue
            lab = label_path(path)
            lines = _label_lines(lab)
            if lines is None:  # left out: kept without its objects, it would teach that they are background
                skip(LABEL_NOT_UTF8, str(lab))
                continue
            (w, h), image_id = size, len(images) + 1
            images.append({"id": image_id, "file_name": Path(os.path.relpath(path.resolve(), base.resolve()))
                           .as_posix(), "width": w, "height": h, "split": split})
            for n, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                got = _line_bbox(line, len(names), w, h)
                if isinstance(got, str):
                    skip(got, f"{lab}:{n}")
                    continue
                cls, bbox, error, was_clipped = got
                errors.append(error)  # only for boxes written: a skipped line's numbers are not a converter bug
                clipped += was_clipped
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cls + 1, "bbox": bbox,
                             "area": bbox[2] * bbox[3], "iscrowd": 0})
    for reason, k in skipped.items():
        log.warning("skipped %d: %s (e.g. %s)", k, reason, examples[reason])
    if clipped:
        log.warning("%d box(es) reaching outside their image clipped to it", clipped)
    stats = {"images": len(images), "boxes": len(anns), "skipped": dict(skipped), "clipped": clipped,
             "max_roundtrip_error": max(errors, default=0.0)}
    if stats["max_roundtrip_error"] > 1e-9:  # float64 arithmetic: anything larger is a conversion bug
        raise UserError(f"converted boxes differ from their label lines by up to {stats['max_roundtrip_error']:.3g}")
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    return {"info": {"ssddet_yolo2coco": stats}, "images": images, "annotations": anns, "categories": cats}


def yolo2coco(out_json: str | Path, *, yaml_path: str | Path | None = None, images: str | Path | None = None,
              names: str | Path | None = None, split: str = "train") -> dict:
    """Convert a YOLO dataset -> COCO dict (stats in info.ssddet_yolo2coco) and write it to `out_json` (file
    names relative to its folder). Either `yaml_path` (Ultralytics YAML: names and splits; `names` overrides
    its names) or `images` (a folder of images, all in `split`) with `names` (a names file or YAML)."""
    if yaml_path:
        class_names, splits = yaml_splits(yaml_path)
        if names:
            class_names = read_names(names)
    elif images and names:
        root = Path(images)
        if not root.is_dir():
            raise UserError(f"{root}: image folder not found")
        class_names = read_names(names)
        splits = {split: sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)}
    else:
        raise UserError("give --yaml DATA.yaml, or --images DIR with --names FILE")
    if not any(splits.values()):
        raise UserError("no image files found")
    out = Path(out_json)
    coco = convert(splits, class_names, out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco))
    return coco
