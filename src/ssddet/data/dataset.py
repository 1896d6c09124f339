"""torch Dataset over validated COCO records, in the (image, target) form torchvision detectors take."""
from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .coco import ImageRecord
from .images import UnreadableImage, pad_to_aspect, read_rgb
from .transforms import RandomHorizontalFlip

log = logging.getLogger(__name__)


def load_image(rec: ImageRecord) -> tuple[torch.Tensor, float, float]:
    """Read an image as float Tensor[3, H, W] in [0, 1] (decoded in full, EXIF-rotated, any mode as RGB:
    `images.read_rgb`). Raises UnreadableImage.

    Returns the x and y factors that map the JSON's pixel frame onto the file's, so a file whose size
    differs from the JSON's width/height still gets correctly placed boxes. A strip longer than 16:1 is padded
    below or to the right (`images.pad_to_aspect`).
    """
    image = read_rgb(rec.path, rec.image_id)
    h, w = image.shape[-2:]
    sx, sy = w / rec.width, h / rec.height
    if (w, h) != (rec.width, rec.height):
        log.warning("%s: file is %dx%d (EXIF orientation applied) but the JSON says %dx%d; boxes rescaled",
                    rec.path, w, h, rec.width, rec.height)
    return pad_to_aspect(image).float().div_(255), sx, sy


def record_target(rec: ImageRecord, sx: float = 1.0, sy: float = 1.0) -> dict:
    """Target dict: boxes Tensor[N,4] xyxy, labels Int64[N], image_id, ann_ids, true_boxes (if known), and
    file_scale, the (sx, sy) of `load_image` (a detection in the file's frame divided by it is in the JSON's)."""
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    target = {
        "boxes": torch.from_numpy(rec.boxes).float() * scale,
        "labels": torch.from_numpy(rec.labels),
        "image_id": rec.image_id,
        "ann_ids": torch.from_numpy(rec.ann_ids),
        "file_scale": (sx, sy),
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
        """-> (image, target), or the UnreadableImage of an unreadable file (returned, not raised: `collate`)."""
        rec = self.records[i]
        try:
            image, sx, sy = load_image(rec)
        except UnreadableImage as e:
            return e
        target = record_target(rec, sx, sy)
        if self.flip is not None:
            image, target = self.flip(image, target)
        return image, target


class Batch(tuple):
    """A collated batch: the pair (images, targets) of its readable images, which it unpacks as, plus `bad`, the
    UnreadableImage of each dropped one (for `images.BadImages.take` in the main process)."""

    def __new__(cls, pair, bad=()):
        self = super().__new__(cls, pair)
        self.bad = tuple(bad)
        return self

    def pin_memory(self) -> Batch:
        """What DataLoader(pin_memory=True) calls (its default would rebuild a plain tuple and lose `bad`)."""
        def pin(v):
            return v.pin_memory() if torch.is_tensor(v) else v

        images, targets = self
        return Batch((tuple(pin(im) for im in images), tuple({k: pin(v) for k, v in t.items()} for t in targets)),
                     self.bad)


def collate(items) -> Batch:
    """Dataset items -> Batch((images tuple, targets tuple), bad). Unreadable images are dropped here, in the
    worker; a batch of only unreadable images is ((), ())."""
    bad = [x for x in items if isinstance(x, UnreadableImage)]
    good = [x for x in items if not isinstance(x, UnreadableImage)]
    return Batch((tuple(x[0] for x in good), tuple(x[1] for x in good)), bad)


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
