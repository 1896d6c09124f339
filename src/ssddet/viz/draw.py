"""Drawing shared by `predict`, `show` and `audit`: read any image as 8-bit RGB (`data.images.read_rgb`), draw
labelled boxes (`torchvision.utils.draw_bounding_boxes`), add a legend strip, tile a contact sheet
(`torchvision.utils.make_grid`), write PNGs. Images are uint8 Tensor[3, H, W] throughout; boxes are xyxy in that
image's pixels."""
from __future__ import annotations

import inspect
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, make_grid

# reading images is data/images.py's (the same decoding and EXIF rotation as training); drawing code imports it here
from ..data.images import read_rgb, to_rgb8  # noqa: F401

# what `show`/`audit` draw, in these colours everywhere (colour-blind safe trio: green / vermillion / blue)
CLEAN, NOISY, REFINED = (0, 170, 60), (230, 60, 20), (30, 110, 255)
EXTRA_COLOURS = [(255, 170, 0), (200, 40, 200), (0, 190, 200), (140, 90, 30), (120, 120, 120)]
# predicted classes: matplotlib's tab10, one colour per class (label 1 -> first colour)
CLASS_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                 (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")
# white label text on a box-coloured patch, readable on any background (torchvision >= 0.20; older: plain text)
LABEL_STYLE = ({"fill_labels": True, "label_colors": "white"}
               if "fill_labels" in inspect.signature(draw_bounding_boxes).parameters else {})


@lru_cache(maxsize=1)
def font_path() -> str:
    """DejaVu Sans, which matplotlib ships (a scalable font: PIL's default bitmap font is unreadably small on
    large images)."""
    from matplotlib import font_manager

    return font_manager.findfont("DejaVu Sans")


def font_size(width: int, height: int) -> int:
    """Label text size that stays readable from thumbnails to 4k images."""
    return max(10, min(width, height) // 40)


def save_png(image: Tensor, path: str | Path) -> Path:
    """uint8 Tensor[3, H, W] -> PNG file (parent directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
    return path


def valid_boxes(boxes) -> Tensor:
    """Bool[N]: finite boxes with x2 > x1 and y2 > y1 (what draw_bounding_boxes accepts)."""
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    return torch.isfinite(b).all(dim=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])


def draw_boxes(image: Tensor, boxes, colour, labels: list[str] | None = None, width: int | None = None,
               fill: bool = False) -> Tensor:
    """Draw xyxy `boxes` (array-like [N, 4]) in one colour (an RGB tuple) or one colour per box (a list of
    tuples) on uint8 Tensor[3, H, W] -> the drawn copy. Invalid boxes (see `valid_boxes`) are not drawn."""
    h, w = image.shape[-2:]
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    # clipped to the last pixel: an edge outside the image cannot be seen, and a coordinate such as 1e30
    # overflows the integer pixel positions PIL draws with
    b = torch.stack([b[:, 0].clamp(0, w - 1), b[:, 1].clamp(0, h - 1), b[:, 2].clamp(0, w - 1),
                     b[:, 3].clamp(0, h - 1)], 1)
    ok = valid_boxes(b)
    if not ok.any():
        return image
    colours = colour if isinstance(colour, list) else [colour] * len(b)
    return draw_bounding_boxes(
        image, b[ok], labels=[labels[i] for i in ok.nonzero().flatten().tolist()] if labels else None,
        colors=[colours[i] for i in ok.nonzero().flatten().tolist()], fill=fill,
        width=width or max(1, min(w, h) // 250 + 1), font=font_path(), font_size=font_size(w, h),
        **(LABEL_STYLE if labels else {}))


def legend_height(width: int, height: int, n_entries: int) -> int:
    """Height in px of the legend strip `with_legend` adds under an image of this size: one row per entry."""
    size = font_size(width, height)
    return n_entries * int(size * 1.6) + size // 2


def with_legend(image: Tensor, entries: list[tuple[str, tuple[int, int, int]]]) -> Tensor:
    """uint8 Tensor[3, H, W] -> Tensor[3, H + legend_height, W]: a white strip below the image with a colour
    patch and a name per entry, one entry per row (text longer than the image is wide is cut)."""
    h, w = image.shape[-2:]
    size = font_size(w, h)
    strip = Image.new("RGB", (w, legend_height(w, h, len(entries))), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.truetype(font_path(), size)
    for r, (text, colour) in enumerate(entries):
        x, y = size // 2, size // 4 + r * int(size * 1.6)
        draw.rectangle([x, y + size // 4, x + size, y + size + size // 4], fill=colour)
        draw.text((x + int(1.4 * size), y), text, fill="black", font=font)
    legend = torch.from_numpy(np.asarray(strip, dtype=np.uint8).copy()).permute(2, 0, 1)
    return torch.cat([image, legend], dim=1)


def thumbnail(image: Tensor, width: int, height: int | None = None) -> Tensor:
    """uint8 Tensor[3, H, W] shrunk to fit a width x height box (default: a square; aspect kept, never
    enlarged), centred on white."""
    height = height or width
    h, w = image.shape[-2:]
    s = min(height / h, width / w, 1.0)
    im = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(im, ((width - im.width) // 2, (height - im.height) // 2))
    return torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy()).permute(2, 0, 1)


def tile_height(sizes: list[tuple[int, int]], tile: int = 384) -> int:
    """Tile height for images of these (width, height): `tile` x the median aspect (so 4:3 images are not
    padded to squares)."""
    return max(1, round(tile * float(np.median([h / w for w, h in sizes]))))


def contact_sheet(images: list[Tensor], tile: int = 384, padding: int = 6) -> Tensor:
    """Thumbnails of `images` (uint8 Tensor[3, H_i, W_i]) on a near-square grid -> uint8 Tensor[3, H, W]:
    ceil(sqrt(n)) columns of tile x tile_height px cells with `padding` px white gutters."""
    th = tile_height([(im.shape[-1], im.shape[-2]) for im in images], tile)
    ncol = math.ceil(math.sqrt(len(images)))
    return make_grid([thumbnail(im, tile, th) for im in images], nrow=ncol, padding=padding, pad_value=255)


def contact_sheet_size(n: int, tile_h: int, tile: int = 384, padding: int = 6) -> tuple[int, int]:
    """(width, height) in px of `contact_sheet` for n images and the given `tile_height`."""
    ncol = math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    return ncol * (tile + padding) + padding, nrow * (tile_h + padding) + padding
