"""Label errors beside OA-MIL box noise (method.md §1): missing annotations, spurious boxes, swapped classes.

Each kind acts on a seeded share of the eligible annotations of the touched images (those the box-noise generator
would perturb, `noise.official_keeps`), drawn by a generator of its own (`noise.derived_rng`) from the clean input:
turning one kind on, or box noise, changes nothing another kind does. What was done stays in the file for an
evaluation, in fields the loader never reads (`coco.parse_coco`):

- missing: the removed annotations move, whole, to the top-level list `missing_annotations`;
- spurious: the added boxes carry `"spurious": true` and no `true_bbox` (there is no object to be clean about);
- swap: every annotation of the touched images keeps its category before the swap as `true_category_id`.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import UserError
from .boxes import aligned_iou_np, xywh_to_xyxy
from .coco import parse_box
from .noise import _key, check_fraction, check_noise_input, check_seed, derived_rng, official_keeps, pick, share_count

LABEL_KINDS = ("missing", "spurious", "swap")
SPURIOUS_MAX_IOU = 0.1  # a spurious box overlaps every real box of its image (and the other spurious ones) less
PLACEMENT_TRIES = 100  # positions drawn per template box
TEMPLATE_TRIES = 100  # template boxes tried per spurious box before giving up


@dataclass
class LabelPlan:
    """The label errors drawn from a clean COCO dict, by position in its `annotations` list, so that they apply
    unchanged to its box-noised copy (`add_box_noise` keeps the list as it is)."""

    shares: dict[str, float]  # kind -> share asked for
    seed: int
    touched: list[int] = field(default_factory=list)  # every annotation of the touched images
    eligible: int = 0
    missing: list[int] = field(default_factory=list)
    swaps: dict[int, Any] = field(default_factory=dict)  # position -> the new category id
    spurious: list[dict] = field(default_factory=list)  # the annotations to add

    @property
    def active(self) -> bool:
        return any(v > 0 for v in self.shares.values())


def plan_label_noise(coco: dict, seed: int = 45, image_ids: Iterable[int] | None = None, *, missing: float = 0.0,
                     spurious: float = 0.0, swap: float = 0.0, src: str = "<dict>") -> LabelPlan:
    """Draw the label errors of the images of `image_ids` (None: all): exact counts round(share x eligible
    annotations), halves up (`noise.share_count`). Reads `coco`, changes nothing."""
    shares = {kind: check_fraction(f"{kind} fraction", v)
              for kind, v in zip(LABEL_KINDS, (missing, spurious, swap))}
    plan = LabelPlan(shares, seed)
    if not plan.active:
        return plan
    check_seed(seed)
    check_noise_input(coco, src)
    cats = list(dict.fromkeys(k for k in (_key(c.get("id")) for c in coco["categories"]) if k is not None))
    if swap > 0 and len(cats) < 2:
        raise UserError(f"{src}: swapping classes needs at least two categories, the file has {len(cats)}")
    if missing > 0 and not isinstance(coco.get("missing_annotations", []), list):
        raise UserError(f"{src}: 'missing_annotations' must be a list")
    images = _touched_images(coco, image_ids, src)
    anns = coco["annotations"]
    plan.touched = [i for i, a in enumerate(anns) if _key(a.get("image_id")) in images]
    eligible = [i for i in plan.touched if official_keeps(anns[i], images[anns[i]["image_id"]], set(cats))]
    plan.eligible = len(eligible)
    plan.missing = [eligible[j] for j in pick(len(eligible), missing, derived_rng(seed, "missing"))]
    plan.swaps = _draw_swaps(anns, eligible, cats, swap, derived_rng(seed, "swap"))
    count = share_count(spurious, len(eligible))
    plan.spurious = _draw_spurious(coco, plan.touched, eligible, images, cats, count, derived_rng(seed, "spurious"),
                                   src)
    return plan


def apply_label_plan(coco: dict, plan: LabelPlan, mark_noised: bool = False) -> dict:
    """Apply `plan` in place to `coco` (the dict it was drawn from, or a box-noised copy of it) -> `coco`.
    `mark_noised`: the spurious boxes get `"noised": false` like the other boxes no box noise reached (partial
    box noise flags every annotation)."""
    if not plan.active:
        return coco
    anns = coco["annotations"]
    if plan.shares["swap"] > 0:  # on every annotation of the touched images: the evaluation compares the two ids
        for i in plan.touched:
            anns[i].setdefault("true_category_id", anns[i].get("category_id"))
    for i, category in plan.swaps.items():
        anns[i]["category_id"] = category
    if plan.shares["missing"] > 0:
        coco["missing_annotations"] = list(coco.get("missing_annotations") or []) + [anns[i] for i in plan.missing]
    spurious = [{**a, "noised": False} if mark_noised else dict(a) for a in plan.spurious]
    gone = set(plan.missing)
    coco["annotations"] = [a for i, a in enumerate(anns) if i not in gone] + spurious
    _record_label_noise(coco, plan)
    return coco


def add_label_noise(coco: dict, seed: int = 45, image_ids: Iterable[int] | None = None, *, missing: float = 0.0,
                    spurious: float = 0.0, swap: float = 0.0, src: str = "<dict>") -> dict:
    """The label errors alone, on a copy of `coco` (`simulate.noisy_copy` combines them with box noise)."""
    plan = plan_label_noise(coco, seed, image_ids, missing=missing, spurious=spurious, swap=swap, src=src)
    return apply_label_plan(copy.deepcopy(coco), plan)


def _touched_images(coco: dict, image_ids: Iterable[int] | None, src: str) -> dict:
    """{id: image} of the images to touch; each needs its size (eligibility and placement depend on it)."""
    selected = None if image_ids is None else set(image_ids)
    images = {im["id"]: im for im in coco["images"] if selected is None or im["id"] in selected}
    for im in images.values():
        if not all(isinstance(im.get(k), (int, float)) for k in ("width", "height")):
            raise UserError(f"{src}: image {im['id']} needs numeric width/height to add label noise")
    return images


def _draw_swaps(anns: list, eligible: list[int], cats: list, share: float, rng: np.random.RandomState) -> dict:
    """A seeded share of the eligible annotations, each to another category drawn uniformly from the others."""
    swaps = {}
    for i in (eligible[j] for j in pick(len(eligible), share, rng)):
        others = [c for c in cats if c != anns[i]["category_id"]]
        swaps[i] = others[rng.randint(len(others))]
    return swaps


def _draw_spurious(coco: dict, touched: list[int], eligible: list[int], images: dict, cats: list, count: int,
                   rng: np.random.RandomState, src: str) -> list[dict]:
    """`count` boxes where no object is: each copies the size of a real box (drawn from the eligible ones) into
    that box's image, at a uniform position with IoU < SPURIOUS_MAX_IOU with every real box there, and takes a
    category drawn uniformly. A plausible false annotation, not an easy one to spot by its shape."""
    anns = coco["annotations"]
    taken: dict = {}  # image id -> the xyxy boxes a new one must keep off: the real objects, then the new boxes
    for a in [anns[i] for i in touched] + list(coco.get("missing_annotations") or []):
        xywh = _object_xywh(a) if isinstance(a, dict) else None
        if xywh is not None:
            taken.setdefault(_key(a.get("image_id")), []).append(xywh_to_xyxy(xywh))
    first_id = _next_annotation_id(coco)
    out = []
    for k in range(count):
        category = cats[rng.randint(len(cats))]
        image_id, xywh = _background_box(anns, eligible, images, taken, rng, src)
        taken.setdefault(image_id, []).append(xywh_to_xyxy(xywh))
        out.append({"id": first_id + k, "image_id": image_id, "category_id": category, "bbox": xywh,
                    "area": xywh[2] * xywh[3], "iscrowd": 0, "spurious": True})
    return out


def _background_box(anns: list, eligible: list[int], images: dict, taken: dict, rng: np.random.RandomState,
                    src: str) -> tuple[Any, list[float]]:
    """-> (image id, COCO [x, y, w, h]) of one spurious box; a UserError if TEMPLATE_TRIES templates find no spot."""
    for _ in range(TEMPLATE_TRIES):
        template = anns[eligible[rng.randint(len(eligible))]]
        im = images[template["image_id"]]
        box = _free_spot(_object_xywh(template), im["width"], im["height"], taken.get(im["id"], []), rng)
        if box is not None:
            return im["id"], box
    raise UserError(f"{src}: no background spot (IoU < {SPURIOUS_MAX_IOU} with every box) for a spurious box in "
                    f"{TEMPLATE_TRIES} tries; ask for fewer spurious boxes")


def _free_spot(template: list[float], width: float, height: float, boxes: list,
               rng: np.random.RandomState) -> list[float] | None:
    """[x, y, w, h] of the first of PLACEMENT_TRIES uniform positions of a box of the template's size (at most the
    image's) whose IoU with each of `boxes` (xyxy) is under SPURIOUS_MAX_IOU, or None. All positions are drawn, so
    what follows in the stream does not depend on which one fits."""
    w, h = float(min(template[2], width)), float(min(template[3], height))
    xs = rng.uniform(0.0, width - w, PLACEMENT_TRIES)
    ys = rng.uniform(0.0, height - h, PLACEMENT_TRIES)
    free = np.ones(PLACEMENT_TRIES, bool)
    if boxes:
        cands = np.stack([xs, ys, xs + w, ys + h], axis=1)
        free = aligned_iou_np(cands[:, None], np.asarray(boxes)[None]).max(axis=1) < SPURIOUS_MAX_IOU
    hits = np.flatnonzero(free)
    return [float(xs[hits[0]]), float(ys[hits[0]]), w, h] if len(hits) else None


def _object_xywh(ann: dict) -> list[float] | None:
    """Where the annotation's object is, COCO [x, y, w, h]: its `true_bbox` when valid (a file noised before),
    else its `bbox`; None if neither is 4 finite numbers with a positive size."""
    for key in ("true_bbox", "bbox"):
        if parse_box(ann.get(key)) is not None and ann[key][2] > 0 and ann[key][3] > 0:
            return [float(v) for v in ann[key]]
    return None


def _next_annotation_id(coco: dict) -> int:
    """One above every integer annotation id in the file (the missing annotations' too), at least 1."""
    lists = [coco["annotations"], coco.get("missing_annotations") or []]
    ids = [a.get("id") for anns in lists for a in anns if isinstance(a, dict)]
    return max([i for i in ids if isinstance(i, int) and not isinstance(i, bool)] + [0]) + 1


def _record_label_noise(coco: dict, plan: LabelPlan) -> None:
    """info.label_noise: the shares, the seed and what they gave."""
    info = dict(coco.get("info") or {}) if isinstance(coco.get("info"), dict) else {}
    info["label_noise"] = {**plan.shares, "seed": plan.seed, "ssddet_version": __version__,
                           "annotations_eligible": plan.eligible, "annotations_missing": len(plan.missing),
                           "boxes_spurious": len(plan.spurious), "annotations_swapped": len(plan.swaps)}
    coco["info"] = info
