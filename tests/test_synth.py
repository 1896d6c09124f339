"""Tests for the built-in synthetic digits-on-photos detection set."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import ssddet
from ssddet.data import synth
from ssddet.data.boxes import aligned_iou_np

SMALL = dict(num_train=4, num_val=2, num_test=2, image_size=(96, 96), min_digit=20, max_digit=40)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    path = synth.make_synth(out, seed=3, **SMALL)
    return out, path, json.loads(path.read_text())


def _pixels(out, coco):
    return [np.asarray(Image.open(out / im["file_name"])) for im in coco["images"]]


def test_structure(small_set):
    out, path, coco = small_set
    assert path == out / "annotations.json"
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    assert [c["name"] for c in coco["categories"]] == [str(i) for i in range(10)]
    assert Counter(im["split"] for im in coco["images"]) == {"train": 4, "val": 2, "test": 2}
    assert coco["info"]["generator"] == "ssddet.data.synth"
    assert coco["info"]["seed"] == 3
    assert coco["info"]["version"] == ssddet.__version__
    ids = [im["id"] for im in coco["images"]]
    assert len(set(ids)) == len(ids)
    assert coco["images"][0]["file_name"] == "images/train_00000.jpg"
    assert coco["images"][-1]["file_name"] == "images/test_00001.jpg"
    for im in coco["images"]:
        arr = np.asarray(Image.open(out / im["file_name"]))
        assert arr.shape == (im["height"], im["width"], 3) == (96, 96, 3)


def test_annotations(small_set):
    _, _, coco = small_set
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    assert set(per_image) == set(sizes)  # every image has at least one object
    assert max(per_image.values()) <= 10
    ann_ids = [a["id"] for a in coco["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes[a["image_id"]]
        assert all(isinstance(v, float) for v in a["bbox"])
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
        assert a["area"] == pytest.approx(w * h)
        assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= 10


def test_box_is_tight_extent_of_mask():
    rs = np.random.RandomState(0)
    digits, _ = synth._load_digits()
    for i in range(20):
        prop = synth._propose(rs, digits[i], (96, 80), 20, 60)
        assert prop is not None
        mask, window, (x0, y0, x1, y1) = prop
        alpha = np.zeros((80, 96), dtype=np.float32)
        alpha[window] = mask  # the window lies inside the canvas and holds the whole mask
        ys, xs = np.nonzero(alpha)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_pairwise_overlap_capped(small_set):
    _, _, coco = small_set
    by_img = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        by_img.setdefault(a["image_id"], []).append((x, y, x + w, y + h))
    for boxes in by_img.values():
        for i in range(len(boxes)):
            for j in range(i):
                assert aligned_iou_np(boxes[i], boxes[j]) <= synth.MAX_PAIR_IOU + 1e-9


def test_deterministic(small_set, tmp_path):
    out, path, coco = small_set
    path2 = synth.make_synth(tmp_path / "again", seed=3, **SMALL)
    assert path2.read_bytes() == path.read_bytes()
    for a, b in zip(_pixels(out, coco), _pixels(tmp_path / "again", coco)):
        assert np.array_equal(a, b)


def test_seed_changes_output(small_set, tmp_path):
    out, path, coco = small_set
    path2 = synth.make_synth(tmp_path / "other", seed=4, **SMALL)
    coco2 = json.loads(path2.read_text())
    assert coco2["annotations"] != coco["annotations"]
    assert not np.array_equal(_pixels(out, coco)[0], _pixels(tmp_path / "other", coco2)[0])


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SSDDET_HOME", str(tmp_path))
    assert synth.default_data_dir() == tmp_path / "synth-v4"
    monkeypatch.delenv("SSDDET_HOME")
    assert synth.default_data_dir().parts[-3:] == (".cache", "ssddet", "synth-v4")


def test_ensure_default_data_creates_then_reuses(monkeypatch, tmp_path):
    monkeypatch.setenv("SSDDET_HOME", str(tmp_path))
    small = dict(num_train=2, num_val=1, num_test=1, image_size=(64, 64), min_digit=16, max_digit=30)
    d = synth.ensure_default_data(**small)
    assert d == tmp_path / "synth-v4"
    ann = d / "annotations.json"
    assert len(json.loads(ann.read_text())["images"]) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["synth-v4"]  # temp dir renamed away
    mtime = ann.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("should not regenerate")

    monkeypatch.setattr(synth, "make_synth", boom)
    assert synth.ensure_default_data() == d
    assert ann.stat().st_mtime_ns == mtime


def test_ensure_default_data_interrupted_leaves_nothing(monkeypatch, tmp_path):
    def interrupted(out_dir, **kwargs):
        (out_dir / "images").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "make_synth", interrupted)
    target = tmp_path / "set"
    with pytest.raises(KeyboardInterrupt):
        synth.ensure_default_data(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_ensure_default_data_refuses_foreign_dir(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "junk.txt").write_text("x")
    with pytest.raises(FileExistsError):
        synth.ensure_default_data(tmp_path / "set")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synth.make_synth(tmp_path, min_objects=3, max_objects=2)


def test_glyph_pool_keeps_the_most_typical_per_class():
    from sklearn.datasets import load_digits

    imgs, labels = synth._load_digits(3)
    assert imgs.shape == (30, 8, 8) and imgs.dtype == np.uint8
    assert Counter(labels.tolist()) == {c: 3 for c in range(10)}
    assert len(synth._load_digits()[0]) == 1797
    d = load_digits()
    zeros = d.images[d.target == 0]
    nearest = np.argsort(((zeros - zeros.mean(axis=0)) ** 2).sum(axis=(1, 2)))[:3]
    want = np.clip(zeros[nearest] * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    assert np.array_equal(imgs[labels == 0], want)


def test_class_hues_colour_each_digit_by_its_class(tmp_path):
    import colorsys

    path = synth.make_synth(tmp_path, seed=1, num_train=6, num_val=0, num_test=0, class_hues=True,
                            min_objects=1, max_objects=1)
    coco = json.loads(path.read_text())
    for im, arr in zip(coco["images"], _pixels(tmp_path, coco)):
        (a,) = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        x, y, w, h = (int(round(v)) for v in a["bbox"])
        crop = arr[y:y + h, x:x + w].reshape(-1, 3).astype(float) / 255
        bright = crop[crop.max(axis=1) > 0.8]  # solid stroke pixels (the dimmed photo stays <= 0.5)
        hue = colorsys.rgb_to_hsv(*np.median(bright, axis=0))[0]
        want = (a["category_id"] - 1) / 10
        assert min(abs(hue - want), 1 - abs(hue - want)) < 0.06, (a["category_id"], hue)


def test_background_contrast_flattens_the_photo():
    rs = [np.random.RandomState(0) for _ in range(2)]
    bg = synth._load_backgrounds(("camera",))[0][1]
    full = synth._random_crop(rs[0], bg, (64, 64), 1.0)
    flat = synth._random_crop(rs[1], bg, (64, 64), 0.25)
    assert np.allclose(flat.mean(axis=(0, 1)), full.mean(axis=(0, 1)), atol=1e-5)
    assert np.allclose(flat - flat.mean(axis=(0, 1)), 0.25 * (full - full.mean(axis=(0, 1))), atol=1e-5)


def test_cli_synth_writes_the_set_train_would_generate(tmp_path, monkeypatch):
    """`ssddet data synth` and the set `ssddet train` generates share make_synth's defaults."""
    from ssddet.cli import main

    seen = {}
    real = synth.make_synth

    def spy(out_dir, **kw):
        seen.update(kw)
        return real(out_dir, **{**kw, "num_train": 1, "num_val": 1, "num_test": 0})

    monkeypatch.setattr(synth, "make_synth", spy)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--seed", "0"]) == 0
    # sizes not given are left to the generator: its own defaults, which `ssddet train` uses too
    assert not {"num_train", "num_val", "num_test"} & set(seen)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--num-val", "9"]) == 0
    assert seen["num_val"] == 9
    assert (tmp_path / "s" / "annotations.json").is_file()


