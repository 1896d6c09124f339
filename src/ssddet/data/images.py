"""Reading image files, the one way every command does it.

- Decoded in full when read: a JPEG cut short (an interrupted copy) has an intact header, so opening it succeeds
  and only decoding fails; `ssddet check` decodes every image the same way, so it finds what training would meet.
- EXIF orientation applied (`ImageOps.exif_transpose`): phones store the sensor's frame plus a rotation tag, and
  labelling tools show, and box, the rotated picture. Sizes read from headers (`image_size`) are rotated too.
- Any mode (grey, palette, RGBA, CMYK, 16-bit, float) converted to 8-bit RGB (`to_rgb8`).

An unreadable file raises `UnreadableImage`. What a command then does is `data.on_bad_image` (`BadImages`): skip
the image with a warning and a count, or stop with one line. `ImageFile.LOAD_TRUNCATED_IMAGES` stays off: it
would fill the missing part with grey and train on it silently.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..config import ON_BAD_IMAGE
from ..errors import UserError

log = logging.getLogger(__name__)

ORIENTATION = 0x0112  # the EXIF tag
TRANSPOSED = (5, 6, 7, 8)  # orientations whose display swaps width and height
# what PIL raises on bad files (UnidentifiedImageError and "image file is truncated" are OSErrors)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
STOP_HINT = "--on-bad-image skip: skip unreadable images with a warning"  # ends a "stop" error
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class UnreadableImage(UserError):
    """An image file that cannot be read. A Dataset returns it instead of raising it: returned, it crosses the
    DataLoader's worker boundary as a value, and the main process applies `data.on_bad_image` (raised in a
    worker, it would reach the user under the worker's "Original Traceback")."""

    def __init__(self, path, image_id: int | None = None, reason: str = "unreadable"):
        where = f" (image id {image_id})" if image_id is not None else ""
        super().__init__(f"{path}: cannot read image{where}: {reason}")
        self.path, self.image_id, self.reason = str(path), image_id, reason

    def __reduce__(self):  # pickled by its fields (a worker sends it to the main process)
        return type(self), (self.path, self.image_id, self.reason)


@contextmanager
def decoded(path: str | Path, image_id: int | None = None) -> Iterator[tuple[Image.Image, tuple[int, int]]]:
    """-> (the PIL image decoded in full and EXIF-rotated, the (width, height) stored in the file), valid inside
    the block only (a closed PIL image has no pixels). Raises UnreadableImage."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not in a worker half-way through an epoch
            stored = im.size
            ImageOps.exif_transpose(im, in_place=True)
            yield im, stored
    except UnreadableImage:
        raise
    except FileNotFoundError:
        raise UnreadableImage(path, image_id, "file not found") from None
    except DECODE_ERRORS as e:
        raise UnreadableImage(path, image_id, str(e) or type(e).__name__) from None


def _to_8bit(a: np.ndarray, mode: str) -> np.ndarray:
    """Single-channel 16-bit / 32-bit / float pixels -> uint8. 16-bit modes are divided by 257 (65535 -> 255,
    so brightness matches an 8-bit export of the same picture), and so is 32-bit integer data above 255 (how
    some Pillow versions open 16-bit PNGs); float data in [0, 1] is scaled by 255; anything else outside
    [0, 255] is min-max stretched (the only mapping that shows it at all)."""
    a = a.astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if mode.startswith("I;16") or (mode == "I" and 255.0 < hi <= 65535.0 and lo >= 0.0):
        out = a / 257.0
    elif mode == "F" and 0.0 <= lo and hi <= 1.0:
        out = a * 255.0
    elif 0.0 <= lo and hi <= 255.0:
        out = a
    else:
        out = (a - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.nan_to_num(out), 0, 255).round().astype(np.uint8)


def to_rgb8(im: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> uint8[H, W, 3]. Transparent pixels are composited onto white (dropping the
    alpha channel would show whatever colour the transparent pixels happen to store)."""
    if im.mode in HIGH_DEPTH_MODES:
        return np.repeat(_to_8bit(np.asarray(im), im.mode)[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)


def read_rgb(path: str | Path, image_id: int | None = None) -> torch.Tensor:
    """uint8 Tensor[3, H, W] of an image file, decoded in full and EXIF-rotated (H, W: the rotated size).
    Raises UnreadableImage."""
    with decoded(path, image_id) as (im, _):
        arr = to_rgb8(im)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


MAX_ASPECT = 16  # long side : short side a detector input may have (`pad_to_aspect`)


def pad_to_aspect(image: torch.Tensor, max_aspect: float = MAX_ASPECT) -> torch.Tensor:
    """Tensor[C, H, W] -> Tensor[C, H', W'] with zeros added below or to the right so that the long side is at most
    `max_aspect` times the short one (the pixel frame is unchanged: boxes need no shift). The detector's resize
    scales the long side down to `max_size`, and a 2000x3 strip would come out 0 px high and stop the run."""
    h, w = image.shape[-2:]
    short = max(math.ceil(max(h, w) / max_aspect), 1)
    if min(h, w) >= short:
        return image
    return F.pad(image, (0, max(short - w, 0), 0, max(short - h, 0)))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as every command sees it (EXIF orientation applied), from the header alone.
    Raises UnreadableImage."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if im.getexif().get(ORIENTATION, 1) in TRANSPOSED else (w, h)
    except FileNotFoundError:
        raise UnreadableImage(path, reason="file not found") from None
    except DECODE_ERRORS as e:
        raise UnreadableImage(path, reason=str(e) or type(e).__name__) from None


def check_policy(policy: str) -> str:
    """`policy` if it is one of ON_BAD_IMAGE, else a UserError."""
    if policy not in ON_BAD_IMAGE:
        raise UserError(f"data.on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {policy!r}")
    return policy


class BadImages:
    """A command's unreadable images under `data.on_bad_image`: "stop" raises a one-line UserError; "skip" logs a
    warning once per file and counts every skip (`count`; a file met every epoch counts every epoch)."""

    def __init__(self, policy: str = "skip"):
        self.policy = check_policy(policy)
        self.count = 0
        self.files: dict[str, str] = {}  # path -> why it cannot be read, in the order met

    def add(self, err: UnreadableImage) -> None:
        if self.policy == "stop":
            raise UserError(f"{err} ({STOP_HINT})")
        self.count += 1
        if err.path not in self.files:
            self.files[err.path] = err.reason
            log.warning("%s; skipped (`ssddet check` lists every unreadable image)", err)

    def take(self, batch) -> tuple[tuple, tuple]:
        """A loader batch (`dataset.Batch`) -> (images, targets) of its readable images, its unreadable ones
        handled here, in the main process."""
        for err in getattr(batch, "bad", ()):
            self.add(err)
        return batch[0], batch[1]

    def example(self) -> str:
        """The first unreadable file met and why ("" if none)."""
        first = next(iter(self.files), None)
        return f"{first} ({self.files[first]})" if first else ""
