"""Rebuild a deployed detector from `model_best.pt` / `model_final.pt` (or a training `checkpoint.pt`)."""
from __future__ import annotations

from pathlib import Path

from torchvision.models.detection import FasterRCNN

from ..config import ModelConfig
from ..errors import UserError
from ..models.detector import build_trained_detector
from .checkpoint import load_checkpoint


def load_detector(path: str | Path) -> tuple[FasterRCNN, dict]:
    """-> (detector in eval mode, meta with categories/num_classes/model config)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ck = load_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - a corrupt/foreign file is a user error
        first = (str(e).splitlines() or [type(e).__name__])[0]  # not torch's multi-line weights_only advice
        raise UserError(f"{path}: cannot load checkpoint: not a torch.save file, or truncated or corrupt "
                        f"({first})") from None
    if not isinstance(ck, dict):
        ck = {}  # a tensor, a list, ...: not ours
    if "model" in ck and "meta" in ck:
        state, meta = ck["model"], ck["meta"]
    elif "method" in ck and "config" in ck and isinstance(ck["method"], dict):  # a training checkpoint
        state = {k.removeprefix("detector."): v for k, v in ck["method"].items() if k.startswith("detector.")}
        if "roi_heads.box_predictor.cls_score.weight" not in state:
            raise UserError(f"{path}: not an ssddet checkpoint (no detector weights in it)")
        meta = ck.get("meta") or _meta_from_training(ck, state)
    else:
        raise UserError(f"{path}: not an ssddet checkpoint (expected model_best.pt, model_final.pt or "
                        "checkpoint.pt)")
    if not (isinstance(meta, dict) and isinstance(meta.get("model"), dict) and isinstance(state, dict)
            and isinstance(meta.get("num_classes"), int)):
        raise UserError(f"{path}: not an ssddet checkpoint (its model weights or metadata are missing)")
    known = set(ModelConfig.__dataclass_fields__)
    mcfg = ModelConfig(**{k: v for k, v in meta["model"].items() if k in known})
    detector = build_trained_detector(mcfg, meta["num_classes"])
    try:
        detector.load_state_dict(state)
    except RuntimeError as e:  # e.g. a hand-edited meta, or weights of another architecture
        raise UserError(f"{path}: the weights do not fit the model its metadata describes "
                        f"({mcfg.backbone}, {meta['num_classes']} classes): {e}") from None
    if meta.get("box_coder") == "xyxy":
        from ..models.rcnn_head import XYXYBoxCoder

        detector.roi_heads.box_coder = XYXYBoxCoder()
    return detector.eval(), meta


def _meta_from_training(ck: dict, state: dict) -> dict:
    cfg = ck["config"]
    num_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    return {"model": cfg["model"], "num_classes": num_classes, "categories": ck.get("categories"),
            "box_coder": cfg.get("oamil", {}).get("box_coder", "xywh") if cfg["train"]["method"] == "oamil"
            else "xywh"}


def class_maps(meta: dict) -> tuple[dict[int, str], dict[int, int]]:
    """A checkpoint's meta -> ({label: class name}, {label: category id}) for labels 1..K. A checkpoint
    without categories (an old training checkpoint) gets names "class<label>" and category id = label."""
    cats = meta.get("categories") or [{"id": i, "name": f"class{i}"} for i in range(1, meta["num_classes"] + 1)]
    return ({i + 1: str(c.get("name", c["id"])) for i, c in enumerate(cats)},
            {i + 1: int(c["id"]) for i, c in enumerate(cats)})
