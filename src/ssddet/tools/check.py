"""`ssddet check`: every dataset check up front and a summary (exit 2 when the set is unusable; with --strict, exit
1 when any annotation was dropped or changed on the way in, or any image cannot be decoded). Every image is decoded
in full, in threads (`--workers`). The checks: data/check.py."""
from __future__ import annotations

from .options import add_dataset_options


def add_check_parser(sub) -> None:
    p = sub.add_parser("check", help="validate a COCO dataset (annotations and image files) and summarise it")
    add_dataset_options(p, "COCO annotations")
    p.add_argument("--no-images", action="store_true", help="skip decoding every image file")
    p.add_argument("--workers", type=int, default=None, help="threads decoding images (default: min(8, CPUs))")
    p.add_argument("--strict", action="store_true", help="exit 1 (after the summary) if any annotation is "
                   "dropped, clipped or rescaled, has an unknown image/category id, a category has no box, or an "
                   "image cannot be decoded")


def cmd_check(a) -> int:
    from ..api import check

    text, status = check(a.ann, data=a.data, images=a.images, open_images=not a.no_images, strict=a.strict,
                         workers=a.workers)
    print(text)
    return status
