"""Helpers the tests share (imported as `from helpers import ...`; fixtures live in conftest.py): tiny COCO
sets written to disk, the `ssddet train` arguments of the cheap test runs, and exact state comparisons."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ssddet.engine import train as train_mod

# ------------------------------------------------------------------------------------------------ tiny COCO
# Non-contiguous category ids on purpose (labels must become 1..K).
TINY_CATEGORIES = [{"id": 3, "name": "cat3"}, {"id": 7, "name": "cat7"}, {"id": 42, "name": "cat42"}]

TINY_IMAGES = [
    {"id": 1, "file_name": "images/a.jpg", "width": 80, "height": 64, "split": "train"},
    {"id": 2, "file_name": "images/b.jpg", "width": 96, "height": 72, "split": "train"},
    {"id": 3, "file_name": "images/c.jpg", "width": 64, "height": 64, "split": "train"},  # no boxes
    {"id": 4, "file_name": "images/d.jpg", "width": 64, "height": 64, "split": "val"},
    {"id": 5, "file_name": "images/e.jpg", "width": 72, "height": 96, "split": "test"},
]

TINY_ANNOTATIONS = [
    {"id": 11, "image_id": 1, "category_id": 3, "bbox": [10.0, 10.0, 30.0, 20.0]},
    {"id": 12, "image_id": 1, "category_id": 7, "bbox": [40.0, 20.0, 20.0, 30.0]},
    {"id": 21, "image_id": 2, "category_id": 42, "bbox": [5.0, 5.0, 40.0, 40.0]},
    {"id": 22, "image_id": 2, "category_id": 7, "bbox": [50.0, 10.0, 30.0, 30.0], "iscrowd": 1},
    {"id": 41, "image_id": 4, "category_id": 3, "bbox": [8.0, 8.0, 30.0, 30.0]},
    {"id": 42, "image_id": 4, "category_id": 7, "bbox": [30.0, 30.0, 20.0, 20.0]},
    {"id": 51, "image_id": 5, "category_id": 42, "bbox": [10.0, 10.0, 40.0, 50.0]},
]


def tiny_coco_dict() -> dict:
    anns = copy.deepcopy(TINY_ANNOTATIONS)
    for a in anns:
        a.setdefault("iscrowd", 0)
        a["area"] = a["bbox"][2] * a["bbox"][3]
    return {"info": {"description": "tiny test set"}, "images": copy.deepcopy(TINY_IMAGES),
            "annotations": anns, "categories": copy.deepcopy(TINY_CATEGORIES)}


def write_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> Path:
    """A small random-texture image (JPEG unless the suffix says otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    arr = rng.randint(0, 256, size=(height, width, 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return path


def write_coco(root: Path, coco: dict, name: str = "annotations.json", images: bool = True) -> Path:
    """Write `coco` as root/name and (optionally) a JPEG of the stated size for every image entry."""
    root.mkdir(parents=True, exist_ok=True)
    if images:
        for i, im in enumerate(coco.get("images", [])):
            if isinstance(im, dict) and isinstance(im.get("file_name"), str):
                w, h = int(im.get("width") or 64), int(im.get("height") or 64)
                write_image(root / im["file_name"], w, h, seed=i)
    path = root / name
    path.write_text(json.dumps(coco))
    return path


# ------------------------------------------------------------------------------------------------ shapes set
SHAPE_CATEGORIES = [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}]  # non-contiguous ids on purpose
SHAPE_COLOURS = {3: (230, 40, 40), 7: (40, 200, 60)}

# Small sampling sizes: the defaults are sized for 320-640 px images; these keep a step ~0.1 s on one core.
CHEAP_MODEL_FIELDS = dict(rpn_batch_size_per_image=64, box_batch_size_per_image=32,
                          rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                          rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)
CHEAP_MODEL = [a for k, v in CHEAP_MODEL_FIELDS.items() for a in ("--set", f"model.{k}={v}")]
CHEAP_SSDDET = ["--set", "ssddet.sampler=small", "--set", "ssddet.trunk_dim=64",
                "--set", "ssddet.num_negatives=32"]


def write_shapes_coco(root: Path, n_train: int = 4, n_val: int = 2, size: int = 96, seed: int = 0) -> Path:
    """A COCO dataset directory of `size` px PNGs, each with two filled rectangles (categories 3 and 7) on a
    dark background; `split` field train/val. -> root."""
    rng = np.random.RandomState(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_train + n_val):
        im = Image.new("RGB", (size, size), (20, 20, 30))
        draw = ImageDraw.Draw(im)
        for j, cat in enumerate((3, 7) if i % 2 == 0 else (7, 3)):
            w, h = (int(v) for v in rng.randint(size // 4, size // 2 - 4, 2))
            x = int(rng.randint(1, size // 2 - w + 1)) + j * (size // 2)  # left / right half: no overlap
            y = int(rng.randint(1, size - h - 1))
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=SHAPE_COLOURS[cat])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h)})
        name = f"images/{i:03d}.png"
        im.save(root / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size,
                       "split": "train" if i < n_train else "val"})
    coco = {"images": images, "annotations": anns, "categories": SHAPE_CATEGORIES}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def train_args(data: Path, out: Path, method: str = "vanilla", epochs: int = 2, batch: int = 2,
               *extra: str) -> list[str]:
    args = ["train", "--data", str(data), "--out", str(out), "--method", method, "--epochs", str(epochs),
            "--min-size", "64", "--max-size", "96", "--workers", "0", "--batch-size", str(batch),
            *CHEAP_MODEL]
    if method == "ssddet":
        args += CHEAP_SSDDET
    return [*args, *extra]


def crash_after_first_epoch(monkeypatch, exc: type[BaseException]) -> None:
    """Make every Trainer raise `exc` right after writing epoch 1's checkpoint (a run killed there)."""
    orig_save = train_mod.Trainer._save

    def save_then_crash(self, metrics, **kw):
        orig_save(self, metrics, **kw)
        if self.epoch == 1:
            raise exc

    monkeypatch.setattr(train_mod.Trainer, "_save", save_then_crash)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def step_grad_norms(out: Path) -> list[float | None]:
    """grad_norm of each logged train record (LOG_EVERY=1: every step); None for a step that fp16's GradScaler
    skipped (amp_skipped=1: inf/NaN gradients at its scale, so the logged norm is inf or NaN by design). Any other
    non-finite value, or a non-finite norm without the skip, fails the calling test."""
    norms = []
    for r in (r for r in read_log(out) if r["kind"] == "train"):
        bad = sorted(k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v))
        skipped = r.get("amp_skipped") == 1.0
        assert set(bad) <= ({"grad_norm"} if skipped else set()), (r["iteration"], bad, r)
        norms.append(None if skipped else r["grad_norm"])
    return norms


# ------------------------------------------------------------------------------------------------ comparisons
def identical(a, b) -> bool:
    """Bit-equal tensors (values, shape, dtype; NaN == NaN: some buffers are NaN-filled on purpose), also
    inside the dicts/lists of a module's extra state."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(
            ((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def assert_same_state(sa: dict, sb: dict) -> None:
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not identical(sa[k], sb[k])]
    assert not diff, f"{len(diff)}/{len(sa)} tensors differ, e.g. {diff[:3]}"


def assert_same_weights(a: Path, b: Path) -> None:
    assert_same_state(torch.load(a, map_location="cpu", weights_only=True)["model"],
                      torch.load(b, map_location="cpu", weights_only=True)["model"])


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (registered in sys.modules: dataclasses resolve annotations through it)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
