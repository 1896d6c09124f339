"""Built-in synthetic detection set: scikit-learn digits pasted onto scikit-image photos.

The set needs no download: digit glyphs come from ``sklearn.datasets.load_digits``
(8x8, 10 classes) and backgrounds from the photos/textures bundled with
``skimage.data``.  Generation is fully determined by the arguments of
:func:`make_synth` (one ``np.random.RandomState(seed)`` drives everything), so
the same call yields byte-identical ``annotations.json`` and identical pixels.

Layout written to ``out_dir``::

    annotations.json            COCO detection JSON (images carry a "split" key)
    images/<split>_<idx:05d>.jpg

Each box is the exact tight extent of the pasted digit's stroke mask (full
object extent, measured before later pastes occlude it).
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .boxes import aligned_iou_np, xyxy_to_xywh

logger = logging.getLogger(__name__)

GENERATOR = "ssddet.data.synth"
DATA_VERSION = "synth-v4"
SPLITS = ("train", "val", "test")
# Bundled with scikit-image (no pooch download needed). "text" and "page" (printed characters) are left out:
# glyph-like clutter that a detector of digits would rightly fire on.
BACKGROUND_NAMES = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass",
    "gravel", "moon", "coins", "clock", "immunohistochemistry",
)
MAX_PAIR_IOU = 0.3      # rejection threshold between pasted boxes
MIN_VISIBLE = 0.5       # every object keeps at least this fraction of its strokes
MAX_TRIES = 30          # placement attempts per object
STRETCH = 0.2           # independent +-20% stretch of width and height
JPEG_QUALITY = 90
HUE_JITTER = 0.02       # class_hues: digit c gets hue c/10 +- this
CLASS_HUE_BG = 0.5      # class_hues: background photos are dimmed by this factor


def _load_backgrounds(names=BACKGROUND_NAMES) -> list[tuple[str, np.ndarray]]:
    """Return ``(name, HxWx3 uint8)`` for every named bundled skimage image that loads offline."""
    import skimage.data

    out = []
    for name in names:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception as exc:  # missing file / would need a download
            logger.warning("skipping skimage background %r: %s", name, exc)
            continue
        if img.dtype != np.uint8:
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append((name, np.ascontiguousarray(img[:, :, :3])))
    if not out:
        raise RuntimeError("no scikit-image background could be loaded")
    return out


def _load_digits(per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return sklearn digit images as uint8 0..255 (N,8,8) and labels 0..9.

    ``per_class`` keeps, for each class, only the glyphs closest to the class mean (the most typical
    handwriting): the full 1797 include scrawls that even people misread at 8x8.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images, target = d.images, d.target.astype(np.int64)
    if per_class is not None:
        keep = []
        for c in range(10):
            idx = np.flatnonzero(target == c)
            dist = ((images[idx] - images[idx].mean(axis=0)) ** 2).sum(axis=(1, 2))
            keep.append(idx[np.argsort(dist, kind="stable")[:per_class]])
        keep = np.concatenate(keep)
        images, target = images[keep], target[keep]
    imgs = np.clip(images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return imgs, target


def _random_crop(rs: np.random.RandomState, bg: np.ndarray, size: tuple[int, int],
                 contrast: float = 1.0) -> np.ndarray:
    """Random crop of ``bg`` with the aspect ratio of ``size`` (W,H), resized to it, float [0,1].

    ``contrast`` < 1 pulls the crop towards its mean colour: busy textures then stay recognisable as
    backgrounds but no longer compete with the pasted digits' edges.
    """
    W, H = size
    bh, bw = bg.shape[:2]
    scale_max = min(bw / W, bh / H)
    scale = scale_max * rs.uniform(0.35, 1.0)
    cw, ch = max(1, int(round(W * scale))), max(1, int(round(H * scale)))
    x0 = rs.randint(0, bw - cw + 1)
    y0 = rs.randint(0, bh - ch + 1)
    crop = Image.fromarray(bg[y0:y0 + ch, x0:x0 + cw]).resize((W, H), Image.BILINEAR)
    arr = np.asarray(crop, dtype=np.float32) / 255.0
    if rs.rand() < 0.5:
        arr = arr[:, ::-1]
    if contrast != 1.0:
        arr = arr.mean(axis=(0, 1), keepdims=True) * (1.0 - contrast) + arr * contrast
    return arr


def _digit_mask(glyph: np.ndarray, w: int, h: int) -> np.ndarray:
    """Upscale an 8x8 glyph to ``h x w`` and turn it into an alpha mask.

    Nearest-neighbour upsampling keeps the glyph's 8x8 cell pattern crisp (smooth upsampling turns 8x8 digits
    into blobs whose classes a small detector cannot tell apart); a linear ramp between two intensity levels
    keeps the strokes and gives exact zeros outside them.
    """
    up = np.asarray(Image.fromarray(glyph).resize((w, h), Image.NEAREST), dtype=np.float32)
    return np.clip((up / 255.0 - 0.25) / 0.25, 0.0, 1.0)


def _contrast_colour(rs: np.random.RandomState, bg_lum: float) -> np.ndarray:
    """Saturated random RGB colour (float [0,1]) whose luminance differs from ``bg_lum``."""
    rgb = np.array(colorsys.hsv_to_rgb(rs.rand(), rs.uniform(0.75, 1.0), 1.0), dtype=np.float32)
    lum = float(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    if bg_lum > 0.55:  # bright background: darken to lum ~ bg_lum - 0.45
        rgb = rgb * max(0.05, bg_lum - 0.45) / lum
    elif lum - bg_lum < 0.4:  # dark background: lighten towards white
        t = min(1.0, (bg_lum + 0.4 - lum) / max(1e-6, 1.0 - lum))
        rgb = rgb + (1.0 - rgb) * t
    return np.clip(rgb, 0.0, 1.0)


def _propose(rs, glyph, size, min_digit, max_digit):
    """Draw one placement: returns ``(mask, window, box xyxy)`` or None if empty: the glyph's alpha mask, the
    canvas slices it covers (everything outside is alpha 0, so the compositing touches the window only) and
    its tight box."""
    W, H = size
    base = rs.uniform(min_digit, max_digit)
    w = int(round(min(base * rs.uniform(1 - STRETCH, 1 + STRETCH), 0.95 * W)))
    h = int(round(min(base * rs.uniform(1 - STRETCH, 1 + STRETCH), 0.95 * H)))
    x = rs.randint(0, W - w + 1)
    y = rs.randint(0, H - h + 1)
    m = _digit_mask(glyph, max(w, 2), max(h, 2))
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return None
    window = (slice(y, y + m.shape[0]), slice(x, x + m.shape[1]))
    box = (float(x + xs.min()), float(y + ys.min()), float(x + xs.max() + 1), float(y + ys.max() + 1))
    return m, window, box


def _accept(mask, window, box, placed) -> bool:
    """True if a proposal keeps pairwise IoU <= MAX_PAIR_IOU and every earlier object visible enough."""
    if placed and aligned_iou_np(box, [p["box"] for p in placed]).max() > MAX_PAIR_IOU:
        return False
    cover = mask > 0.5
    return all(p["count"] - (p["visible"][window] & cover).sum() >= MIN_VISIBLE * p["full"] for p in placed)


def _compose_image(rs, backgrounds, digits, labels, size, n_range, digit_range, contrast=1.0,
                   class_hues=False):
    """Render one image; returns ``(HxWx3 uint8, [(label, box_xyxy, visible_fraction), ...])``."""
    canvas = np.array(_random_crop(rs, backgrounds[rs.randint(len(backgrounds))][1], size, contrast))  # own copy
    if class_hues:  # dim the photo so bright digits of any hue stand out without washing the hue to white
        canvas = canvas * CLASS_HUE_BG
    n_obj = rs.randint(n_range[0], n_range[1] + 1)
    placed: list[dict] = []
    for _ in range(n_obj):
        idx = rs.randint(len(digits))
        for _ in range(MAX_TRIES):
            prop = _propose(rs, digits[idx], size, *digit_range)
            if prop is not None and _accept(*prop, placed):
                break
        else:
            continue  # could not place this object without violating the caps
        mask, window, box = prop
        cover = mask > 0.5
        for p in placed:
            p["count"] -= int((p["visible"][window] & cover).sum())  # its visible pixels, kept as a count
            p["visible"][window] &= ~cover
        if class_hues:
            hue = (labels[idx] / 10.0 + rs.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
            colour = np.array(colorsys.hsv_to_rgb(hue, rs.uniform(0.6, 0.9), 1.0), dtype=np.float32)
        else:
            x0, y0, x1, y1 = (int(v) for v in box)
            colour = _contrast_colour(rs, float(canvas[y0:y1, x0:x1].mean()))
        a = mask[:, :, None]  # alpha is 0 outside the window: the pixels there stay as they are, exactly
        canvas[window] = canvas[window] * (1.0 - a) + colour[None, None, :] * a
        vis = np.zeros(canvas.shape[:2], dtype=bool)
        vis[window] = mask > 0
        full = int(vis.sum())
        placed.append({"label": int(labels[idx]), "box": box, "visible": vis, "full": full, "count": full})
    img = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    objs = [(p["label"], p["box"], p["count"] / p["full"]) for p in placed]
    return img, objs


def _coco_skeleton(seed: int, params: dict, bg_names: list[str]) -> dict:
    """COCO dict with ``info`` and ``categories`` filled in, empty images/annotations."""
    from .._version import __version__

    info = {
        "description": "ssddet synthetic digits-on-photos detection set",
        "generator": GENERATOR,
        "data_version": DATA_VERSION,
        "seed": seed,
        "version": __version__,
        "params": params,
        "backgrounds": bg_names,
    }
    cats = [{"id": i + 1, "name": str(i), "supercategory": "digit"} for i in range(10)]
    return {"info": info, "images": [], "annotations": [], "categories": cats}


def make_synth(
    out_dir,
    *,
    seed: int = 0,
    num_train: int = 200,
    num_val: int = 50,
    num_test: int = 50,
    image_size: tuple[int, int] = (320, 320),
    min_objects: int = 4,
    max_objects: int = 10,
    min_digit: int = 48,
    max_digit: int = 112,
    background_contrast: float = 0.4,
    backgrounds: tuple[str, ...] = BACKGROUND_NAMES,
    glyphs_per_class: int | None = None,
    class_hues: bool = True,
) -> Path:
    """Generate the synthetic set into ``out_dir`` and return the path of ``annotations.json``.

    ``image_size`` is ``(width, height)``.  Digits are ``min_digit..max_digit``
    pixels (before a +-20% independent stretch of each side, capped at 95% of
    the image); pasted boxes overlap with IoU <= 0.3 and every object keeps at
    least half of its stroke pixels visible.  If a placement satisfying these
    caps is not found in 30 tries the object is dropped, so an image can hold
    fewer than ``min_objects`` objects (never fewer than one).

    The defaults are sized so a from-scratch mobilenet_v3 Faster R-CNN at 320 px learns the set within a few
    CPU-minutes (docs/benchmarks.md, the built-in set from scratch): 320 px images so nothing is resampled,
    several large digits per image so each of the 10 classes gets examples every step,
    ``background_contrast`` 0.4 to calm busy photos and ``class_hues`` (digit c is drawn in hue c/10 +- 0.02
    on a dimmed photo) so the class is learnable from colour and shape while the box still has to come from
    the glyph's exact extent. ``glyphs_per_class`` keeps only the most typical glyphs of each class.
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError("need 1 <= min_objects <= max_objects")
    if not 2 <= min_digit <= max_digit:
        raise ValueError("need 2 <= min_digit <= max_digit")
    size = (int(image_size[0]), int(image_size[1]))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(seed)
    bgs = _load_backgrounds(backgrounds)
    digits, labels = _load_digits(glyphs_per_class)
    params = {
        "num_train": num_train, "num_val": num_val, "num_test": num_test,
        "image_size": list(size), "min_objects": min_objects, "max_objects": max_objects,
        "min_digit": min_digit, "max_digit": max_digit, "background_contrast": background_contrast,
        "glyphs_per_class": glyphs_per_class, "class_hues": class_hues,
    }
    coco = _coco_skeleton(seed, params, [n for n, _ in bgs])
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split in SPLITS:
        for i in range(counts[split]):
            img, objs = _compose_image(rs, bgs, digits, labels, size, (min_objects, max_objects),
                                       (min_digit, max_digit), background_contrast, class_hues)
            _append_image(coco, out, split, i, img, objs)
    path = out / "annotations.json"
    path.write_text(json.dumps(coco, indent=1))
    return path