def test_cli_synth_help_states_the_generators_sizes(capsys):
    import inspect

    from ssddet.cli import main

    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for k, v in inspect.signature(synth.make_synth).parameters.items():
        if k in ("num_train", "num_val", "num_test"):
            assert f"--{k.replace('_', '-')} {k.upper()} " in text and f"the built-in set's, {v.default})" in text, k


def test_composition_is_pinned_to_the_data_version():
    """synth-v4's pixels and boxes, pinned (the hash of the full-canvas compositing before 2026-12-07, which the
    per-window compositing reproduces byte for byte): a change to the generator that moves one pixel changes the
    set every recorded built-in result was measured on, and must bump DATA_VERSION (and this hash) instead."""
    import hashlib
    import json

    assert synth.DATA_VERSION == "synth-v4"
    rs = np.random.RandomState(3)
    bgs = synth._load_backgrounds(synth.BACKGROUND_NAMES)
    digits, labels = synth._load_digits(None)
    h = hashlib.sha256()
    for _ in range(4):
        img, objs = synth._compose_image(rs, bgs, digits, labels, (96, 80), (4, 10), (16, 40), 0.4, True)
        h.update(img.tobytes())
        h.update(json.dumps([(lab, box, round(float(v), 6)) for lab, box, v in objs]).encode())
    assert h.hexdigest() == "b7a236f7bce0bafb7a3cbc0142a8b1566a48a72fd3ab54a454b8324ae31988ba"
