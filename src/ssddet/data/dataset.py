"""torch Dataset over validated COCO records, in the (image, target) form torchvision detectors take."""
from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import UserError
from .coco import ImageRecord
from .transforms import RandomHorizontalFlip

log = logging.getLogger(__name__)


def load_image(rec: ImageRecord) -> tuple[torch.Tensor, float, float]:
    """Read an image as float Tensor[3, H, W] in [0, 1] (grey/RGBA/palette converted to RGB).

    Returns the x and y factors that map the JSON's pixel frame onto the file's, so a file whose size
    differs from the JSON's width/height still gets correctly placed boxes.
    """
    try:
        with Image.open(rec.path) as im:
            im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise UserError(f"{rec.path}: image file not found (image id {rec.image_id})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{rec.path}: cannot read image (image id {rec.image_id}): {e}") from None
    h, w = arr.shape[:2]
    sx, sy = w / rec.width, h / rec.height
    if (w, h) != (rec.width, rec.height):
        log.warning("%s: file is %dx%d but the JSON says %dx%d; boxes rescaled", rec.path, w, h,
                    rec.width, rec.height)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255), sx, sy


def record_target(rec: ImageRecord, sx: float = 1.0, sy: float = 1.0) -> dict:
    """Target dict: boxes Tensor[N,4] xyxy, labels Int64[N], image_id, ann_ids, true_boxes (if known)."""
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    target = {
        "boxes": torch.from_numpy(rec.boxes).float() * scale,
        "labels": torch.from_numpy(rec.labels),
        "image_id": rec.image_id,
        "ann_ids": torch.from_numpy(rec.ann_ids),
    }
    if rec.true_boxes is not None:
        target["true_boxes"] = torch.from_numpy(rec.true_boxes).float() * scale
    return target


class CocoDetection(Dataset):
    """Records -> (Tensor[3,H,W], target). `train=True` applies the random flip."""

    def __init__(self, records: list[ImageRecord], train: bool = False, flip: float = 0.5):
        self.records = records
        self.flip = RandomHorizontalFlip(flip) if train else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        rec = self.records[i]
        image, sx, sy = load_image(rec)
        target = record_target(rec, sx, sy)
        if self.flip is not None:
            image, target = self.flip(image, target)
        return image, target


def collate(batch):
    return tuple(zip(*batch))


def training_records(records: list[ImageRecord], keep_empty: bool, src: str) -> list[ImageRecord]:
    """Drop images without boxes (default, like mmdet's filter_empty_gt); fail if nothing is left."""
    kept = records if keep_empty else [r for r in records if len(r.boxes)]
    if len(kept) < len(records):
        log.info("%s: %d training image(s) without boxes skipped (use --keep-empty to keep them)",
                 src, len(records) - len(kept))
    if not kept:
        raise UserError(f"{src}: the training set is empty after filtering ({len(records)} images, none with "
                        "a usable box)")
    return kept
