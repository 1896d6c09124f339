"""Convert a Pascal VOC tree (XML annotations + ImageSets/Main split lists) to COCO JSON.

Boxes are converted as ``[xmin, ymin, xmax - xmin, ymax - ymin]`` with no +-1
pixel shift, clipped to the image (counted), so that the output passes
``ssddet check --strict``.  ``difficult`` objects become ``iscrowd: 1`` so that training
ignores them, as in VOC practice.  Every image gets a ``"split"`` key taken
from ``ImageSets/Main/<split>.txt``.
"""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .boxes import clip_to_image, xyxy_to_xywh
from .coco import MIN_BOX_SIDE

logger = logging.getLogger(__name__)


def _read_splits(voc_root: Path, splits) -> dict[str, str]:
    """Map image id -> split from ``ImageSets/Main/<split>.txt`` (missing files are skipped)."""
    owner: dict[str, str] = {}
    found = 0
    for split in splits:
        f = voc_root / "ImageSets" / "Main" / f"{split}.txt"
        if not f.is_file():
            logger.warning("split list %s not found; skipping split %r", f, split)
            continue
        found += 1
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            img_id = line.split()[0]
            if img_id in owner and owner[img_id] != split:
                raise ValueError(f"image {img_id!r} is listed in both {owner[img_id]!r} and {split!r}")
            owner[img_id] = split
    if not found:
        where = voc_root / "ImageSets" / "Main"
        raise FileNotFoundError(f"none of the split lists {list(splits)} exist in {where}")
    return owner


def _text(elem, tag: str, where: str, rel: str) -> str:
    """Text of child ``tag`` of ``elem``; ValueError naming the file if missing or empty."""
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{rel}: {where} missing <{tag}>")
    return child.text.strip()


def _number(elem, tag: str, where: str, rel: str) -> float:
    """Child ``tag`` parsed as float; ValueError naming the file on failure."""
    s = _text(elem, tag, where, rel)
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"{rel}: {where} <{tag}> is not a number: {s!r}") from None


def _image_size(root, img_path: Path, rel: str) -> tuple[int, int]:
    """``(width, height)`` from ``<size>``, falling back to the image's header (EXIF orientation applied, as
    every command reads the image)."""
    size = root.find("size")
    if size is not None:
        try:
            w, h = int(float(size.findtext("width", "0"))), int(float(size.findtext("height", "0")))
        except ValueError:
            raise ValueError(f"{rel}: <size> has a non-numeric width/height") from None
        if w > 0 and h > 0:
            return w, h
    from .images import UnreadableImage, image_size

    try:
        return image_size(img_path)
    except UnreadableImage as exc:
        raise ValueError(f"{rel}: no usable <size> and cannot read image {img_path}: {exc.reason}") from None


def _parse_objects(root, rel: str) -> list[dict]:
    """Objects of one XML as dicts ``name, box (xyxy floats), difficult``."""
    objs = []
    for i, obj in enumerate(root.findall("object")):
        where = f"<object> #{i}"
        name = _text(obj, "name", where, rel)
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{rel}: {where} ({name}) missing <bndbox>")
        box = [_number(bnd, t, "<bndbox>", rel) for t in ("xmin", "ymin", "xmax", "ymax")]
        diff = obj.findtext("difficult")
        try:
            difficult = int(float(diff)) if diff and diff.strip() else 0
        except ValueError:
            raise ValueError(f"{rel}: {where} <difficult> is not a number: {diff!r}") from None
        objs.append({"name": name, "box": box, "difficult": difficult})
    return objs


def _parse_xml(xml_path: Path, voc_root: Path, image_dir: str) -> dict:
    """Parse one annotation file into ``file (Path), width, height, objects``."""
    rel = xml_path.relative_to(voc_root).as_posix()
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{rel}: malformed XML: {exc}") from None
    fname = (root.findtext("filename") or "").strip() or f"{xml_path.stem}.jpg"
    img_path = voc_root / image_dir / fname
    width, height = _image_size(root, img_path, rel)
    return {"file": img_path, "width": width, "height": height, "objects": _parse_objects(root, rel)}


