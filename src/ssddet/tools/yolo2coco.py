"""`ssddet data yolo2coco`: a YOLO-txt dataset (Ultralytics YAML, or a Darknet folder + names file) -> COCO
JSON with a `split` field per image (the converter is `data/yolo.py`)."""
from __future__ import annotations


def add_yolo2coco_parser(dsub) -> None:
    y = dsub.add_parser("yolo2coco", help="YOLO-txt dataset (Ultralytics YAML or folder + names file) -> COCO "
                        "JSON with splits")
    y.add_argument("--yaml", metavar="YAML", help="Ultralytics dataset YAML (path, train/val/test, names)")
    y.add_argument("--images", metavar="DIR", help="without --yaml: a folder of images (labels beside them or "
                   "in the matching labels/ folder), all in --split")
    y.add_argument("--names", metavar="FILE", help="class names, one per line (obj.names, classes.txt) or a YAML "
                   "with `names`; overrides the --yaml names")
    y.add_argument("--split", default="train", help="split of the --images folder (default: train)")
    y.add_argument("--out", required=True, metavar="JSON", help="output COCO JSON (file names relative to its "
                   "folder)")


def cmd_yolo2coco(a) -> int:
    from ..api import yolo2coco

    coco = yolo2coco(a.out, yaml_path=a.yaml, images=a.images, names=a.names, split=a.split)
    st = coco["info"]["ssddet_yolo2coco"]
    skipped = sum(st["skipped"].values())
    print(f"wrote {a.out}: {st['images']} images, {st['boxes']} boxes, {len(coco['categories'])} categories"
          + (f", {skipped} line(s)/image(s) skipped" if skipped else "")
          + (f", {st['clipped']} box(es) clipped to their image" if st["clipped"] else "")
          + f"; boxes checked against their label lines: max error {st['max_roundtrip_error']:.1e}")
    return 0
