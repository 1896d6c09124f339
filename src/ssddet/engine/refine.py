"""`ssddet refine`: run a trained SSD-Det refiner over a dataset split and export the refined boxes as COCO JSON
(`bbox` = refined, `noisy_bbox` = the input box, `true_bbox` kept when present), ready for re-training a plain
detector on them (`ssddet train --method vanilla --train-ann refined.json --val-ann DATA.json`, the paper's "+FR"
rows). Only the refined split's images are written unless --all-splits: the other splits' boxes are clean, and a
detector trained on the whole file would see the evaluation images."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config
from ..config_overrides import predate_recorded
from ..data.boxes import aligned_iou, aligned_iou_np, clip_to_image, xywh_to_xyxy, xyxy_to_xywh
from ..data.coco import MIN_BOX_SIDE, internal_ann_ids, parse_box
from ..data.dataset import load_image, record_target
from ..data.images import BadImages, UnreadableImage
from ..data.transforms import hflip_boxes
from ..errors import UserError
from ..models.detector import build_trained_detector
from ..models.methods import build_method
from .checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def load_refiner_method(path: str | Path, device: torch.device):
    """A training checkpoint.pt of an SSD-Det run -> (SSDDetMethod in eval mode, its Config, its meta)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ck = load_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - truncated/corrupt/foreign file: a user-level error
        first = (str(e).splitlines() or [type(e).__name__])[0]  # not torch's multi-line weights_only advice
        raise UserError(f"{path}: cannot load checkpoint ({first})") from None
    if not isinstance(ck, dict) or "method" not in ck or "config" not in ck:
        raise UserError(f"{path}: not a training checkpoint (use run/checkpoint.pt, which holds the refiner)")
    try:
        cfg = Config.from_dict(ck["config"], src=str(path))
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    predate_recorded(cfg, ck["config"])  # an older run refines as it trained
    if cfg.train.method != "ssddet":
        raise UserError(f"{path}: trained with --method {cfg.train.method}; refining needs an ssddet run")
    num_classes = ck["meta"]["num_classes"]
    method = build_method(cfg, build_trained_detector(cfg.model, num_classes), num_classes)
    method.load_state_dict(ck["method"])
    return method.to(device).eval(), cfg, ck["meta"]


class ImageView(NamedTuple):
    """One image as the refiner and the detector see it (`image_views`)."""

    rec: object  # its data.coco.ImageRecord
    image: torch.Tensor  # float Tensor[3, H, W] as loaded, on the device
    images: object  # the detector transform's ImageList (resized, batched)
    boxes: torch.Tensor  # Tensor[M, 4] its given boxes, resized frame
    labels: torch.Tensor  # Int64[M] in 1..K
    features: dict  # FPN features of `images`
    back: torch.Tensor  # Tensor[4]: a box of the resized frame times `back` is in the JSON's pixel frame


@torch.no_grad()
def image_views(method, records, device, bad: BadImages | None = None, empty: bool = False, desc: str = "refine"):
    """Yield an `ImageView` of each readable record (with `empty`, those without boxes too). Unreadable images are
    handled by `bad` (default: skipped with a warning; its `files` lists them)."""
    bad = bad if bad is not None else BadImages()
    with tqdm(records, desc=desc, leave=False) as bar:  # closed on errors too
        for rec in bar:
            if len(rec.boxes) == 0 and not empty:
                continue
            try:
                image, sx, sy = load_image(rec)
            except UnreadableImage as e:
                bad.add(e)
                continue
            target = record_target(rec, sx, sy)
            image = image.to(device)
            images, targets = method.detector.transform([image], [{k: v.to(device) if torch.is_tensor(v) else v
                                                                   for k, v in target.items()}])
            features = method.detector.backbone(images.tensors)
            (h1, w1), (h0, w0) = images.image_sizes[0], image.shape[-2:]
            back = torch.tensor([w0 / w1 / sx, h0 / h1 / sy, w0 / w1 / sx, h0 / h1 / sy], device=device)
            yield ImageView(rec, image, images, targets[0]["boxes"], targets[0]["labels"], features, back)


