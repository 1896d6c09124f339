"""`ssddet export`: the deployed detector (a torchvision FasterRCNN) to ONNX, checked with onnxruntime against
PyTorch on an image, with the measured differences and the tolerance printed.

Exporter: torch.onnx's TorchScript-based exporter (`dynamo=False`), the path torchvision documents and tests
for its detection models (opset 11+; default here 17). The torch.export-based exporter (PyTorch's default
since 2.9) needs onnxscript, which this project does not install.

The ONNX model takes one image, float32 [3, H, W] RGB in [0, 1], of any size (dynamic H and W), and returns
boxes float32 [N, 4] (xyxy, in the input's pixels), labels int64 [N] (1..K: see the `categories` metadata,
label k is the k-th category) and scores float32 [N], exactly as the PyTorch model's eval-mode output.

One change to the traced graph: torchvision's resize computes the scale in float32 when traced, so for some
sizes (110 x 110 -> 319 instead of 320 px at min_size 320) the ONNX model would resize to one pixel less than
PyTorch does. `_onnx_resize` computes the output size in float64, as eager PyTorch does, and resizes to it."""
from __future__ import annotations

import copy
import json
import logging
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import UserError

log = logging.getLogger(__name__)


def _onnx_resize(self, image: torch.Tensor, target=None):
    """GeneralizedRCNNTransform.resize (eval mode) with the output size computed in float64, as eager PyTorch
    computes it (floor(side * scale)), then resized to that size. 1-element tensors, not 0-dim ones: the
    exporter casts 0-dim tensors to float32 as it does Python scalars."""
    hw = torch.onnx.operators.shape_as_tensor(image)[-2:].to(torch.float64)
    lim = torch.tensor([float(self.min_size[-1]), float(self.max_size)], dtype=torch.float64)
    scale = (lim / torch.stack([hw.min(), hw.max()])).min(dim=0, keepdim=True).values
    size = torch.floor(hw * scale).to(torch.int64)
    image = F.interpolate(image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False)[0]
    return image, target


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxruntime: pip install 'ssddet[export]'") from None
    return onnx, onnxruntime


def export_detector(detector, path: str | Path, example: torch.Tensor, meta: dict, opset: int = 17) -> Path:
    """Trace `detector` (eval mode, CPU) on `example` (float Tensor[3, H, W]) -> ONNX file with dynamic H, W and
    detections, and the categories / input description in its metadata."""
    onnx, _ = _onnx_modules()
    if opset < 11:
        raise UserError(f"--opset {opset}: torchvision's detection models need opset 11 or later")
    model = copy.deepcopy(detector).cpu().eval()
    if model.transform.fixed_size is None:
        model.transform.resize = types.MethodType(_onnx_resize, model.transform)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # TracerWarnings about values frozen into the trace: torchvision's detection code is written for
        # this exporter, and `check` below compares the result on two image sizes
        warnings.simplefilter("ignore")
        torch.onnx.export(model, ([example],), str(path), opset_version=opset, dynamo=False,
                          input_names=["image"], output_names=["boxes", "labels", "scores"],
                          dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                                        "labels": {0: "detections"}, "scores": {0: "detections"}})
    m = onnx.load(str(path))
    info = {"categories": json.dumps(meta.get("categories") or []), "ssddet_version": str(meta.get("ssddet_version")),
            "input": "image: float32 [3, H, W] RGB in [0, 1]", "outputs": "boxes xyxy px, labels 1..K, scores"}
    for k, v in info.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))
    return path


def match_detections(ref: dict, got: dict) -> tuple[float, float, int]:
    """Compare two detection sets that may list near-tied detections in another order: each reference
    detection is paired with the unused one of the same label nearest in (box, score).
    -> (max |Δbox| px, max |Δscore|, count difference)."""
    rb, rs, rl = (np.asarray(ref[k], dtype=np.float64) for k in ("boxes", "scores", "labels"))
    gb, gs, gl = (np.asarray(got[k], dtype=np.float64) for k in ("boxes", "scores", "labels"))
    dbox, dscore, used = 0.0, 0.0, np.zeros(len(gs), dtype=bool)
    for i in np.argsort(-rs, kind="stable"):
        cost = np.abs(gb - rb[i]).max(axis=1, initial=0.0) + np.abs(gs - rs[i]) if len(gs) else np.zeros(0)
        cost = np.where((gl == rl[i]) & ~used, cost, np.inf)
        if not len(cost) or not np.isfinite(cost.min()):
            return float("inf"), float("inf"), len(gs) - len(rs)
        j = int(cost.argmin())
        used[j] = True
        dbox = max(dbox, float(np.abs(gb[j] - rb[i]).max()))
        dscore = max(dscore, float(abs(gs[j] - rs[i])))
    return dbox, dscore, len(gs) - len(rs)


@torch.no_grad()
def check(detector, path: str | Path, images: list[torch.Tensor], box_atol: float, score_atol: float) -> dict:
    """Run the ONNX file with onnxruntime (CPU) and `detector` on each float Tensor[3, H, W] -> report dict:
    per image size the max differences, and ok = every difference within tolerance, counts equal."""
    _, ort = _onnx_modules()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if next(detector.parameters()).device.type != "cpu":  # compare on CPU without moving the caller's model
        detector = copy.deepcopy(detector).cpu()
    detector.eval()
    checks = []
    for x in images:
        ref = {k: v.numpy() for k, v in detector([x])[0].items()}
        boxes, labels, scores = sess.run(None, {"image": x.numpy()})
        dbox, dscore, dcount = match_detections(ref, {"boxes": boxes, "labels": labels, "scores": scores})
        checks.append({"size": list(x.shape[-2:]), "detections": len(ref["scores"]), "max_box_diff": dbox,
                       "max_score_diff": dscore, "count_diff": dcount})
    ok = all(c["count_diff"] == 0 and c["max_box_diff"] <= box_atol and c["max_score_diff"] <= score_atol
             for c in checks)
    return {"out": str(path), "checks": checks, "box_atol": box_atol, "score_atol": score_atol, "ok": ok}


def check_images(image: str | Path | None) -> list[torch.Tensor]:
    """The check images: the given file (or scikit-image's bundled 'coffee' photo) and its transposed copy,
    float Tensor[3, H, W] in [0, 1]."""
    from ..data.images import UnreadableImage, read_rgb

    if image is None:
        from skimage import data

        x = torch.from_numpy(np.ascontiguousarray(data.coffee())).permute(2, 0, 1)
    else:
        try:
            x = read_rgb(image)
        except UnreadableImage as e:
            raise UserError(f"{image}: cannot read the check image ({e.reason})") from None
    x = x.float().div(255)
    return [x, x.transpose(1, 2).contiguous()]


