"""`ssddet show`: the clean, noisy and refined boxes of the same images in distinct colours with a legend, one PNG
per image plus a contact sheet (the drawing: viz/show.py)."""
from __future__ import annotations

from .options import add_dataset_options, add_on_bad_image_option, positive_int, score_threshold


def add_show_parser(sub) -> None:
    p = sub.add_parser("show", help="draw clean / noisy / refined boxes of the same images (PNGs + contact sheet)")
    add_dataset_options(p, "annotations: a noisy copy (`ssddet noise`: bbox noisy, true_bbox clean) or a refine "
                        "export (bbox refined, noisy_bbox, true_bbox)", required=True)
    p.add_argument("--compare", nargs="+", default=[], metavar="JSON", help="more box sets to overlay: refine "
                   "exports (matched by annotation id) or COCO results lists (matched by image id)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--ids", nargs="+", type=int, metavar="ID", help="image ids to draw")
    p.add_argument("--n", type=positive_int, default=16, help="without --ids: this many images, evenly spread over the "
                   "file's images with boxes (those every --compare file covers) (default: 16)")
    p.add_argument("--split", help="only images of this split")
    p.add_argument("--score", type=score_threshold, default=0.5, help="lowest score drawn from a results list "
                   "(default: 0.5)")
    add_on_bad_image_option(p, "not drawn")


def cmd_show(a) -> int:
    from ..api import show

    paths = show(a.ann, data=a.data, images=a.images, compare=a.compare, out=a.out, ids=a.ids, n=a.n,
                 split=a.split, score=a.score, on_bad_image=a.on_bad_image)
    print(f"wrote {len(paths) - 1} image(s) and {paths[-1]}")
    return 0
