"""`ssddet noise`: write a noisy copy of a COCO file (OA-MIL protocol: `bbox` = noisy, `true_bbox` = clean)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config_overrides import noise_level


def add_noise_parser(sub) -> None:
    p = sub.add_parser("noise", help="write a noisy copy of a COCO file (OA-MIL protocol; bbox=noisy, "
                       "true_bbox=clean)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ann", metavar="JSON", help="clean COCO annotations")
    src.add_argument("--data", metavar="DIR", help="dataset directory (DIR/annotations.json)")
    p.add_argument("--level", type=noise_level, default=0.4, help="noise level r in [0, 1)")
    p.add_argument("--seed", type=int, default=45, help="seed (legacy numpy RandomState, as the official code)")
    p.add_argument("--split", help="only perturb images of this split (others are copied unchanged)")
    p.add_argument("--images", metavar="DIR", help="image root that file_name is relative to, for the sizes of "
                   "images without width/height in the JSON (default: the directory of the JSON / --data)")
    p.add_argument("--out", metavar="JSON", help="output file (default: print the mean IoU only)")


def cmd_noise(a) -> int:
    import numpy as np

    from ..data.coco import read_json
    from ..data.noise import noisy_copy

    src = Path(a.ann) if a.ann else Path(a.data) / "annotations.json"
    root = Path(a.images) if a.images else src.parent
    noisy, ious = noisy_copy(read_json(src), a.level, a.seed, root, a.split, src=str(src))
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(noisy))
    mean = float(np.mean(ious)) if len(ious) else float("nan")
    print(f"noise level {a.level} seed {a.seed}: {len(ious)} boxes perturbed, mean IoU(noisy, clean) = {mean:.4f}"
          + (f"\nwrote {a.out}" if a.out else ""))
    return 0