def _categories(parsed: list[dict], class_names) -> list[dict]:
    """COCO categories from ``class_names`` (in order) or the sorted names found."""
    if class_names is None:
        class_names = sorted({o["name"] for p in parsed for o in p["objects"]})
    if len(set(class_names)) != len(class_names):
        raise ValueError("class_names contains duplicates")
    return [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]


def voc2coco(
    voc_root,
    out_json=None,
    *,
    splits=("train", "val", "test"),
    image_dir: str = "JPEGImages",
    class_names=None,
) -> dict:
    """Convert the VOC tree at ``voc_root`` into a COCO dict (written to ``out_json`` if given).

    Images are those of ``Annotations/*.xml`` listed in one of the split files,
    in sorted file-name order with ids 1..N.  ``file_name`` is relative to the
    directory of ``out_json`` (or to ``voc_root`` without ``out_json``).
    Degenerate boxes (w <= 0 or h <= 0), images in no split and objects of a
    class outside ``class_names`` are dropped with a counted warning.
    """
    voc_root = Path(voc_root)
    owner = _read_splits(voc_root, splits)
    xmls = sorted((voc_root / "Annotations").glob("*.xml"))
    unlisted = [x for x in xmls if x.stem not in owner]
    if unlisted:
        logger.warning("skipped %d annotation file(s) not listed in any split (e.g. %s)",
                       len(unlisted), unlisted[0].name)
    listed = [x for x in xmls if x.stem in owner]
    missing = set(owner) - {x.stem for x in listed}
    if missing:
        logger.warning("%d image id(s) in the split lists have no annotation file (e.g. %s)",
                       len(missing), sorted(missing)[0])
    parsed = [_parse_xml(x, voc_root, image_dir) for x in listed]
    cats = _categories(parsed, class_names)
    base = Path(out_json).resolve().parent if out_json is not None else voc_root.resolve()
    info = {"description": "converted from Pascal VOC", "converter": "ssddet.data.voc.voc2coco",
            "voc_root": str(voc_root), "splits": list(splits)}
    coco = {"info": info, **_assemble(listed, parsed, owner, cats, base)}
    if out_json is not None:
        out = Path(out_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(coco, indent=1))
    return coco


def _assemble(xmls, parsed, owner, cats, base: Path) -> dict:
    """Build the COCO images/annotations lists, counting and logging dropped objects."""
    cat_id = {c["name"]: c["id"] for c in cats}
    images, anns = [], []
    degenerate, unknown, clipped = 0, 0, 0
    for xml_path, p in zip(xmls, parsed):
        image_id = len(images) + 1
        rel = Path(os.path.relpath(p["file"].resolve(), base)).as_posix()
        images.append({"id": image_id, "file_name": rel, "width": p["width"], "height": p["height"],
                       "split": owner[xml_path.stem]})
        for o in p["objects"]:
            bbox = [float(v) for v in xyxy_to_xywh(o["box"])]
            if bbox[2] <= 0 or bbox[3] <= 0:
                degenerate += 1
                continue
            inside = clip_to_image(o["box"], p["width"], p["height"], MIN_BOX_SIDE)
            if inside is None:
                degenerate += 1
                continue
            if not np.array_equal(inside, np.asarray(o["box"], dtype=np.float64)):
                clipped += 1
                bbox = [float(v) for v in xyxy_to_xywh(inside)]
            if o["name"] not in cat_id:
                unknown += 1
                continue
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_id[o["name"]],
                         "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 1 if o["difficult"] else 0})
    if degenerate:
        logger.warning("dropped %d degenerate box(es) with w <= 0 or h <= 0 (or nothing inside the image)", degenerate)
    if clipped:
        logger.warning("clipped %d box(es) reaching outside their image", clipped)
    if unknown:
        logger.warning("dropped %d object(s) whose class is not in class_names", unknown)
    return {"images": images, "annotations": anns, "categories": cats}
