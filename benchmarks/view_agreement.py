"""How much a trained SSD-Det refiner's box for one object depends on the view: refine every object of the first
--images training images twice, as loaded and horizontally flipped, with the same weights, and compare.

    python benchmarks/view_agreement.py --checkpoint runs/RUN/checkpoint.pt [--images 60] [--json OUT]

The run must have known true boxes (noise injected with --noise, or a JSON with `true_bbox`). Prints and writes
mean IoU between the two views' boxes, each view's IoU with the true box, the IoU of their average, and of the
noisy box; "frac_below_0.8" is the share of objects under 0.8. SSD-Det's detector trains on one view per visit
(the flip is random), so the views' disagreement is how far its target for an object moves between visits even
when the refiner's weights stand still (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ssddet.data.boxes import aligned_iou
from ssddet.data.dataset import load_image, record_target, training_records
from ssddet.data.splits import load_train_val
from ssddet.engine.refine import load_refiner_method, mirror_features, mirror_refine


@torch.no_grad()
def both_views(method, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
    """-> (refined in the image, refined in its mirror image and mapped back: Tensor[M, 4] each, the resized
    frame; the resize factors Tensor[4])."""
    images, targets = method.detector.transform([image], [{"boxes": boxes, "labels": labels}])
    size, resized = images.image_sizes[0], targets[0]["boxes"]
    plain = method.refiner(method.detector.backbone(images.tensors), [size], [resized], [labels]).refined[0]
    mirrored = mirror_refine(method, mirror_features(method, image), size, resized, labels)
    (h1, w1), (h0, w0) = size, image.shape[-2:]
    return plain, mirrored, torch.tensor([w1 / w0, h1 / h0, w1 / w0, h1 / h0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    method, cfg, _ = load_refiner_method(args.checkpoint, torch.device("cpu"))
    method.refiner.cfg.max_objects_per_image = 0  # every object of the image
    splits = load_train_val(cfg.data)
    records = training_records(splits.train_records, False, "train")[: args.images]
    ious: dict[str, list[torch.Tensor]] = {k: [] for k in ("views", "plain_true", "flipped_true", "average_true",
                                                          "noisy_true")}
    for rec in records:
        image, sx, sy = load_image(rec)
        t = record_target(rec, sx, sy)
        if "true_boxes" not in t:
            raise SystemExit(f"{args.checkpoint}: the run's training boxes have no true boxes to compare with")
        a, b, scale = both_views(method, image, t["boxes"], t["labels"])
        true, noisy = t["true_boxes"] * scale, t["boxes"] * scale
        for key, x, y in (("views", a, b), ("plain_true", a, true), ("flipped_true", b, true),
                          ("average_true", (a + b) / 2, true), ("noisy_true", noisy, true)):
            ious[key].append(aligned_iou(x, y))
    out = {"checkpoint": args.checkpoint, "images": len(records), "objects": int(sum(len(x) for x in ious["views"]))}
    for key, parts in ious.items():
        v = torch.cat(parts)
        out[key] = {"mean_iou": round(float(v.mean()), 4), "frac_below_0.8": round(float((v < 0.8).float().mean()), 4)}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
