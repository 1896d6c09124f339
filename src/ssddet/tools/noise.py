"""`ssddet noise`: a noisy copy of a COCO file (OA-MIL protocol: `bbox` = noisy, `true_bbox` = clean), the same
generator as `ssddet train --noise LEVEL --noise-seed S`; optionally noise on a share of the boxes only, and label
errors (missing, spurious, class-swapped annotations) as `train --noise-missing/--noise-spurious/--noise-swap`."""
from __future__ import annotations

import argparse

from ..config_overrides import noise_level, noise_share
from .options import add_dataset_options, add_hidden_alias


def add_noise_parser(sub) -> None:
    p = sub.add_parser("noise", help="write a noisy copy of a COCO file (OA-MIL protocol; bbox=noisy, "
                       "true_bbox=clean)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_options(p, "clean COCO annotations", required=True)
    p.add_argument("--noise", type=noise_level, default=0.4, metavar="LEVEL", help="noise level in [0, 1), as "
                   "`train --noise`")
    add_hidden_alias(p, "--level", "noise", type=noise_level)
    p.add_argument("--noise-seed", type=int, default=45, metavar="S", help="seed (numpy's legacy RandomState, as the "
                   "official generator), as `train --noise-seed`")
    add_hidden_alias(p, "--seed", "noise_seed", type=int)
    p.add_argument("--split", help="only perturb images of this split (others are copied unchanged)")
    p.add_argument("--fraction", type=noise_share, default=1.0, metavar="F", help="perturb a seeded share F of the "
                   "boxes, the rest stay exact (each annotation then says `noised` true/false), as `train "
                   "--noise-fraction`")
    p.add_argument("--missing", type=noise_share, default=0.0, metavar="P", help="remove a share P of the "
                   "annotations (kept under the top-level `missing_annotations`), as `train --noise-missing`")
    p.add_argument("--spurious", type=noise_share, default=0.0, metavar="P", help="add round(P x annotations) boxes "
                   "on background with a random class (`spurious`: true), as `train --noise-spurious`")
    p.add_argument("--swap", type=noise_share, default=0.0, metavar="P", help="change the class of a share P of the "
                   "annotations (the old one kept as `true_category_id`), as `train --noise-swap`")
    p.add_argument("--out", metavar="JSON", help="output file (default: print the mean IoU only)")


def cmd_noise(a) -> int:
    from ..api import noise

    noisy = noise(a.ann, data=a.data, level=a.noise, seed=a.noise_seed, split=a.split, images=a.images, out=a.out,
                  fraction=a.fraction, missing=a.missing, spurious=a.spurious, swap=a.swap)
    info = noisy["info"]["box_noise"]
    mean = info["mean_iou"] if info["mean_iou"] is not None else float("nan")
    of = f" of {info['boxes_eligible']}" if "boxes_eligible" in info else ""
    print(f"noise level {a.noise} seed {a.noise_seed}: {info['boxes_perturbed']}{of} boxes perturbed, "
          f"mean IoU(noisy, clean) = {mean:.4f}" + _label_line(noisy["info"].get("label_noise"))
          + (f"\nwrote {a.out}" if a.out else ""))
    return 0


def _label_line(labels: dict | None) -> str:
    if not labels:
        return ""
    return (f"\nlabel noise: {labels['annotations_missing']} of {labels['annotations_eligible']} annotations "
            f"missing, {labels['annotations_swapped']} swapped, {labels['boxes_spurious']} spurious boxes added")
