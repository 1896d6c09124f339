"""`ssddet predict`: a trained detector on image files and folders -> a COCO results JSON and one PNG per image
with the boxes drawn (the work: engine/predict.py)."""
from __future__ import annotations

from pathlib import Path

from ..api import RESULTS_NAME
from .options import add_on_bad_image_option, score_threshold


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="detect objects in image files/folders: COCO results JSON + one PNG per "
                       "image with the boxes drawn")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files and folders (folders are searched "
                   "recursively for image files)")
    p.add_argument("--checkpoint", required=True, metavar="PT", help="model_best.pt / model_final.pt / "
                   "checkpoint.pt of a run")
    p.add_argument("--out", required=True, metavar="DIR", help=f"output folder: {RESULTS_NAME} and one PNG per "
                   "image (named after the image, relative to its folder argument)")
    p.add_argument("--score", type=score_threshold, default=0.5, help="keep (and draw) detections scoring at "
                   "least this; 0 keeps all the model returns, e.g. for COCO evaluation (default: 0.5)")
    p.add_argument("--no-draw", action="store_true", help="write the JSON only")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    add_on_bad_image_option(p, "no detections, no PNG")


def cmd_predict(a) -> int:
    from ..api import predict

    dets = predict(a.checkpoint, a.inputs, out=a.out, score=a.score, device=a.device, draw=not a.no_draw,
                   on_bad_image=a.on_bad_image)
    print(f"{len(dets)} detections with score >= {a.score} -> {Path(a.out) / RESULTS_NAME}")
    return 0