@torch.no_grad()
def refine_chunks(method, records, device, chunk: int = 32, bad: BadImages | None = None,
                  flip_average: bool = False):
    """Run the refiner over every object of every record (eval mode, no per-image cap), `chunk` objects per
    call so crowded images stay within memory. Unreadable images are handled by `bad` (default: skipped with a
    warning; its `files` lists them). `flip_average`: each object is refined in the image and in its mirror
    image too, and `refined` is the mean of the two boxes (`mirror_refine`).

    Yields (record, slice of its objects, RefinerOutput of that chunk, back: Tensor[4]); multiplying a
    refiner box (resized-image frame) by `back` gives the JSON's pixel frame."""
    for view in image_views(method, records, device, bad):
        mirror = mirror_features(method, view.image) if flip_average else None
        for part, res in refine_view(method, view, chunk):
            if mirror is not None:
                res.refined = [(res.refined[0] + mirror_refine(method, mirror, view.images.image_sizes[0],
                                                               view.boxes[part], view.labels[part])) / 2]
            yield view.rec, part, res, view.back


@torch.no_grad()
def refine_view(method, view: ImageView, chunk: int = 32):
    """Yield (slice of the image's objects, RefinerOutput) for every object of `view`, `chunk` objects per call
    (eval mode, no per-image cap). With `keep_history` the keep step's second view of each object is its b̃ on
    the mirror image (in training: its previous visit; docs/method.md §3.1 step 8), one more backbone pass."""
    cfg = method.refiner.cfg
    cfg.max_objects_per_image = 0  # all objects; chunking bounds the cost
    second = cfg.keep_history and cfg.keep_given and method.refiner.keep is not None
    mirror, size = (mirror_features(method, view.image) if second else None), view.images.image_sizes[0]
    for s in range(0, len(view.boxes), chunk):
        part = slice(s, s + chunk)
        prev = [mirror_merged(method, mirror, size, view.boxes[part], view.labels[part])] if second else None
        yield part, method.refiner(view.features, view.images.image_sizes, [view.boxes[part]], [view.labels[part]],
                                   previous=prev)


def mirror_merged(method, features: dict, size: tuple[int, int], boxes, labels) -> torch.Tensor:
    """`mirror_refine` without the keep step: b̃ itself, Tensor[M, 4] in the unmirrored frame."""
    return mirror_refine(method, features, size, boxes, labels, keep_step=False)


def mirror_features(method, image: torch.Tensor) -> dict:
    """FPN features of the mirrored image, resized as the image itself is (the resize depends on h, w only)."""
    images, _ = method.detector.transform([image.flip(-1)])
    return method.detector.backbone(images.tensors)


def mirror_refine(method, features: dict, size: tuple[int, int], boxes, labels, keep_step: bool = True) -> torch.Tensor:
    """The refiner's Tensor[M, 4] boxes for `boxes` (resized frame of an (h, w) image), computed on the mirror
    image's `features` and mapped back. A refiner's box for one object differs between the two views (BCCD
    40 %: IoU 0.72, docs/benchmarks.md), so their mean is a better estimate than either."""
    w = float(size[1])
    res = method.refiner(features, [size], [hflip_boxes(boxes, w)], [labels], keep_step=keep_step)
    return hflip_boxes(res.refined[0], w)


