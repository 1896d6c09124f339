"""Shared fixtures: a tiny COCO dataset (a few small JPEGs with boxes) written into tmp_path."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


@pytest.fixture
def tiny_coco(tmp_path) -> tuple[Path, Path, dict]:
    """-> (dataset dir, annotations.json path, the COCO dict written). Splits: 3 train (one without boxes),
    1 val, 1 test; categories 3, 7, 42; one crowd box in image 2."""
    coco = tiny_coco_dict()
    root = tmp_path / "tiny"
    path = write_coco(root, coco)
    return root, path, coco


@pytest.fixture()
def one_torch_thread():
    """Run a test's torch ops on one thread (training tests are tiny; thread start-up dominates)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
