"""`ssddet check`: run every dataset check up front and print a summary (exit 2 when the set is unusable; with
--strict, exit 1 when any annotation was dropped or changed on the way in)."""
from __future__ import annotations

from collections import Counter

from PIL import Image, UnidentifiedImageError

from .coco import IMAGE_SIZE_FROM_FILE, warning_unit

# image problems that make the set unusable (the others are warnings); keys start with the kind
FATAL_IMAGE_PROBLEMS = ("image file missing", "image file unreadable")
RESCALED = "image size differs from JSON (boxes will be rescaled)"


def check_images(records) -> Counter:
    """Open every image header: missing, unreadable and size-mismatched files are counted by kind."""
    problems: Counter = Counter()
    examples: dict[str, str] = {}
    for r in records:
        try:
            with Image.open(r.path) as im:
                im.verify()
                size, mode = im.size, im.mode
        except FileNotFoundError:
            kind = "image file missing"
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            kind = "image file unreadable / not an image"
        else:
            kind = None
            if size != (r.width, r.height):
                kind = RESCALED
            elif mode not in ("RGB",):
                problems[f"non-RGB image ({mode}) converted to RGB"] += 1
        if kind:
            problems[kind] += 1
            examples.setdefault(kind, f"{r.path} (image {r.image_id})")
    return Counter({f"{k}, e.g. {examples[k]}" if k in examples else k: v for k, v in problems.items()})


def empty_categories(data) -> list[str]:
    """Names of the categories without any usable box."""
    per_class = Counter(int(lab) for r in data.records for lab in r.labels)
    return [n for i, n in enumerate(data.class_names) if per_class.get(i + 1, 0) == 0]


def strict_findings(data, image_problems: Counter) -> list[str]:
    """What --strict fails on: annotations dropped, clipped or with an unknown image/category id, images whose
    boxes get rescaled, categories without a box. Sizes read from the image file and non-RGB images are not
    findings: they change no box."""
    found = [f"{n} {warning_unit(k)} {k}" for k, n in sorted(data.warnings.items()) if k != IMAGE_SIZE_FROM_FILE]
    found += [f"{n} image(s) rescaled" for k, n in sorted(image_problems.items()) if k.startswith(RESCALED)]
    empty = empty_categories(data)
    if empty:
        found.append(f"{len(empty)} category(ies) without any box")
    return found


def summarise(data, image_problems: Counter, strict: bool = False) -> tuple[str, int]:
    """-> (summary text ending with the verdict, exit status: 0 OK, 1 --strict findings, 2 not usable)."""
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
    examples = getattr(data, "warning_examples", {}) or {}
    for kind, n in sorted(data.warnings.items()):
        ex = f" (e.g. ids {examples[kind]})" if examples.get(kind) else ""
        lines.append(f"warning: {n} {warning_unit(kind)}: {kind}{ex}")
    for kind, n in sorted(image_problems.items()):
        level = "error" if kind.startswith(FATAL_IMAGE_PROBLEMS) else "warning"
        lines.append(f"{level}: {n} image(s): {kind}")
    if boxes == 0:
        lines.append("error: no usable box in the dataset (see the warnings above)")
    ok = boxes > 0 and not any(k.startswith(FATAL_IMAGE_PROBLEMS) for k in image_problems)
    findings = strict_findings(data, image_problems) if strict else []
    if not ok:
        lines.append("NOT USABLE as is (see errors above)")
    elif findings:
        lines.append(f"FAILED --strict: {'; '.join(findings)}")
    else:
        lines.append("OK")
    return "\n".join(lines), 2 if not ok else (1 if findings else 0)


