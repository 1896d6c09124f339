"""COCO results files (lists of detections): one entry checked the same way wherever a command reads one
(`ssddet eval --results`, `ssddet show --compare`)."""
from __future__ import annotations

from typing import Any

from ..errors import UserError
from .coco import finite_number


def detection_entry(src: Any, i: int, r: Any) -> tuple[list[float], float]:
    """Entry i of results file `src` -> (bbox [x, y, w, h] as floats, score; 1 when absent), or a UserError naming
    the entry when the bbox is not 4 finite numbers or the score not a finite number."""
    if not isinstance(r, dict):
        raise UserError(f"{src}: entry {i} is not a detection")
    bbox, score = r.get("bbox"), r.get("score", 1.0)
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(finite_number(v) is not None for v in bbox):
        raise UserError(f"{src}: entry {i} needs bbox [x, y, w, h] of 4 finite numbers, got {bbox!r}")
    if finite_number(score) is None:
        raise UserError(f"{src}: entry {i} has an invalid score {score!r}")
    return [float(v) for v in bbox], float(score)
