"""`ssddet check`: every dataset check up front and a summary (exit 2 when the set is unusable; with --strict, exit
1 when any annotation was dropped or changed on the way in). The checks: data/check.py."""
from __future__ import annotations

from .options import add_dataset_options


def add_check_parser(sub) -> None:
    p = sub.add_parser("check", help="validate a COCO dataset (annotations and image files) and summarise it")
    add_dataset_options(p, "COCO annotations")
    p.add_argument("--no-images", action="store_true", help="skip opening every image file")
    p.add_argument("--strict", action="store_true", help="exit 1 (after the summary) if any annotation is "
                   "dropped, clipped or rescaled, has an unknown image/category id, or a category has no box")


def cmd_check(a) -> int:
    from ..api import check

    text, status = check(a.ann, data=a.data, images=a.images, open_images=not a.no_images, strict=a.strict)
    print(text)
    return status
