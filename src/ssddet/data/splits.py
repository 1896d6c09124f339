"""Resolve the user's dataset arguments (--data DIR, --ann or --train-ann/--val-ann, --images, or the built-in
synthetic set) into validated train/val records, injecting box noise into the training split on request."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..errors import UserError
from .coco import CocoData, ImageRecord, check_image_files, parse_coco, read_json
from .simulate import noisy_copy

log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: CocoData
    train_records: list[ImageRecord]
    val: CocoData
    val_records: list[ImageRecord]


def _sources(cfg: DataConfig) -> tuple[Path, Path, Path, bool]:
    """-> (train json, val json, image root, one JSON for every split: select by the `split` field)."""
    if cfg.train_ann:
        train = Path(cfg.train_ann)
        val = Path(cfg.val_ann) if cfg.val_ann else train
        root = Path(cfg.images) if cfg.images else train.parent
        return train, val, root, cfg.val_ann is None
    if cfg.data_dir:
        d = Path(cfg.data_dir)
    else:
        from .synth import ensure_default_data

        d = ensure_default_data()
        log.info("no dataset given: using the built-in synthetic set at %s", d)
    ann = d / "annotations.json"
    if not ann.is_file():
        raise UserError(f"{d}: expected {ann.name} inside the dataset directory")
    return ann, ann, Path(cfg.images) if cfg.images else d, True


def _uses_split(raw: dict, by_split: bool) -> bool:
    """Select by the `split` field: always with one JSON for every split, and with --train-ann/--val-ann
    whenever the file's images carry one. A JSON with a `split` field holds other splits too (an `ssddet refine
    --all-splits` export, a converted VOC file): taking it whole would train on the evaluation images, with
    their clean boxes, or evaluate on the training images."""
    images = raw.get("images") if isinstance(raw, dict) else None
    return by_split or (isinstance(images, list) and any(isinstance(im, dict) and im.get("split") is not None
                                                         for im in images))


def _select(data: CocoData, split: str, by_split: bool) -> list[ImageRecord]:
    return data.select(split if by_split else None)


def load_split(cfg: DataConfig, split: str) -> tuple[CocoData, list[ImageRecord]]:
    """Clean (noise-free) records of one split, e.g. for `ssddet eval --split test`."""
    train, val, root, by_split = _sources(cfg)
    src = val if split == cfg.val_split else train
    if not by_split and split not in (cfg.train_split, cfg.val_split):
        raise UserError(f"split '{split}' needs --data DIR (a `split` field); with --train-ann/--val-ann use "
                        f"'{cfg.train_split}' or '{cfg.val_split}'")
    raw = read_json(src)
    data = parse_coco(raw, str(src), root)
    recs = _select(data, split, _uses_split(raw, by_split))
    check_image_files(recs, str(src))
    return data, recs


def load_ann_split(ann: str | Path, images: str | Path | None, split: str) -> tuple[CocoData, list[ImageRecord]]:
    """Clean records of one COCO file (`--ann`): its `split` images, or all of them when no image has a `split`
    field."""
    src = Path(ann)
    data = parse_coco(read_json(src), str(src), Path(images) if images else src.parent)
    recs = data.select(split if any(r.split is not None for r in data.records) else None)
    check_image_files(recs, str(src))
    return data, recs


def _train_json(cfg: DataConfig, train_path: Path, root: Path, by_split: bool) -> tuple[dict, bool]:
    """-> (training JSON with the run's noise applied, select its training split by the `split` field)."""
    raw = read_json(train_path)
    by_split = _uses_split(raw, by_split)
    if simulates_noise(cfg):
        raw = _noisy(raw, cfg, str(train_path), root, by_split)
    return raw, by_split


def training_split_json(cfg: DataConfig):
    """-> (training JSON dict with the run's noise applied, its CocoData, the training split's records)."""
    train_path, _, root, by_split = _sources(cfg)
    raw, by_split = _train_json(cfg, train_path, root, by_split)
    data = parse_coco(raw, str(train_path), root)
    recs = _select(data, cfg.train_split, by_split)
    check_image_files(recs, str(train_path))
    return raw, data, recs


def load_train_val(cfg: DataConfig) -> Splits:
    train_path, val_path, root, by_split = _sources(cfg)
    train_raw, train_by_split = _train_json(cfg, train_path, root, by_split)
    train = parse_coco(train_raw, str(train_path), root)
    if val_path == train_path and not simulates_noise(cfg):
        val, val_by_split = train, train_by_split
    else:
        val_raw = read_json(val_path)
        val, val_by_split = parse_coco(val_raw, str(val_path), root), _uses_split(val_raw, by_split)
    if [c["id"] for c in train.categories] != [c["id"] for c in val.categories]:
        raise UserError(f"{train_path} and {val_path} have different category ids")
    train_recs = _select(train, cfg.train_split, train_by_split)
    val_recs = _select(val, cfg.val_split, val_by_split)
    check_image_files(train_recs, str(train_path))
    check_image_files(val_recs, str(val_path))
    return Splits(train, train_recs, val, val_recs)


def simulates_noise(cfg: DataConfig) -> bool:
    """Whether the run noises its training split: box noise (`data.noise`) or any label error."""
    return cfg.noise is not None or any((cfg.noise_missing, cfg.noise_spurious, cfg.noise_swap))


def _noisy(raw: dict, cfg: DataConfig, src: str, root: Path, by_split: bool) -> dict:
    """Noise the training images only (the evaluation split always stays clean)."""
    noisy, ious = noisy_copy(raw, cfg.noise, cfg.noise_seed, root, cfg.train_split if by_split else None, src,
                             fraction=cfg.noise_fraction, missing=cfg.noise_missing, spurious=cfg.noise_spurious,
                             swap=cfg.noise_swap)
    if cfg.noise == 0:
        log.info("box noise 0: the given training boxes are taken as clean (statistics only)")
    elif cfg.noise is not None:
        log.info("box noise %.2f (seed %d) on %d training boxes: mean IoU with clean %.3f", cfg.noise,
                 cfg.noise_seed, len(ious), float(ious.mean()) if len(ious) else float("nan"))
    labels = (noisy.get("info") or {}).get("label_noise")
    if labels:
        log.info("label noise (seed %d): %d of %d training annotations missing, %d swapped, %d spurious boxes added",
                 cfg.noise_seed, labels["annotations_missing"], labels["annotations_eligible"],
                 labels["annotations_swapped"], labels["boxes_spurious"])
    return noisy
