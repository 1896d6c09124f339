"""`ssddet export`: the deployed detector to ONNX, checked with onnxruntime against PyTorch (the work:
engine/export.py); prints the measured differences and the tolerance, exits 1 beyond it."""
from __future__ import annotations

import inspect
from pathlib import Path


def add_export_parser(sub) -> None:
    from ..api import export_onnx

    dflt = {k: v.default for k, v in inspect.signature(export_onnx).parameters.items()}
    p = sub.add_parser("export", help="export the trained detector to ONNX (checked with onnxruntime)")
    p.add_argument("--checkpoint", required=True, metavar="PT", help="model_best.pt / model_final.pt / "
                   "checkpoint.pt")
    p.add_argument("--out", required=True, metavar="ONNX", help="output file, e.g. model.onnx")
    p.add_argument("--image", metavar="FILE", help="image the ONNX outputs are checked on (default: scikit-image's "
                   "bundled 'coffee' photo); a second check runs on its transposed copy (another size)")
    p.add_argument("--opset", type=int, default=dflt["opset"], help=f"ONNX opset (>= 11; default: {dflt['opset']})")
    p.add_argument("--box-atol", type=float, default=dflt["box_atol"],
                   help=f"box tolerance in px (default: {dflt['box_atol']})")
    p.add_argument("--score-atol", type=float, default=dflt["score_atol"],
                   help=f"score tolerance (default: {dflt['score_atol']})")


def cmd_export(a) -> int:
    from ..api import export_onnx

    rep = export_onnx(a.checkpoint, a.out, image=a.image, opset=a.opset, box_atol=a.box_atol,
                      score_atol=a.score_atol)
    print(format_report(rep))
    return 0 if rep["ok"] else 1


def format_report(rep: dict) -> str:
    """`export_onnx`'s report as the command prints it: the file, each check's differences, the verdict."""
    lines = [f"wrote {rep['out']} ({Path(rep['out']).stat().st_size / 2**20:.1f} MiB)"]
    for c in rep["checks"]:
        lines.append(f"onnxruntime vs PyTorch on a {c['size'][0]}x{c['size'][1]} image: {c['detections']} "
                     f"detections, max |Δbox| = {c['max_box_diff']:.2e} px, max |Δscore| = {c['max_score_diff']:.2e}"
                     + (f", {c['count_diff']:+d} detections" if c["count_diff"] else ""))
    lines.append(f"tolerance: {rep['box_atol']} px, {rep['score_atol']} score: "
                 + ("OK" if rep["ok"] else "FAILED (outputs differ more than the tolerance)"))
    return "\n".join(lines)
