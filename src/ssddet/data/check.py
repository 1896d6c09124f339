"""`ssddet check`: run every dataset check up front and print a summary (exit 2 when the set is unusable; with
--strict, exit 1 when any annotation was dropped or changed on the way in, or any image cannot be decoded).

Every image is decoded in full, the way training reads it (`data.images.decoded`: EXIF orientation applied), in
parallel threads (PIL releases the GIL while decoding): a JPEG cut short has an intact header, so only decoding
finds it, and training would otherwise meet it at a random point of an epoch."""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from .coco import IMAGE_SIZE_FROM_FILE, split_key, warning_unit
from .images import UnreadableImage, decoded

# image problems that make the set unusable (the others are warnings); keys start with the kind
FATAL_IMAGE_PROBLEMS = ("image file missing",)
RESCALED = "image size differs from JSON (boxes will be rescaled)"
EXIF_UNROTATED = ("EXIF-rotated photo whose JSON width/height are its unrotated size (its boxes may be in the "
                  "unrotated frame, but every command rotates the image as phones and labelling tools show it; "
                  "look with `ssddet show`)")
UNREADABLE = "cannot be decoded"


@dataclass
class ImageProblems:
    counts: Counter = field(default_factory=Counter)  # kind (with a first example) -> images
    unreadable: dict = field(default_factory=dict)  # image id -> "path (image id, its annotations): why"


def inspect_image(rec) -> tuple[str | None, str]:
    """Decode one image as training does -> (problem kind or None, why it cannot be decoded or "")."""
    if not rec.path.is_file():
        return "image file missing", ""
    try:
        with decoded(rec.path, rec.image_id) as (im, stored):
            size, mode = im.size, im.mode
    except UnreadableImage as e:
        return UNREADABLE, e.reason
    if size != (rec.width, rec.height):
        return (EXIF_UNROTATED if stored == (rec.width, rec.height) else RESCALED), ""
    return (None if mode == "RGB" else f"non-RGB image ({mode}) converted to RGB"), ""


def _carried(rec) -> str:
    """The annotations an image carries, for the unreadable-image lines."""
    ids = rec.ann_ids.tolist()
    crowd = f" + {len(rec.crowd_boxes)} crowd box(es)" if len(rec.crowd_boxes) else ""
    return (f"annotations {ids}" if ids else "no boxes") + crowd


def default_workers() -> int:
    """Threads `check_images` decodes in by default: min(8, CPUs)."""
    return min(8, os.cpu_count() or 1)


def check_images(records, workers: int | None = None) -> ImageProblems:
    """Decode every image in `workers` threads (default: `default_workers()`; progress bar on a terminal):
    missing, undecodable and size-mismatched files are counted by kind, and every undecodable one is listed."""
    problems = ImageProblems()
    examples: dict[str, str] = {}
    with ThreadPoolExecutor(max(1, workers or default_workers())) as pool:
        results = tqdm(pool.map(inspect_image, records), total=len(records), desc="decoding images", unit="img",
                       leave=False, disable=None)
        for r, (kind, why) in zip(records, results):
            if kind is None:
                continue
            problems.counts[kind] += 1
            if kind == UNREADABLE:
                problems.unreadable[r.image_id] = f"{r.path} (image {r.image_id}, {_carried(r)}): {why}"
            elif not kind.startswith("non-RGB"):
                examples.setdefault(kind, f"{r.path} (image {r.image_id})")
    problems.counts = Counter({f"{k}, e.g. {examples[k]}" if k in examples else k: v
                               for k, v in problems.counts.items()})
    return problems


def empty_categories(data) -> list[str]:
    """Names of the categories without any usable box."""
    per_class = Counter(int(lab) for r in data.records for lab in r.labels)
    return [n for i, n in enumerate(data.class_names) if per_class.get(i + 1, 0) == 0]


STANDARD_SPLITS = ("train", "val", "test")


def near_miss_splits(data) -> Counter:
    """Split values that a person reads as train/val/test but no command selects ("Train", " val", a JSON list):
    value -> images. Split names are matched exactly (`CocoData.select`)."""
    return Counter(r.split for r in data.records if r.split is not None and r.split not in STANDARD_SPLITS
                   and split_key(r.split) in STANDARD_SPLITS)


def split_warnings(data) -> list[str]:
    """What `train --data` would make of the `split` fields: near-miss names, images in no split, a missing
    train or val split."""
    splits = Counter(r.split for r in data.records)
    out = [f"warning: {n} image(s) have split {k!r}, which no command selects (split names match exactly: "
           f"'{split_key(k)}')" for k, n in sorted(near_miss_splits(data).items())]
    if splits.get(None) and len(splits) > 1:
        out.append(f"warning: {splits[None]} image(s) have no split field: `--data` leaves them out of every split")
    absent = [k for k in ("train", "val") if not splits.get(k)]
    if absent and data.records:
        out.append(f"warning: no image of split {' or '.join(repr(k) for k in absent)}: `ssddet train --data` trains "
                   "on 'train' and validates on 'val' (other names: --set data.train_split=NAME / "
                   "data.val_split=NAME; separate files: --train-ann / --val-ann)")
    return out


