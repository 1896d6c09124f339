"""The noise simulator as the commands apply it (`ssddet noise`, `train --noise`, `ssddet.noise`): OA-MIL box noise
(`noise.py`) and the label errors (`label_noise.py`) on one COCO dict, the evaluation split untouched. It is the
one module that knows both, so neither of them imports the other's caller."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ..errors import UserError
from .label_noise import apply_label_plan, plan_label_noise
from .noise import _is_size, add_box_noise, check_noise_input, fill_image_sizes, split_image_ids


def noisy_copy(raw: dict, level: float | None, seed: int, root: str | Path, split: str | None = None,
               src: str = "<dict>", *, fraction: float = 1.0, missing: float = 0.0, spurious: float = 0.0,
               swap: float = 0.0) -> tuple[dict, np.ndarray]:
    """`add_box_noise` and the label errors of `label_noise.add_label_noise`, as both `train --noise` and `ssddet
    noise` apply them: width/height missing from the JSON are read from the image files under `root` (as the
    loader does), and only the images of `split` are touched (None: all; the others are copied unchanged and
    consume no draws). `level` None: no box noise (the label errors only). The label errors are drawn from the
    clean input, so box noise and each kind of error are independent of one another.

    Returns (noisy COCO dict, with the image sizes filled in; IoU of each perturbed box with its clean box)."""
    check_noise_input(raw, src)
    raw = fill_image_sizes(raw, Path(root))
    ids = None if split is None else split_image_ids(raw, split, src)
    for im in raw["images"]:
        if (ids is None or im.get("id") in ids) and not all(_is_size(im.get(k)) for k in ("width", "height")):
            raise UserError(f"{src}: image {im.get('id')} needs numeric width/height to add box noise: none in "
                            f"the JSON, and {Path(root) / str(im.get('file_name'))} cannot be read (image root: "
                            "--images DIR)")
    plan = plan_label_noise(raw, seed, ids, missing=missing, spurious=spurious, swap=swap, src=src)
    if level is None:
        noisy, ious = copy.deepcopy(raw), np.zeros(0)
    else:
        noisy, ious = add_box_noise(raw, level, seed, ids, src=src, fraction=fraction)
    return apply_label_plan(noisy, plan, mark_noised=level is not None and fraction < 1), ious
