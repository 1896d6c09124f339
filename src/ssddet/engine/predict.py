"""`ssddet predict`: run a trained detector on image files and folders -> a COCO results JSON (each detection
keeps its image's file name) and one PNG per image, of the source size, with the boxes, class names and
scores drawn. Images of any size and mode are read (grey, palette, RGBA, CMYK, 16-bit; EXIF-rotated:
`data.images.read_rgb`); unreadable files are skipped with a counted warning (--on-bad-image stop: an error)."""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.boxes import xyxy_to_xywh
from ..data.images import STOP_HINT, UnreadableImage, check_policy, pad_to_aspect, read_rgb
from ..errors import UserError
from ..viz.draw import CLASS_COLOURS, IMAGE_SUFFIXES, draw_boxes, save_png

log = logging.getLogger(__name__)


@dataclass
class PredictStats:
    images: int = 0  # images run through the model
    seconds: float = 0.0  # model time (reading, drawing and writing excluded)
    skipped: Counter = field(default_factory=Counter)  # reason -> unreadable files
    examples: dict = field(default_factory=dict)  # reason -> first file

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def collect_images(inputs: list[str | Path]) -> list[tuple[Path, str, str]]:
    """Image files and folders -> [(path, name, png)] in argument order, each folder's images sorted. `name` is
    the path relative to its folder argument (a file argument: its file name), the results' `file_name`; `png`
    is the picture `predict` draws, relative to --out: `name` as .png, with a numeric suffix where two names
    would write the same PNG (a.jpg and a.png, or the same name from two folders)."""
    items: list[tuple[Path, str]] = []
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                log.warning("%s: no image files (%s) in this folder", p, ", ".join(IMAGE_SUFFIXES))
            items += [(f, f.relative_to(p).as_posix()) for f in found]
        elif p.is_file():
            items.append((p, p.name))
        else:
            raise UserError(f"{p}: no such file or folder")
    seen: Counter = Counter()
    out = []
    for path, name in items:
        png = png_name(name)
        seen[png] += 1
        if seen[png] > 1:
            png = Path(png).with_name(f"{Path(png).stem}_{seen[png]}.png").as_posix()
        out.append((path, name, png))
    return out


def png_name(name: str) -> str:
    """The PNG `predict` writes for image `name` (relative to --out)."""
    return Path(name).with_suffix(".png").as_posix()


def detection_records(out: dict, image_id: int, file_name: str, score: float,
                      label_to_cat: dict[int, int]) -> tuple[list[dict], torch.Tensor]:
    """One image's detector output -> (COCO results records with file_name, Bool[N] kept mask)."""
    keep = out["scores"] >= score
    boxes = xyxy_to_xywh(out["boxes"][keep].float().cpu().numpy())
    recs = [{"image_id": image_id, "file_name": file_name, "category_id": label_to_cat[int(lab)],
             "bbox": [round(float(v), 3) for v in box], "score": round(float(s), 5)}
            for box, s, lab in zip(boxes, out["scores"][keep].tolist(), out["labels"][keep].tolist())]
    return recs, keep


def draw_detections(image, out: dict, keep, names: dict[int, str]):
    """uint8 Tensor[3, H, W] + detector output -> the image with the kept boxes, class names and scores."""
    labels = out["labels"][keep].tolist()
    text = [f"{names[lab]} {s:.2f}" for lab, s in zip(labels, out["scores"][keep].tolist())]
    colours = [CLASS_COLOURS[(lab - 1) % len(CLASS_COLOURS)] for lab in labels]
    return draw_boxes(image, out["boxes"][keep].cpu(), colours, text)


@torch.no_grad()
def predict_images(detector, items: list[tuple[Path, str, str]], meta: dict, device: torch.device, score: float,
                   out_dir: Path | None = None, draw: bool = True, progress: bool = True,
                   on_bad_image: str = "skip") -> tuple[list[dict], PredictStats]:
    """Run `detector` (eval mode, on `device`) over `items` from `collect_images` -> (COCO results records,
    image ids 1..N in item order; stats). With `out_dir` and `draw`, writes each item's out_dir/png. A file that
    cannot be decoded is skipped and counted (on_bad_image "skip") or stops the run ("stop")."""
    from .inference import class_maps

    check_policy(on_bad_image)
    names, label_to_cat = class_maps(meta)
    detector.eval()
    results: list[dict] = []
    stats = PredictStats()
    with tqdm(items, desc="predict", disable=not progress) as bar:  # closed on errors too
        for image_id, (path, name, png) in enumerate(bar, start=1):
            try:
                image = read_rgb(path)
            except UnreadableImage as e:
                if on_bad_image == "stop":
                    raise UserError(f"{e} ({STOP_HINT})") from None
                reason = "unreadable" if path.suffix.lower() in IMAGE_SUFFIXES else "not an image"
                stats.skipped[reason] += 1
                stats.examples.setdefault(reason, f"{path} ({e.reason})")
                continue
            t0 = time.perf_counter()
            out = detector([pad_to_aspect(image).to(device).float().div_(255)])[0]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stats.seconds += time.perf_counter() - t0
            stats.images += 1
            recs, keep = detection_records(out, image_id, name, score, label_to_cat)
            results += recs
            if out_dir is not None and draw:
                save_png(draw_detections(image, out, keep, names), out_dir / png)
    for reason, n in stats.skipped.items():
        log.warning("skipped %d %s file(s), e.g. %s", n, reason, stats.examples[reason])
    return results, stats
