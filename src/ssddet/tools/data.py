"""`ssddet data`: dataset sub-commands (synth: build the built-in synthetic set; voc2coco: convert Pascal VOC;
yolo2coco: convert YOLO-txt, `tools/yolo2coco.py`)."""
from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from ..errors import UserError
from .yolo2coco import add_yolo2coco_parser, cmd_yolo2coco


def add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="datasets: build the synthetic set, convert Pascal VOC or YOLO-txt")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="generate the built-in synthetic digits set",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--out", metavar="DIR", help="output directory (default: the built-in data location)")
    s.add_argument("--seed", type=int, default=0, help="generator seed")
    # make_synth's own defaults, so `ssddet data synth` writes exactly the set `ssddet train` generates
    from ..data.synth import make_synth

    dflt = {k: v.default for k, v in inspect.signature(make_synth).parameters.items()}
    s.add_argument("--num-train", type=int, default=dflt["num_train"], help="training images")
    s.add_argument("--num-val", type=int, default=dflt["num_val"], help="validation images")
    s.add_argument("--num-test", type=int, default=dflt["num_test"], help="test images")
    v = dsub.add_parser("voc2coco", help="Pascal VOC XML folders -> COCO JSON with splits from ImageSets/Main",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    v.add_argument("--voc-root", required=True, metavar="DIR", help="folder with Annotations/, JPEGImages/, "
                   "ImageSets/Main/")
    v.add_argument("--out", required=True, metavar="JSON", help="output COCO JSON")
    v.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="ImageSets/Main lists to read")
    add_yolo2coco_parser(dsub)


def cmd_data(a) -> int:
    if a.data_cmd == "yolo2coco":
        return cmd_yolo2coco(a)
    if a.data_cmd == "synth":
        from ..data.synth import default_data_dir, make_synth

        out = Path(a.out) if a.out else default_data_dir()
        path = make_synth(out, seed=a.seed, num_train=a.num_train, num_val=a.num_val, num_test=a.num_test)
        print(f"wrote {path}")
    else:
        from ..data.voc import voc2coco

        try:
            d = voc2coco(a.voc_root, a.out, splits=tuple(a.splits))
        except (ValueError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
        print(f"wrote {a.out}: {len(d['images'])} images, {len(d['annotations'])} boxes, "
              f"{len(d['categories'])} categories")
    return 0
