"""`ssddet data`: dataset sub-commands (synth: build the built-in synthetic set; voc2coco: convert Pascal VOC;
yolo2coco: convert YOLO-txt, `tools/yolo2coco.py`)."""
from __future__ import annotations

import argparse

from .yolo2coco import add_yolo2coco_parser, cmd_yolo2coco


def add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="datasets: build the synthetic set, convert Pascal VOC or YOLO-txt")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="generate the built-in synthetic digits set")
    s.add_argument("--out", metavar="DIR", help="output directory (default: the built-in data location)")
    s.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    # not given: the generator's own sizes, so that `ssddet data synth` writes exactly the set `ssddet train` uses
    s.add_argument("--num-train", type=int, help="training images (default: the built-in set's, 200)")
    s.add_argument("--num-val", type=int, help="validation images (default: the built-in set's, 50)")
    s.add_argument("--num-test", type=int, help="test images (default: the built-in set's, 50)")
    v = dsub.add_parser("voc2coco", help="Pascal VOC XML folders -> COCO JSON with splits from ImageSets/Main",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    v.add_argument("--voc-root", required=True, metavar="DIR", help="folder with Annotations/, JPEGImages/, "
                   "ImageSets/Main/")
    v.add_argument("--out", required=True, metavar="JSON", help="output COCO JSON")
    v.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="ImageSets/Main lists to read")
    add_yolo2coco_parser(dsub)


def cmd_data(a) -> int:
    from ..api import synth, voc2coco

    if a.data_cmd == "yolo2coco":
        return cmd_yolo2coco(a)
    if a.data_cmd == "synth":
        sizes = {k: getattr(a, k) for k in ("num_train", "num_val", "num_test") if getattr(a, k) is not None}
        print(f"wrote {synth(a.out, seed=a.seed, **sizes)}")
    else:
        d = voc2coco(a.voc_root, a.out, splits=a.splits)
        print(f"wrote {a.out}: {len(d['images'])} images, {len(d['annotations'])} boxes, "
              f"{len(d['categories'])} categories")
    return 0