@torch.no_grad()
def trust_from_records(method, records, device, chunk: int = 32, bad: BadImages | None = None) -> float | None:
    """Set the keep step's trust from `records` themselves: their agreements IoU(b*, b̃) (the merged box before the
    keep step) become its memory (`KeepTheBox.set_from`: their mean and their highest mode), with no trust carried
    over, so the thresholds decide afresh. For refining a file other than the run's training boxes: the memory of
    training says how far the refiner agreed with *those* boxes, not with these (docs/method.md §3.1 step 8). One
    extra refiner pass. Returns the mean, or None where the run has no dataset trust (no keep step, or neither
    trust_mode nor trust_agreement on)."""
    refiner = method.refiner
    keep = refiner.keep
    if keep is None or not refiner.cfg.keep_given or (refiner.cfg.trust_agreement <= 0
                                                      and refiner.cfg.trust_mode <= 0):
        return None
    agree = []
    refiner.cfg.keep_given = False  # b̃ itself
    try:
        for view in image_views(method, records, device, bad, desc="agreement"):
            for part, res in refine_view(method, view, chunk):
                agree.append(aligned_iou(view.boxes[part].float(), res.refined[0].float()).cpu())
    finally:
        refiner.cfg.keep_given = True
    if not agree or not len(torch.cat(agree)):
        return None
    keep.set_from(torch.cat(agree))
    log.info("keep step: the refined boxes' own agreements (mean %.3f, highest mode %.3f) decide the trust "
             "(thresholds: mode %g, mean %g; 0: off): %s", float(keep.agreement), float(keep.mode),
             refiner.cfg.trust_mode, refiner.cfg.trust_agreement, "trusted" if keep.trusted(None) else "not trusted")
    return float(keep.agreement)


def refine_records(method, records, device, chunk: int = 32, bad: BadImages | None = None,
                   flip_average: bool = False) -> dict[int, np.ndarray]:
    """-> {annotation id: refined xyxy box in the JSON's pixel frame} (see `refine_chunks`; the boxes of an
    unreadable image are not in it)."""
    out: dict[int, np.ndarray] = {}
    for rec, part, res, back in refine_chunks(method, records, device, chunk, bad, flip_average):
        for aid, box in zip(rec.ann_ids[part].tolist(), (res.refined[0] * back).cpu().numpy()):
            out[int(aid)] = box
    return out


def only_images(raw: dict, image_ids: set[int]) -> dict:
    """The COCO dict restricted to the images `image_ids` and their annotations (categories, info kept)."""
    return {**raw, "images": [im for im in raw["images"] if im.get("id") in image_ids],
            "annotations": [a for a in raw["annotations"] if a.get("image_id") in image_ids]}


def export(raw: dict, refined: dict[int, np.ndarray], info: dict,
           sizes: dict[int, tuple[int, int]] | None = None) -> tuple[dict, dict]:
    """COCO dict with refined `bbox` (the input box kept as `noisy_bbox`) and IoU summary stats. `refined` is
    keyed by `coco.internal_ann_ids` of `raw["annotations"]`: `raw` is the dict that was parsed, not a subset.

    The refiner's boxes are not bounded by the image: with `sizes` ({image id: (width, height)}, the JSON's
    pixel frame) each is clipped to its image, so the export passes `ssddet check --strict` (a box with nothing
    left inside keeps its input box); stats count both."""
    d = copy.deepcopy(raw)
    noisy, ref, clean = [], [], []
    clipped, kept_input = 0, 0
    for a, key in zip(d["annotations"], internal_ann_ids(d["annotations"])):
        box = refined.get(key)
        if box is None:
            continue
        if sizes is not None and a.get("image_id") in sizes:
            inside = clip_to_image(box, *sizes[a["image_id"]], MIN_BOX_SIDE)
            if inside is None:
                kept_input += 1
                continue
            clipped += not np.array_equal(inside, np.asarray(box, np.float64))
            box = inside
        xywh = [float(v) for v in xyxy_to_xywh(box)]
        a["noisy_bbox"], a["bbox"], a["area"] = a["bbox"], xywh, xywh[2] * xywh[3]
        if parse_box(a.get("true_bbox")) is not None:  # 4 finite numbers (else left out of the stats)
            noisy.append(a["noisy_bbox"])
            ref.append(xywh)
            clean.append([float(v) for v in a["true_bbox"]])
    d["info"] = {**(d.get("info") or {}), "ssddet_refine": info}
    stats = {"refined_boxes": len(refined) - kept_input, "clipped_boxes": clipped, "kept_input_boxes": kept_input}
    if clean:
        stats["iou_noisy"] = float(aligned_iou_np(xywh_to_xyxy(noisy), xywh_to_xyxy(clean)).mean())
        stats["iou_refined"] = float(aligned_iou_np(xywh_to_xyxy(ref), xywh_to_xyxy(clean)).mean())
    return d, stats