def _append_image(coco: dict, out: Path, split: str, idx: int, img: np.ndarray, objs) -> None:
    """Save one JPEG and add its image and annotation entries to ``coco``."""
    rel = f"images/{split}_{idx:05d}.jpg"
    Image.fromarray(img).save(out / rel, quality=JPEG_QUALITY)
    image_id = len(coco["images"]) + 1
    h, w = img.shape[:2]
    coco["images"].append({"id": image_id, "file_name": rel, "width": w, "height": h, "split": split})
    for label, box, visible in objs:
        bbox = [float(v) for v in xyxy_to_xywh(box)]
        coco["annotations"].append({
            "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": label + 1,
            "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
            "visible_fraction": round(float(visible), 4),
        })


def default_data_dir() -> Path:
    """Directory of the default synthetic set: ``$SSDDET_HOME`` (or ``~/.cache/ssddet``) / ``synth-v4``."""
    home = os.environ.get("SSDDET_HOME")
    root = Path(home).expanduser() if home else Path.home() / ".cache" / "ssddet"
    return root / DATA_VERSION


def ensure_default_data(path=None, **kwargs) -> Path:
    """Return a directory holding a complete synthetic set, generating it if needed.

    ``path`` defaults to :func:`default_data_dir`.  A set counts as complete once
    ``annotations.json`` exists; generation happens in a sibling temp directory
    renamed into place at the end, so an interrupted run never leaves a
    half-written set at ``path``.  ``kwargs`` are forwarded to :func:`make_synth`.
    """
    path = Path(path) if path is not None else default_data_dir()
    if (path / "annotations.json").is_file():
        return path
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists, is not empty and has no annotations.json; remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        logger.info("generating synthetic detection set in %s", path)
        make_synth(tmp, **kwargs)
        _move_into_place(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _move_into_place(tmp: Path, path: Path) -> None:
    """Atomically rename ``tmp`` to ``path``; tolerate a concurrent generator winning the race."""
    try:
        if path.exists():
            path.rmdir()  # only succeeds for an empty directory
        os.replace(tmp, path)
    except OSError:
        if not (path / "annotations.json").is_file():
            raise