def strict_findings(data, images: ImageProblems) -> list[str]:
    """What --strict fails on: annotations dropped, clipped or with an unknown image/category id, images whose
    boxes get rescaled or that cannot be decoded, images in a near-miss split, categories without a box. Sizes
    read from the image file and non-RGB images are not findings: they change no box."""
    found = [f"{n} {warning_unit(k)} {k}" for k, n in sorted(data.warnings.items()) if k != IMAGE_SIZE_FROM_FILE]
    found += [f"{n} image(s) rescaled" for k, n in sorted(images.counts.items()) if k.startswith(RESCALED)]
    found += [f"{n} EXIF-rotated image(s) sized unrotated in the JSON" for k, n in sorted(images.counts.items())
              if k.startswith(EXIF_UNROTATED)]
    if images.unreadable:
        found.append(f"{len(images.unreadable)} image(s) {UNREADABLE}")
    near = sum(near_miss_splits(data).values())
    if near:
        found.append(f"{near} image(s) in a split that differs from train/val/test only by case, spaces or quoting")
    empty = empty_categories(data)
    if empty:
        found.append(f"{len(empty)} category(ies) without any box")
    return found


def summarise(data, images: ImageProblems | None = None, strict: bool = False) -> tuple[str, int]:
    """-> (summary text ending with the verdict, exit status: 0 OK, 1 --strict findings, 2 not usable).
    `images`: what `check_images` found (None: the images were not opened)."""
    images = images if images is not None else ImageProblems()
    recs = data.records
    splits = Counter(str(r.split) for r in recs)
    boxes = sum(len(r.boxes) for r in recs)
    per_class = Counter(int(lab) for r in recs for lab in r.labels)
    lines = [f"{data.ann_path}: {len(recs)} images, {boxes} usable boxes, {data.num_classes} categories",
             "splits: " + ", ".join(f"{k}={v}" for k, v in sorted(splits.items())),
             "boxes per category: " + ", ".join(f"{n}={per_class.get(i + 1, 0)}" for i, n in
                                                enumerate(data.class_names)),
             f"images without boxes: {sum(1 for r in recs if len(r.boxes) == 0)}",
             f"crowd boxes (ignored for training): {sum(len(r.crowd_boxes) for r in recs)}",
             "annotations with clean true_bbox: "
             f"{sum(len(r.boxes) for r in recs if r.true_boxes is not None)}"]
    empty_cats = empty_categories(data)
    if empty_cats:
        lines.append(f"warning: categories without any box: {empty_cats}")
    lines += split_warnings(data)
    examples = getattr(data, "warning_examples", {}) or {}
    for kind, n in sorted(data.warnings.items()):
        ex = f" (e.g. ids {examples[kind]})" if examples.get(kind) else ""
        lines.append(f"warning: {n} {warning_unit(kind)}: {kind}{ex}")
    for kind, n in sorted(images.counts.items()):
        if kind == UNREADABLE:
            continue  # listed file by file below
        level = "error" if kind.startswith(FATAL_IMAGE_PROBLEMS) else "warning"
        lines.append(f"{level}: {n} image(s): {kind}")
    if images.unreadable:
        lines.append(f"warning: {len(images.unreadable)} image(s) {UNREADABLE} (training and evaluation skip "
                     "them with a warning; repair or remove the files):")
        lines += [f"  {u}" for u in images.unreadable.values()]
    readable_boxes = sum(len(r.boxes) for r in recs if r.image_id not in images.unreadable)
    # the default training split (`train --data`) must have one too, or training takes no step
    train_boxes = sum(len(r.boxes) for r in recs if r.split == "train" and r.image_id not in images.unreadable)
    no_train = splits.get("train", 0) > 0 and train_boxes == 0 and readable_boxes > 0
    if boxes == 0:
        lines.append("error: no usable box in the dataset (see the warnings above)")
    elif readable_boxes == 0:
        lines.append("error: no usable box in an image that can be decoded")
    elif no_train:
        lines.append("error: no usable box in a training image (split 'train') that can be decoded")
    ok = readable_boxes > 0 and not no_train and not any(k.startswith(FATAL_IMAGE_PROBLEMS) for k in images.counts)
    findings = strict_findings(data, images) if strict else []
    if not ok:
        lines.append("NOT USABLE as is (see errors above)")
    elif findings:
        lines.append(f"FAILED --strict: {'; '.join(findings)}")
    elif images.unreadable:
        lines.append(f"OK, except {len(images.unreadable)} image(s) that {UNREADABLE} and will be skipped "
                     "(--strict fails on them)")
    else:
        lines.append("OK")
    return "\n".join(lines), 2 if not ok else (1 if findings else 0)
