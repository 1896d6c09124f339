"""`ssddet eval`: COCO AP of a checkpoint (or of an existing COCO results file) on a dataset split."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..errors import UserError

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


def cmd_eval(a) -> int:
    from ..config import DataConfig
    from ..data.splits import load_split
    from ..engine.evaluate import coco_evaluate, format_metrics, load_results

    dcfg = DataConfig(data_dir=a.data, train_ann=a.train_ann, val_ann=a.val_ann, images=a.images,
                      num_workers=a.workers)
    if not a.checkpoint and not a.results:
        raise UserError("give --checkpoint (a trained model) or --results (a COCO results file)")
    data, records = load_split(dcfg, a.split)
    gt = data.gt_dict(records)
    if a.results:
        results = load_results(a.results, gt)
    else:
        results = _predict_checkpoint(a, data, records)
    metrics = coco_evaluate(gt, results)
    print(json.dumps(metrics, indent=2) if a.json else f"{a.split} ({len(records)} images): "
          f"{format_metrics(metrics)}")
    return 0


def _predict_checkpoint(a, data, records) -> list[dict]:
    from torch.utils.data import DataLoader

    from ..data.dataset import CocoDetection, collate
    from ..engine.device import resolve_device
    from ..engine.evaluate import predict
    from ..engine.inference import load_detector

    detector, meta = load_detector(a.checkpoint)
    cats = meta.get("categories")
    if cats and [c["id"] for c in cats] != [c["id"] for c in data.categories]:
        raise UserError(f"{a.checkpoint}: trained on category ids {[c['id'] for c in cats]}, but the dataset "
                        f"has {[c['id'] for c in data.categories]}")
    device = resolve_device(a.device)
    loader = DataLoader(CocoDetection(records), batch_size=a.batch_size, num_workers=a.workers, collate_fn=collate)
    results = predict(detector.to(device), loader, device, data.label_to_cat)
    if a.save_results:
        Path(a.save_results).write_text(json.dumps(results))
        log.info("wrote %d detections to %s", len(results), a.save_results)
    return results
