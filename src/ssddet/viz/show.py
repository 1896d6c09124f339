"""`ssddet show`: draw the clean (`true_bbox`), noisy (`bbox`, or `noisy_bbox` when the file is a refine
export) and refined boxes of the same images in distinct colours with a legend: one PNG per image plus a
contact sheet. This is what to look at before trusting the refiner.

Layers: the annotation file gives "clean" (its `true_bbox`), "noisy" (`noisy_bbox` if present, else `bbox`)
and, when it is itself an `ssddet refine` export, "refined" (its `bbox`). Each --compare file adds a layer
named after the file: a COCO dict (an `ssddet refine` export: boxes matched by annotation id) or a COCO
results list (`ssddet eval --save-results`: detections matched by image id, drawn from --score up)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.boxes import aligned_iou_np, xywh_to_xyxy
from ..data.images import BadImages, UnreadableImage, read_rgb
from ..data.results import detection_entry
from ..errors import UserError
from .draw import CLEAN, EXTRA_COLOURS, NOISY, REFINED, contact_sheet, draw_boxes, save_png, with_legend

log = logging.getLogger(__name__)
SHEET_NAME = "contact_sheet.png"


@dataclass
class Layer:
    """One set of boxes to draw: xyxy boxes per annotation id (`by_ann`) or per image id (`by_image`)."""

    name: str
    colour: tuple[int, int, int]
    by_ann: dict = field(default_factory=dict)  # annotation id -> float[4] xyxy (JSON pixel frame)
    by_image: dict = field(default_factory=dict)  # image id -> float[N, 4] xyxy
    image_ids: set | None = None  # images the layer covers (None: any)


def _box(v) -> np.ndarray | None:
    """COCO [x, y, w, h] -> float64[4] xyxy, or None when it is not 4 finite numbers."""
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        return None
    try:
        b = xywh_to_xyxy([float(x) for x in v])
    except (TypeError, ValueError):
        return None
    return b if np.isfinite(b).all() else None


def annotation_layers(raw: dict) -> list[Layer]:
    """The clean / noisy / refined layers of one annotation file (only those it holds)."""
    clean, noisy, refined = Layer("clean", CLEAN), Layer("noisy", NOISY), Layer("refined", REFINED)
    for a in raw.get("annotations", []):
        if not isinstance(a, dict) or a.get("iscrowd"):
            continue
        aid = a.get("id")
        given = _box(a.get("bbox"))
        if "noisy_bbox" in a:
            noisy.by_ann[aid], refined.by_ann[aid] = _box(a["noisy_bbox"]), given
        else:
            noisy.by_ann[aid] = given
        if "true_bbox" in a:
            clean.by_ann[aid] = _box(a["true_bbox"])
    return [la for la in (clean, noisy, refined) if la.by_ann]


def compare_layer(path: Path, raw, colour, score: float) -> Layer:
    """A --compare file -> its layer (named after the file)."""
    layer = Layer(path.stem, colour)
    if isinstance(raw, dict) and isinstance(raw.get("annotations"), list):
        layer.by_ann = {a.get("id"): _box(a.get("bbox")) for a in raw["annotations"]
                        if isinstance(a, dict) and not a.get("iscrowd")}
        layer.image_ids = {im.get("id") for im in raw.get("images", []) if isinstance(im, dict)}
        return layer
    if not isinstance(raw, list):
        raise UserError(f"{path}: expected a COCO dict with annotations or a COCO results list")
    boxes: dict = {}
    for i, r in enumerate(raw):
        b, s = detection_entry(path, i, r)
        if s >= score:
            boxes.setdefault(r.get("image_id"), []).append(xywh_to_xyxy(b))
    layer.name += f" (score >= {score:g})"
    layer.by_image = {k: np.stack(v) for k, v in boxes.items()}
    return layer


def read_any_json(path: Path):
    """A JSON file holding a dict or a list (a results file), with the project's clear errors."""
    import json

    from ..data.coco import read_json

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return read_json(path)
    except UserError:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        if isinstance(d, list):
            return d
        raise


