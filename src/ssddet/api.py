"""Python API for notebooks and pipelines: one function per `ssddet` command; the CLI commands are thin
wrappers over these. Every function imports what it needs when called, so `import ssddet` stays cheap.

    import ssddet
    metrics = ssddet.train(data="data/bccd", noise=0.4, epochs=6, out="runs/ssddet")
    dets = ssddet.predict("runs/ssddet/model_final.pt", ["photos/"], out="pred", score=0.5)

Bad input raises `ssddet.errors.UserError` with a one-line message naming the file and the problem.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("ssddet")
RESULTS_NAME = "detections.json"  # what `predict` writes into its `out` folder


class Metrics(dict):
    """What `evaluate` returns: the COCO metrics {AP, AP50, ..., per_class} (equal to the same metrics as a plain
    dict, e.g. a run's val metrics), `images`, how many images were evaluated, and `skipped_images`, how many
    unreadable ones were left out (data.on_bad_image "skip")."""

    images: int = 0
    skipped_images: int = 0


def load_detector(checkpoint: str | Path):
    """model_best.pt / model_final.pt / checkpoint.pt -> (torchvision FasterRCNN in eval mode, meta dict with
    categories, num_classes and the model config)."""
    from .engine.inference import load_detector as _load

    return _load(checkpoint)


def _dataset_ann(ann, data, images) -> tuple[Path, Path | None]:
    """`ann` (a COCO file) or `data` (a dataset directory: DIR/annotations.json, images under DIR) -> (the
    annotation file, the image root or None for the file's folder)."""
    from .errors import UserError

    if ann is None and data is None:
        raise UserError("give --ann JSON or --data DIR")
    if ann is not None:
        return Path(ann), Path(images) if images else None
    return Path(data) / "annotations.json", Path(images) if images else Path(data)


def train_config(config=None, *, resume: bool = False, sets=(), refiner: str | None = None, **fields):
    """The validated Config a training run would use (what `ssddet train --print-config` prints).

    config: a Config (used as given), a config dict, a run's config.json path, or None (the defaults). `fields`
    set config fields by name: "section.key" or a key only one section has, e.g. `train_config(data="data/bccd",
    noise=0.4, method="vanilla", epochs=6, out="runs/v")`, `**{"ssddet.top_k": 5}`; `out` (or `output`) is the
    run directory, a fresh runs/<method>-<date>-<time> when not given (unless `config` is a Config). `sets`:
    "SECTION.KEY=VALUE" strings as `--set`; `refiner`: "fast" | "paper" as `--refiner`. With resume=True and
    `out`, that run's config.json is the config."""
    from .config_overrides import train_config as _train_config

    output = None
    for key in ("out", "output", "train.output"):
        if key in fields:
            output = fields.pop(key)
    return _train_config(config, fields=fields, sets=sets, refiner=refiner, output=output, resume=resume)


def train(config=None, *, resume: bool = False, command: str | None = None, **fields) -> dict:
    """Train a detector -> the final val metrics (the run directory is `out`, see `train_config`).

    `config` and `fields` as `train_config`, e.g. `train(data="data/bccd", noise=0.4, epochs=6, out="runs/s")`;
    `train(out="runs/s", resume=True)` continues that run."""
    import json

    from .engine.train import train as _train
    from .errors import UserError

    cfg = train_config(config, resume=resume, **fields)
    out = Path(cfg.train.output)
    if not resume and (out / "checkpoint.pt").is_file():  # its logs and checkpoints would be overwritten
        raise UserError(f"{out} already holds a run (checkpoint.pt): continue it with --resume, or choose "
                        "another --out")
    metrics = _train(cfg, resume=resume, command=command)
    if resume and not metrics and (out / "metrics.json").is_file():
        log.warning("%s had finished its %d epochs: nothing to resume", out, cfg.train.epochs)
        metrics = json.loads((out / "metrics.json").read_text()).get("val", {})
    return metrics


def format_metrics(metrics: dict) -> str:
    """The metrics of `evaluate` / `train` as `ssddet eval` prints them (AP ... ARs, then per-class AP)."""
    from .engine.evaluate import format_metrics as _format

    return _format(metrics)


def evaluate(checkpoint=None, *, results=None, data=None, ann=None, train_ann=None, val_ann=None, images=None,
             split: str = "val", save_results=None, device: str = "auto", batch_size: int = 2,
             workers: int = 2, on_bad_image: str = "skip") -> Metrics:
    """COCO AP of a checkpoint (or of a COCO results file) on a split -> Metrics {AP, AP50, ..., per_class}
    (`.images`: how many were evaluated; `.skipped_images`: how many unreadable ones were left out).

    The dataset as for `train` (`data`, or `train_ann` / `val_ann`, or the built-in set), or `ann`: one COCO file,
    its `split` images (all of them when it has no `split` field). Unreadable images are left out of the
    predictions and the ground truth with a counted warning (on_bad_image "skip") or stop it ("stop")."""
    from .config import DataConfig
    from .data.images import BadImages
    from .data.splits import load_ann_split, load_split
    from .engine.evaluate import coco_evaluate, load_results, readable
    from .errors import UserError

    if not checkpoint and not results:
        raise UserError("give --checkpoint (a trained model) or --results (a COCO results file)")
    bad = BadImages(on_bad_image)
    if ann:
        dset, records = load_ann_split(ann, images, split)
    else:
        dcfg = DataConfig(data_dir=data, train_ann=train_ann, val_ann=val_ann, images=images, num_workers=workers)
        dset, records = load_split(dcfg, split)
    if results:
        dets = load_results(results, dset.gt_dict(records))
    else:
        dets = _predict_records(checkpoint, dset, records, device, batch_size, workers, bad)
        if records and not readable(records, bad.files):
            raise UserError(f"{dset.ann_path}: no image of split '{split}' could be read: no AP to report")
        records = readable(records, bad.files)
        if save_results:
            import json

            Path(save_results).parent.mkdir(parents=True, exist_ok=True)
            Path(save_results).write_text(json.dumps(dets))
            log.info("wrote %d detections to %s", len(dets), save_results)
    metrics = Metrics(coco_evaluate(dset.gt_dict(records), dets))
    metrics.images, metrics.skipped_images = len(records), len(bad.files)
    return metrics


def _predict_records(checkpoint, data, records, device: str, batch_size: int, workers: int,
                     bad=None) -> list[dict]:
    from torch.utils.data import DataLoader

    from .data.dataset import CocoDetection, collate
    from .engine.device import resolve_device
    from .engine.evaluate import predict as _predict
    from .engine.inference import load_detector as _load

    detector, meta = _load(checkpoint)
    _same_categories(checkpoint, meta, data.categories)
    dev = resolve_device(device)
    loader = DataLoader(CocoDetection(records), batch_size=batch_size, num_workers=workers, collate_fn=collate)
    return _predict(detector.to(dev), loader, dev, data.label_to_cat, bad=bad)


def _same_categories(checkpoint, meta: dict, categories: list[dict]) -> None:
    """A model predicts the classes it was trained on: a dataset with other category ids is a UserError."""
    from .errors import UserError

    cats = meta.get("categories")
    if cats and [c["id"] for c in cats] != [c["id"] for c in categories]:
        raise UserError(f"{checkpoint}: trained on category ids {[c['id'] for c in cats]}, but the dataset "
                        f"has {[c['id'] for c in categories]}")


def refine(checkpoint, *, out=None, data=None, ann=None, images=None, split: str | None = None,
           all_splits: bool = False, device: str = "auto", train_ann=None, on_bad_image: str = "skip",
           flip_average: bool = False) -> dict:
    """An SSD-Det run's refined training boxes -> COCO dict (`bbox` refined and clipped to its image, `noisy_bbox`
    the input box, `true_bbox` kept; counts and mean IoUs in info.ssddet_refine), written to `out` if given. Without
    `data` / `ann` the run's own dataset and on-the-fly noise are used (`train_ann`: the earlier name of `ann`).
    An unreadable image's boxes keep their input box (on_bad_image "skip", counted) or stop the export ("stop")."""
    from .data.coco import write_json
    from .data.images import BadImages
    from .data.splits import training_split_json
    from .engine.device import resolve_device
    from .engine.refine import export, load_refiner_method, only_images, refine_records, trust_from_records

    train_ann = ann or train_ann
    dev = resolve_device(device)
    method, cfg, meta = load_refiner_method(checkpoint, dev)
    trained_split = cfg.data.train_split
    if data or train_ann:
        cfg.data.data_dir, cfg.data.train_ann, cfg.data.val_ann = data, train_ann, train_ann  # as `eval --ann` reads
        cfg.data.images = images
        if train_ann and (cfg.data.noise or _label_noise_on(cfg.data)) and _holds_simulated_noise(train_ann):
            log.info("%s already holds simulated noise (true_bbox, true_category_id, spurious or "
                     "missing_annotations): the run's noise is not applied again", train_ann)
            cfg.data.noise, cfg.data.noise_missing, cfg.data.noise_spurious, cfg.data.noise_swap = None, 0.0, 0.0, 0.0
    elif images:
        cfg.data.images = images
    if split:
        cfg.data.train_split = split
    raw, parsed, records = training_split_json(cfg.data)
    _same_categories(checkpoint, meta, parsed.categories)
    bad = BadImages(on_bad_image)
    agreement = (trust_from_records(method, records, dev, bad=bad)  # not the run's training boxes: their own trust
                 if data or train_ann or cfg.data.train_split != trained_split else None)
    refined = refine_records(method, records, dev, bad=bad, flip_average=flip_average)
    n_all = len(raw["images"])
    d, stats = export(raw, refined, {"checkpoint": str(checkpoint), "split": cfg.data.train_split,
                                     "all_splits": all_splits, "flip_average": flip_average,
                                     "noise": cfg.data.noise, "noise_seed": cfg.data.noise_seed,
                                     **({"agreement": agreement} if agreement is not None else {})},
                      sizes={r.image_id: (r.width, r.height) for r in records})
    if not all_splits:  # after the export: its boxes are keyed by their place in the whole list
        d = only_images(d, {r.image_id for r in records})
    stats["skipped_images"] = len(bad.files)
    d["info"]["ssddet_refine"].update(stats=stats, images_refined=len(records) - len(bad.files),
                                      images_in_source=n_all)
    if out:
        write_json(out, d)
    return d


def _label_noise_on(data_cfg) -> bool:
    return any(getattr(data_cfg, f"noise_{kind}") for kind in ("missing", "spurious", "swap"))


def _holds_simulated_noise(path) -> bool:
    """Whether a COCO file is a noisy copy (`ssddet noise` keeps the clean box as `true_bbox`, the class before a
    swap as `true_category_id`, marks added boxes `spurious` and keeps removed ones in `missing_annotations`)."""
    from .data.coco import read_json

    raw = read_json(path)
    anns = raw.get("annotations")  # malformed lists are parse_coco's to report
    marks = ("true_bbox", "true_category_id", "spurious")
    return "missing_annotations" in raw or (isinstance(anns, list) and any(
        isinstance(a, dict) and any(m in a for m in marks) for a in anns))


def noise(ann=None, *, data=None, level: float = 0.4, seed: int = 45, split: str | None = None, images=None,
          out=None, fraction: float = 1.0, missing: float = 0.0, spurious: float = 0.0, swap: float = 0.0) -> dict:
    """A noisy copy of a COCO file, `ann` or `data`/annotations.json (OA-MIL protocol: `bbox` noisy, `true_bbox`
    clean; the count and mean IoU of the perturbed boxes in info.box_noise), written to `out` if given. The same
    generator as `train(noise=level, noise_seed=seed)`. `fraction`: the share of the boxes noised (`noised` flag
    on each annotation when < 1); `missing`, `spurious`, `swap`: label errors (data/label_noise.py), as
    `train(noise_missing=..., noise_spurious=..., noise_swap=...)`."""
    from .data.coco import read_json, write_json
    from .data.simulate import noisy_copy

    src, root = _dataset_ann(ann, data, images)
    noisy, _ = noisy_copy(read_json(src), level, seed, root or src.parent, split, src=str(src), fraction=fraction,
                          missing=missing, spurious=spurious, swap=swap)
    if out:
        write_json(out, noisy)
    return noisy


def check(ann=None, *, data=None, images=None, open_images: bool = True, strict: bool = False,
          workers: int | None = None) -> tuple[str, int]:
    """Validate a COCO dataset, `ann` or `data`/annotations.json -> (summary text, exit status: 0 OK, 1 `strict`
    findings, 2 not usable). Every image is decoded in full (unless not `open_images`), in `workers` threads
    (default: min(8, CPUs)); undecodable ones are listed."""
    from .data.check import check_images, summarise
    from .data.coco import load_coco

    src, root = _dataset_ann(ann, data, images)
    dataset = load_coco(src, root)
    return summarise(dataset, check_images(dataset.records, workers) if open_images else None, strict=strict)


def predict(checkpoint, images, *, out=None, score: float = 0.5, device: str = "auto",
            draw: bool = True, progress: bool = True, on_bad_image: str = "skip") -> list[dict]:
    """Detect objects in image files / folders -> COCO results records (image_id 1..N in input order,
    file_name, category_id, bbox [x, y, w, h], score >= `score`). With `out`: out/detections.json and (with
    `draw`) one PNG per image. `checkpoint` may also be a `load_detector` result. Unreadable files are skipped
    with a counted warning (on_bad_image "skip") or stop it ("stop")."""
    import json

    from .engine.device import resolve_device
    from .engine.predict import collect_images, predict_images
    from .errors import UserError

    if isinstance(images, (str, Path)):
        images = [images]
    detector, meta = load_detector(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    items = collect_images(images)
    if not items:
        raise UserError("no image files found in " + ", ".join(str(i) for i in images))
    dev = resolve_device(device)
    out_dir = Path(out) if out else None
    dets, stats = predict_images(detector.to(dev), items, meta, dev, score, out_dir, draw, progress, on_bad_image)
    rate = f" ({stats.images_per_second:.2f} images/s on {dev})" if stats.images else ""
    log.info("predicted %d image(s) in %.1f s of model time%s%s", stats.images, stats.seconds, rate,
             f"; skipped {sum(stats.skipped.values())} unreadable file(s)" if stats.skipped else "")
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RESULTS_NAME).write_text(json.dumps(dets))
    return dets


def show(ann=None, *, data=None, images=None, compare=(), out, ids=None, n: int = 16, split: str | None = None,
         score: float = 0.5, on_bad_image: str = "skip") -> list[Path]:
    """Draw clean / noisy / refined (and `compare`) boxes of the same images of `ann` (or `data`/annotations.json)
    -> [per-image PNGs..., contact sheet]. Unreadable images are skipped with a counted warning (on_bad_image
    "skip") or stop it ("stop")."""
    from .data.coco import load_coco, read_json
    from .data.images import BadImages
    from .viz.show import read_any_json, show_images

    src, root = _dataset_ann(ann, data, images)
    raw = read_json(src)
    dataset = load_coco(src, root)
    compare = [compare] if isinstance(compare, (str, Path)) else compare
    comp = [(Path(c), read_any_json(Path(c))) for c in compare]
    return show_images(dataset, raw, comp, Path(out), ids=ids, n=n, split=split, score=score,
                       bad=BadImages(on_bad_image))


def plot(runs, *, out="curves.png", names: list[str] | None = None) -> Path:
    """Training curves of one or more run directories (their log.jsonl), overlaid -> the PNG path."""
    from .errors import UserError
    from .viz.plot import plot_runs, read_epochs, run_names

    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if names and len(names) != len(runs):
        raise UserError(f"--names: {len(names)} name(s) for {len(runs)} run(s)")
    return plot_runs([read_epochs(r) for r in runs], names or run_names(runs), out)


def audit(checkpoint, ann=None, *, data=None, images=None, split: str | None = None, out=None, html=None,
          html_top: int = 200, device: str = "auto", on_bad_image: str = "skip", missing_score: float = 0.5):
    """Rank every annotation of `ann` (or `data`/annotations.json) by how likely it is wrong (engine/audit.py and
    engine/audit_kinds.py explain the scores): misplaced, wrong class, spurious, the objects images likely miss
    (detections of score >= `missing_score` no annotation covers), the annotations no command can use (`invalid`)
    -> AuditReport (rows: invalid, annotations worst misplaced first, missing; each with `kind` and `kind_rank`;
    summary: each kind's share, the ranking precision when `true_bbox` is known; detections: all of the run's; str:
    what `ssddet audit` prints); CSV to `out`, HTML to `html`. Unreadable images: skipped, counted, or stop."""
    from .data.coco import load_coco
    from .data.images import BadImages
    from .engine.audit import AuditReport, invalid_rows, rank_annotations, report_detections, summarise, write_csv
    from .engine.audit_html import write_html
    from .engine.audit_kinds import gather_evidence
    from .engine.device import resolve_device
    from .engine.evaluate import readable
    from .engine.refine import load_refiner_method
    from .errors import UserError

    if not 0.0 <= missing_score <= 1.0:
        raise UserError(f"missing score must be in [0, 1], got {missing_score}")
    src, root = _dataset_ann(ann, data, images)
    dev = resolve_device(device)
    method, _, meta = load_refiner_method(checkpoint, dev)
    dataset = load_coco(src, root)
    cats = meta.get("categories")
    if cats and [c["id"] for c in cats] != [c["id"] for c in dataset.categories]:
        raise UserError(f"{checkpoint}: trained on category ids {[c['id'] for c in cats]}, but {src} has "
                        f"{[c['id'] for c in dataset.categories]}")
    records = dataset.select(split)  # images without annotations too: they may miss objects
    bad = BadImages(on_bad_image)
    evidence = gather_evidence(method, records, dev, bad)
    records = readable(records, bad.files)
    rows = rank_annotations(records, evidence, dataset.class_names, missing_score, invalid_rows(dataset, records))
    rep = AuditReport(rows, {**summarise(rows, missing_score), "skipped_images": len(bad.files)},
                      report_detections(records, evidence, dataset.label_to_cat))
    if out:
        write_csv(rows, out)
    if html:
        write_html(rows, records, rep.summary, html, html_top)
    return rep


def export_onnx(checkpoint, out, *, image=None, opset: int = 17, box_atol: float = 0.05,
                score_atol: float = 1e-3) -> dict:
    """Export the deployed detector to ONNX and check it with onnxruntime against PyTorch on `image` (default:
    a bundled photo) and its transposed copy -> report {out, checks: [{size, detections, max_box_diff,
    max_score_diff, count_diff}], box_atol, score_atol, ok}."""
    from .engine.export import check, check_images, export_detector

    detector, meta = load_detector(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    xs = check_images(image)
    path = export_detector(detector, out, xs[0], meta, opset)
    return check(detector, path, xs, box_atol, score_atol)


def yolo2coco(out, *, yaml_path=None, images=None, names=None, split: str = "train") -> dict:
    """A YOLO-txt dataset -> COCO dict with a `split` per image, written to `out` (data/yolo.py)."""
    from .data.yolo import yolo2coco as _convert

    return _convert(out, yaml_path=yaml_path, images=images, names=names, split=split)


def voc2coco(voc_root, out, *, splits=("train", "val", "test")) -> dict:
    """Pascal VOC XML folders -> COCO dict with `split` from ImageSets/Main, written to `out`."""
    from .data.voc import voc2coco as _convert
    from .errors import UserError

    try:
        return _convert(voc_root, out, splits=tuple(splits))
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None


def synth(out=None, *, seed: int = 0, **sizes) -> Path:
    """Generate the built-in synthetic digits set (num_train / num_val / num_test) -> its annotations.json."""
    from .data.synth import default_data_dir, make_synth

    return make_synth(Path(out) if out else default_data_dir(), seed=seed, **sizes)
