"""`ssddet eval`: COCO AP of a checkpoint (or of an existing COCO results file) on a dataset split."""
from __future__ import annotations

import argparse
import json
import logging

from ..config_overrides import add_on_bad_image_option

log = logging.getLogger("ssddet")


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="COCO AP of a checkpoint (or of an existing results file) on a split",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("dataset (default: the built-in synthetic set)")
    g.add_argument("--data", metavar="DIR", help="dataset directory: DIR/annotations.json + images, `split` field")
    g.add_argument("--train-ann", metavar="JSON", help="training annotations (COCO JSON)")
    g.add_argument("--val-ann", metavar="JSON", help="validation annotations (COCO JSON)")
    g.add_argument("--images", metavar="DIR", help="image root that file_name is relative to "
                   "(default: the directory of the JSON / --data)")
    p.add_argument("--checkpoint", metavar="PT", help="model_best.pt / model_final.pt / checkpoint.pt")
    p.add_argument("--results", metavar="JSON", help="score this COCO results file instead of running a model")
    p.add_argument("--split", default="val", help="split to evaluate (train | val | test | ...)")
    p.add_argument("--save-results", metavar="JSON", help="write the model's detections as COCO results")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_on_bad_image_option(p, "left out of the evaluation")


def cmd_eval(a) -> int:
    from ..api import _evaluate
    from ..engine.evaluate import format_metrics

    metrics, n, skipped = _evaluate(a.checkpoint, a.results, a.data, a.train_ann, a.val_ann, a.images, a.split,
                                    a.save_results, a.device, a.batch_size, a.workers, a.on_bad_image)
    left_out = f", {skipped} unreadable left out" if skipped else ""
    print(json.dumps(metrics, indent=2) if a.json else f"{a.split} ({n} images{left_out}): {format_metrics(metrics)}")
    return 0
