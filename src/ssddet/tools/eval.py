"""`ssddet eval`: COCO AP of a checkpoint (or of an existing COCO results file) on a dataset split."""
from __future__ import annotations

import argparse
import json

from .options import DATA_HELP, IMAGES_HELP, add_on_bad_image_option, non_negative_int, positive_int


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="COCO AP of a checkpoint (or of an existing results file) on a split",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("dataset (default: the built-in synthetic set)")
    g.add_argument("--data", metavar="DIR", help=DATA_HELP + ", a `split` field per image")
    g.add_argument("--ann", metavar="JSON", help="one COCO file: its --split images (all of them without a `split` "
                   "field)")
    g.add_argument("--train-ann", metavar="JSON", help="training annotations (COCO JSON)")
    g.add_argument("--val-ann", metavar="JSON", help="validation annotations (COCO JSON)")
    g.add_argument("--images", metavar="DIR", help=IMAGES_HELP)
    p.add_argument("--checkpoint", metavar="PT", help="model_best.pt / model_final.pt / checkpoint.pt")
    p.add_argument("--results", metavar="JSON", help="score this COCO results file instead of running a model")
    p.add_argument("--split", default="val", help="split to evaluate (train | val | test | ...)")
    p.add_argument("--save-results", metavar="JSON", help="write the model's detections as COCO results")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=2, help="images per forward")
    p.add_argument("--workers", type=non_negative_int, default=2, help="data-loading worker processes")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_on_bad_image_option(p, "left out of the evaluation")


def cmd_eval(a) -> int:
    from ..api import evaluate, format_metrics

    m = evaluate(a.checkpoint, results=a.results, data=a.data, ann=a.ann, train_ann=a.train_ann, val_ann=a.val_ann,
                 images=a.images, split=a.split, save_results=a.save_results, device=a.device,
                 batch_size=a.batch_size, workers=a.workers, on_bad_image=a.on_bad_image)
    left_out = f", {m.skipped_images} unreadable left out" if m.skipped_images else ""
    print(json.dumps(m, indent=2) if a.json else f"{a.split} ({m.images} images{left_out}): {format_metrics(m)}")
    return 0
