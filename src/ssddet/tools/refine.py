"""`ssddet refine`: an SSD-Det run's refined boxes as COCO JSON, ready for re-training a plain detector on them
(the papers' "+FR"; the work: engine/refine.py), clipped to their image (counted)."""
from __future__ import annotations

from .options import DATA_HELP, IMAGES_HELP, add_hidden_alias, add_on_bad_image_option


def add_refine_parser(sub) -> None:
    p = sub.add_parser("refine", help="export an SSD-Det run's refined training boxes as COCO JSON")
    p.add_argument("--checkpoint", required=True, metavar="PT", help="the run's checkpoint.pt (holds the refiner)")
    p.add_argument("--out", required=True, metavar="JSON", help="output COCO JSON")
    p.add_argument("--ann", metavar="JSON", help="annotations to refine (default: the run's own dataset, with its "
                   "on-the-fly noise)")
    add_hidden_alias(p, "--train-ann", "ann", metavar="JSON")
    p.add_argument("--data", metavar="DIR", help=DATA_HELP + " (default: the run's)")
    p.add_argument("--images", metavar="DIR", help=IMAGES_HELP)
    p.add_argument("--split", help="split to refine (default: the run's training split)")
    p.add_argument("--all-splits", action="store_true", help="also write the other splits' images, unchanged "
                   "(default: only the refined split, so that training on the export never sees evaluation "
                   "images)")
    p.add_argument("--flip-average", action="store_true", help="refine each box in the image and in its mirror "
                   "image and write the mean of the two (twice the time; closer to the true boxes, "
                   "docs/cli.md)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    add_on_bad_image_option(p, "their boxes keep the input box")


def cmd_refine(a) -> int:
    from ..api import refine

    d = refine(a.checkpoint, out=a.out, data=a.data, ann=a.ann, images=a.images, split=a.split,
               all_splits=a.all_splits, device=a.device, on_bad_image=a.on_bad_image, flip_average=a.flip_average)
    info = d["info"]["ssddet_refine"]
    stats = info["stats"]
    msg = f"refined {stats['refined_boxes']} boxes of {info['images_refined']} images -> {a.out}"
    msg += f"\nclipped to their image: {stats['clipped_boxes']} refined box(es)"
    if stats["kept_input_boxes"]:
        msg += f"; {stats['kept_input_boxes']} outside it kept their input box"
    if stats["skipped_images"]:
        msg += f"\nskipped {stats['skipped_images']} unreadable image(s): their boxes keep the input box"
    if "iou_refined" in stats:
        msg += f"\nmean IoU with true_bbox: input {stats['iou_noisy']:.4f} -> refined {stats['iou_refined']:.4f}"
    if len(d["images"]) < info["images_in_source"]:
        msg += (f"\nwrote split '{info['split']}' only ({len(d['images'])} of {info['images_in_source']} images; "
                f"--all-splits keeps all): re-train with --train-ann {a.out} --val-ann <the dataset's JSON>")
    print(msg)
    return 0
