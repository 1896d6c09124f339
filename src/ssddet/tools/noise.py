"""`ssddet noise`: a noisy copy of a COCO file (OA-MIL protocol: `bbox` = noisy, `true_bbox` = clean), the same
generator as `ssddet train --noise LEVEL --noise-seed S`."""
from __future__ import annotations

import argparse

from ..config_overrides import noise_level
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
    p.add_argument("--out", metavar="JSON", help="output file (default: print the mean IoU only)")


def cmd_noise(a) -> int:
    from ..api import noise

    noisy = noise(a.ann, data=a.data, level=a.noise, seed=a.noise_seed, split=a.split, images=a.images, out=a.out)
    info = noisy["info"]["box_noise"]
    mean = info["mean_iou"] if info["mean_iou"] is not None else float("nan")
    print(f"noise level {a.noise} seed {a.noise_seed}: {info['boxes_perturbed']} boxes perturbed, "
          f"mean IoU(noisy, clean) = {mean:.4f}" + (f"\nwrote {a.out}" if a.out else ""))
    return 0