def pick_records(records, layers: list[Layer], ids: list[int] | None, n: int) -> list:
    """The records to draw: `ids` (in that order), else n evenly spread over the records with boxes that every
    layer restricted to some images covers."""
    if ids:
        by_id = {r.image_id: r for r in records}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise UserError(f"--ids: image id(s) {missing} not in the annotation file (or not in --split)")
        return [by_id[i] for i in ids]
    cand = [r for r in records if len(r.boxes) and all(la.image_ids is None or r.image_id in la.image_ids
                                                        for la in layers)]
    if not cand:
        raise UserError("no image with boxes to draw (that every --compare file covers)")
    idx = np.unique(np.linspace(0, len(cand) - 1, min(n, len(cand))).round().astype(int))
    return [cand[i] for i in idx]


def layer_boxes(layer: Layer, rec) -> np.ndarray:
    """float[N, 4] xyxy of one layer on one image (JSON pixel frame)."""
    if layer.by_image:
        return layer.by_image.get(rec.image_id, np.zeros((0, 4)))
    got = [layer.by_ann.get(int(a)) for a in rec.ann_ids]
    return np.array([g for g in got if g is not None], dtype=np.float64).reshape(-1, 4)


def mean_iou(layer: Layer, clean: Layer | None, ann_ids) -> float | None:
    """Mean IoU with the clean box over the annotations both layers hold (None if none)."""
    if clean is None or not layer.by_ann or layer is clean:
        return None
    pairs = [(layer.by_ann.get(a), clean.by_ann.get(a)) for a in ann_ids]
    pairs = [(x, c) for x, c in pairs if x is not None and c is not None]
    if not pairs:
        return None
    return float(aligned_iou_np(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])).mean())


def legend(layers: list[Layer], ann_ids) -> list[tuple[str, tuple]]:
    """Legend entries: each layer's name, with its mean IoU with the clean boxes where known."""
    clean = next((la for la in layers if la.name == "clean"), None)
    out = []
    for la in layers:
        iou = mean_iou(la, clean, ann_ids)
        out.append((la.name + (f" (IoU {iou:.2f})" if iou is not None else ""), la.colour))
    return out


def draw_record(rec, layers: list[Layer], names: dict[int, str]):
    """One image with every layer drawn (the first layer labelled with class names) -> uint8 Tensor[3, H, W].
    Raises UnreadableImage."""
    image = read_rgb(rec.path, rec.image_id)
    h, w = image.shape[-2:]
    scale = np.array([w / rec.width, h / rec.height] * 2)  # JSON frame -> file frame (as data/dataset.py)
    for k, la in enumerate(layers):
        boxes = layer_boxes(la, rec) * scale
        labels = [names[int(lab)] for lab in rec.labels] if k == 0 and la.by_ann and len(boxes) == len(
            rec.labels) else None
        image = draw_boxes(image, boxes, la.colour, labels, width=max(2, min(h, w) // 200))
    return image


def show_images(data, raw: dict, compare: list[tuple[Path, object]], out: Path, ids=None, n: int = 16,
                split: str | None = None, score: float = 0.5, bad: BadImages | None = None) -> list[Path]:
    """Draw the picked images -> [per-image PNG paths..., contact sheet path]. Unreadable images are handled by
    `bad` (default: skipped with a warning)."""
    bad = bad if bad is not None else BadImages()
    layers = annotation_layers(raw)
    for k, (path, craw) in enumerate(compare):
        colour = REFINED if k == 0 and not any(la.name == "refined" for la in layers) else EXTRA_COLOURS[
            k % len(EXTRA_COLOURS)]
        layers.append(compare_layer(path, craw, colour, score))
    records = data.select(split)
    picked = pick_records(records, layers, ids, n)
    names = dict(enumerate(data.class_names, start=1))
    paths, drawn = [], []
    for rec in picked:
        try:
            image = draw_record(rec, layers, names)
        except UnreadableImage as e:
            bad.add(e)
            continue
        drawn.append(image)
        paths.append(save_png(with_legend(image, legend(layers, rec.ann_ids.tolist())),
                              out / f"{rec.image_id}_{rec.path.stem}.png"))
    if not drawn:
        raise UserError(f"none of the {len(picked)} picked image(s) could be read; is --images the right folder? "
                        f"(e.g. {next(iter(bad.files))})")
    all_ids = [a for r in picked if str(r.path) not in bad.files for a in r.ann_ids.tolist()]
    paths.append(save_png(with_legend(contact_sheet(drawn), legend(layers, all_ids)), out / SHEET_NAME))
    log.info("drew %d image(s), layers: %s", len(drawn), ", ".join(la.name for la in layers))
    if bad.files:
        log.warning("skipped %d unreadable image(s) of the %d picked", len(bad.files), len(picked))
    return paths
