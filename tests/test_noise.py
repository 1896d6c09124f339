"""OA-MIL box-noise generator (method.md section 1): exact stream, draw accounting, statistics, CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import ssddet
from ssddet.cli import main
from ssddet.data.coco import load_coco
from ssddet.data.noise import add_box_noise
from ssddet.errors import UserError

# BCCD as converted for the benchmarks: the `shared/` folder beside the repository (absent in a fresh clone)
BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd" / "annotations.json"


def make_coco(images: list[tuple[int, int, list]], cat_ids=(1,)) -> dict:
    """images: [(W, H, [bbox or (bbox, extra-fields dict)])] -> COCO dict, ids in order."""
    coco = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids]}
    aid = 1
    for iid, (w, h, boxes) in enumerate(images, start=1):
        coco["images"].append({"id": iid, "file_name": f"{iid}.jpg", "width": w, "height": h})
        for b in boxes:
            bbox, extra = (b if isinstance(b, tuple) else (b, {}))
            ann = {"id": aid, "image_id": iid, "category_id": cat_ids[0], "bbox": list(bbox),
                   "area": float(bbox[2]) * float(bbox[3]) if len(bbox) == 4 else 1.0, "iscrowd": 0}
            ann.update(extra)
            coco["annotations"].append(ann)
            aid += 1
    return coco


def hand_noisy(bbox, W, H, r, rs):
    """The protocol written out by hand: 4 uniforms in the order dx, dy, w-scale, h-scale, clip, fallback."""
    x, y, w, h = bbox
    cx, cy = x + w / 2.0, y + h / 2.0
    u_dx = -r + 2 * r * rs.random_sample()
    u_dy = -r + 2 * r * rs.random_sample()
    u_w = -r + 2 * r * rs.random_sample()
    u_h = -r + 2 * r * rs.random_sample()
    ncx, ncy = cx + w * u_dx, cy + h * u_dy
    nw, nh = w * (1 + u_w), h * (1 + u_h)
    x1, y1 = max(0.0, ncx - nw / 2), max(0.0, ncy - nh / 2)
    x2, y2 = min(ncx + nw / 2, W - 1), min(ncy + nh / 2, H - 1)
    if x2 <= x1 or y2 <= y1:
        return list(bbox)
    return [x1, y1, x2 - x1, y2 - y1]


def iou_xywh(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def bboxes(coco):
    return [a["bbox"] for a in coco["annotations"]]


HAND_CASE = [
    (200, 150, [[10, 20, 50, 40], [150, 100, 49, 49], [0, 0, 30, 12.5], [80.5, 60.25, 20, 70]]),
    (120, 100, [[100, 5, 19, 30], [33, 44, 12, 8]]),
]


@pytest.mark.parametrize("level,seed", [(0.3, 45), (0.4, 7), (0.1, 0)])
def test_matches_hand_computation(level, seed):
    coco = make_coco(HAND_CASE)
    noisy, ious = add_box_noise(coco, level, seed)
    rs = np.random.RandomState(seed)
    expected = [hand_noisy(b, W, H, level, rs) for W, H, boxes in HAND_CASE for b in boxes]
    got = bboxes(noisy)
    np.testing.assert_allclose(np.array(got), np.array(expected), atol=1e-3)
    clean = [b for _, _, boxes in HAND_CASE for b in boxes]
    assert [a["true_bbox"] for a in noisy["annotations"]] == clean
    np.testing.assert_allclose(ious, [iou_xywh(g, c) for g, c in zip(expected, clean)], atol=1e-6)
    for a in noisy["annotations"]:
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
    assert bboxes(coco) == clean  # the input is not modified


def test_deterministic_and_seed_dependent():
    coco = make_coco(HAND_CASE)
    a, ia = add_box_noise(coco, 0.4, 45)
    b, ib = add_box_noise(coco, 0.4, 45)
    c, _ = add_box_noise(coco, 0.4, 46)
    assert bboxes(a) == bboxes(b)
    np.testing.assert_array_equal(ia, ib)
    assert all(not np.allclose(x, y) for x, y in zip(bboxes(a), bboxes(c)))


def test_level_04_offsets_are_twice_level_02():
    W, H, box = 1000, 1000, [450.0, 470.0, 100.0, 60.0]  # interior: no clipping at r <= 0.4
    coco = make_coco([(W, H, [box, [300.0, 300.0, 80.0, 90.0]])])
    n2, _ = add_box_noise(coco, 0.2, 45)
    n4, _ = add_box_noise(coco, 0.4, 45)
    for b2, b4, clean in zip(bboxes(n2), bboxes(n4), bboxes(coco)):
        c = np.array([clean[0] + clean[2] / 2, clean[1] + clean[3] / 2])
        off2 = np.array([b2[0] + b2[2] / 2, b2[1] + b2[3] / 2]) - c
        off4 = np.array([b4[0] + b4[2] / 2, b4[1] + b4[3] / 2]) - c
        np.testing.assert_allclose(off4, 2 * off2, rtol=1e-9, atol=1e-9)
        s2 = np.array(b2[2:]) / np.array(clean[2:]) - 1
        s4 = np.array(b4[2:]) / np.array(clean[2:]) - 1
        np.testing.assert_allclose(s4, 2 * s2, rtol=1e-9, atol=1e-9)
        assert np.abs(off2).max() > 0


def test_distribution_statistics():
    r, n = 0.4, 3000
    rng = np.random.RandomState(123)
    sizes = rng.uniform(20, 100, size=(n, 2))
    boxes = [[500 - w / 2, 500 - h / 2, w, h] for w, h in sizes]  # centred in a big image: never clipped
    coco = make_coco([(1000, 1000, boxes)])
    noisy, ious = add_box_noise(coco, r, 45)
    clean, got = np.array(boxes), np.array(bboxes(noisy))
    rel_dx = ((got[:, 0] + got[:, 2] / 2) - 500) / clean[:, 2]
    rel_dy = ((got[:, 1] + got[:, 3] / 2) - 500) / clean[:, 3]
    sw, sh = got[:, 2] / clean[:, 2], got[:, 3] / clean[:, 3]
    for rel in (rel_dx, rel_dy):
        assert np.abs(rel).max() <= r + 1e-9
        assert abs(rel.mean()) < 0.02  # mean centre shift ~ 0 (sd of the mean ~ 0.004)
        assert rel.std() == pytest.approx(2 * r / np.sqrt(12), rel=0.05)
    for s in (sw, sh):
        assert s.min() >= 1 - r - 1e-9 and s.max() <= 1 + r + 1e-9
        assert s.mean() == pytest.approx(1.0, abs=0.02)
        # uniform: each tenth of [1-r, 1+r] holds ~10% of the factors
        hist, _ = np.histogram(s, bins=10, range=(1 - r, 1 + r))
        assert hist.min() > 0.07 * n and hist.max() < 0.13 * n
    assert np.corrcoef(sw, sh)[0, 1] == pytest.approx(0, abs=0.08)  # independent w/h factors
    assert len(ious) == n
    assert 0.40 < ious.mean() < 0.52  # BCCD (with clipping) gives 0.463 at r=0.4


def test_degenerate_box_keeps_clean_but_consumes_four_draws():
    # x in [63.2, 64.2] on a 64-wide image: after noise at r=0.1, x1' >= 63.05 > W-1 = 63 -> degenerate
    degenerate = [63.2, 10.0, 1.0, 20.0]
    nxt = [10.0, 10.0, 30.0, 30.0]
    coco = make_coco([(64, 64, [degenerate, nxt])])
    noisy, ious = add_box_noise(coco, 0.1, 3)
    assert noisy["annotations"][0]["bbox"] == degenerate
    assert noisy["annotations"][0]["true_bbox"] == degenerate
    assert ious[0] == pytest.approx(1.0)
    rs = np.random.RandomState(3)
    rs.random_sample(4)  # the degenerate box's 4 draws
    np.testing.assert_allclose(noisy["annotations"][1]["bbox"], hand_noisy(nxt, 64, 64, 0.1, rs), atol=1e-3)
    # the same as when an ordinary interior box stood in the first place
    other, _ = add_box_noise(make_coco([(64, 64, [[5.0, 5.0, 20.0, 20.0], nxt])]), 0.1, 3)
    np.testing.assert_allclose(other["annotations"][1]["bbox"], noisy["annotations"][1]["bbox"], atol=1e-9)


@pytest.mark.parametrize("kind,ann", [
    ("crowd", ([20.0, 20.0, 30.0, 30.0], {"iscrowd": 1})),
    ("ignore", ([20.0, 20.0, 30.0, 30.0], {"ignore": 1})),
    ("w<1", [20.0, 20.0, 0.5, 30.0]),
    ("h<1", [20.0, 20.0, 30.0, 0.9]),
    ("outside image", [150.0, 20.0, 30.0, 30.0]),
    ("touching edge only", [100.0, 20.0, 30.0, 30.0]),
    ("unknown category", ([20.0, 20.0, 30.0, 30.0], {"category_id": 99})),
    ("area 0", ([20.0, 20.0, 30.0, 30.0], {"area": 0})),
    ("negative area", ([20.0, 20.0, 30.0, 30.0], {"area": -5.0})),
    ("NaN", [20.0, float("nan"), 30.0, 30.0]),
    ("strings", ["20", "20", "30", "30"]),
    ("3 numbers", [20.0, 20.0, 30.0]),
])
def test_dropped_boxes_are_untouched_and_consume_no_draws(kind, ann):
    a, b = [5.0, 5.0, 40.0, 30.0], [50.0, 40.0, 25.0, 35.0]
    ref, _ = add_box_noise(make_coco([(100, 100, [a, b])]), 0.4, 11)
    coco = make_coco([(100, 100, [a, ann, b])])
    noisy, ious = add_box_noise(coco, 0.4, 11)
    assert len(ious) == 2, kind
    middle = noisy["annotations"][1]
    assert json.dumps(middle["bbox"]) == json.dumps(coco["annotations"][1]["bbox"]), kind  # untouched
    assert noisy["annotations"][0]["bbox"] == ref["annotations"][0]["bbox"]
    assert noisy["annotations"][2]["bbox"] == ref["annotations"][1]["bbox"], kind  # no draws consumed


def test_existing_true_bbox_is_kept_when_renoising():
    coco = make_coco(HAND_CASE)
    once, _ = add_box_noise(coco, 0.2, 1)
    twice, _ = add_box_noise(once, 0.2, 2)
    assert [a["true_bbox"] for a in twice["annotations"]] == bboxes(coco)
    assert bboxes(twice) != bboxes(once)


def test_info_records_generation():
    coco = make_coco(HAND_CASE)
    coco["info"] = {"description": "x"}
    noisy, ious = add_box_noise(coco, 0.3, 9)
    bn = noisy["info"]["box_noise"]
    assert bn["level"] == 0.3 and bn["seed"] == 9
    assert bn["ssddet_version"] == ssddet.__version__
    assert bn["boxes_perturbed"] == len(ious) == 6
    assert noisy["info"]["description"] == "x"
    assert "box_noise" not in coco["info"]


def test_level_zero_is_clean_copy():
    coco = make_coco(HAND_CASE)
    noisy, ious = add_box_noise(coco, 0.0, 45)
    assert bboxes(noisy) == bboxes(coco) and len(ious) == 0


def _mean_iou(text: str) -> float:
    m = re.search(r"mean IoU\(noisy, clean\) = ([0-9.]+)", text)
    assert m, text
    return float(m.group(1))


def test_cli_round_trip(tiny_coco, tmp_path, capsys):
    root, ann, coco = tiny_coco
    out = tmp_path / "sub" / "noisy.json"
    assert main(["noise", "--ann", str(ann), "--noise", "0.4", "--noise-seed", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    written = json.loads(out.read_text())
    expected, ious = add_box_noise(coco, 0.4, 5)
    assert written == expected  # floats survive the JSON round trip exactly
    assert _mean_iou(printed) == pytest.approx(float(ious.mean()), abs=1e-4)
    data = load_coco(out, root)  # the noisy file loads, with the clean boxes alongside
    rec = {r.image_id: r for r in data.records}[1]
    np.testing.assert_allclose(rec.true_boxes, [[10, 10, 40, 30], [40, 20, 60, 50]])
    assert not np.allclose(rec.boxes, rec.true_boxes)


def test_cli_split_only_perturbs_that_split(tiny_coco, tmp_path, capsys):
    root, ann, coco = tiny_coco
    out = tmp_path / "noisy.json"
    assert main(["noise", "--ann", str(ann), "--noise", "0.3", "--noise-seed", "2", "--split", "train",
                 "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    train_ids = {im["id"] for im in coco["images"] if im["split"] == "train"}
    for clean, a in zip(coco["annotations"], written["annotations"]):
        if a["image_id"] in train_ids and not a["iscrowd"]:
            assert a["bbox"] != clean["bbox"] and a["true_bbox"] == clean["bbox"]
        else:
            assert a["bbox"] == clean["bbox"]
            if a["image_id"] not in train_ids:
                assert a == clean  # val/test copied unchanged
    expected, _ = add_box_noise(coco, 0.3, 2, image_ids=sorted(train_ids))
    assert written == expected
    assert "3 boxes perturbed" in capsys.readouterr().out


@pytest.mark.skipif(not BCCD.is_file(), reason="needs BCCD converted to ../shared/data/bccd (see docs/benchmarks.md)")
@pytest.mark.parametrize("level,mean_iou", [("0.2", 0.6733), ("0.4", 0.4629)])
def test_bccd_reference_mean_iou(level, mean_iou, capsys):
    assert main(["noise", "--ann", str(BCCD), "--noise-seed", "45", "--noise", level]) == 0
    assert round(_mean_iou(capsys.readouterr().out), 3) == round(mean_iou, 3)


@pytest.mark.parametrize("level", ["1.0", "1.5", "-0.1", "nan"])
def test_cli_level_out_of_range(tiny_coco, level, capsys):
    _, ann, _ = tiny_coco
    with pytest.raises(SystemExit) as e:
        main(["noise", "--ann", str(ann), "--noise", level])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "noise level must be in [0, 1)" in err and "Traceback" not in err


@pytest.mark.parametrize("level", [1.0, -0.1, float("nan"), float("inf")])
def test_api_level_out_of_range(level):
    with pytest.raises(UserError, match=r"noise level must be in \[0, 1\)"):
        add_box_noise(make_coco(HAND_CASE), level, 45)


def test_cli_reads_missing_image_sizes_from_the_files_as_train_does(tiny_coco, tmp_path, capsys):
    """`ssddet noise` accepts what `train --noise` accepts: width/height missing from the JSON come from the
    image files (--images, default: the JSON's directory), and both give the same noisy boxes."""
    from helpers import tiny_coco_dict

    from ssddet.config import DataConfig
    from ssddet.data.boxes import xywh_to_xyxy
    from ssddet.data.splits import load_train_val

    root, _, coco = tiny_coco
    for im in coco["images"]:
        del im["width"], im["height"]
    sizeless = root / "sizeless.json"
    sizeless.write_text(json.dumps(coco))
    out = tmp_path / "noisy.json"
    args = ["noise", "--noise", "0.4", "--noise-seed", "5", "--split", "train", "--out", str(out)]
    assert main([*args, "--ann", str(sizeless)]) == 0
    expected, _ = add_box_noise(tiny_coco_dict(), 0.4, 5, image_ids=[1, 2, 3])  # the JSON with its sizes
    assert json.loads(out.read_text()) == expected
    # the training path perturbs the same boxes
    splits = load_train_val(DataConfig(train_ann=str(sizeless), noise=0.4, noise_seed=5))
    noisy = {a["id"]: a["bbox"] for a in expected["annotations"]}
    for r in splits.train_records:
        np.testing.assert_allclose(r.boxes, xywh_to_xyxy([noisy[i] for i in r.ann_ids.tolist()]).reshape(-1, 4),
                                   atol=1e-4)
    # a JSON away from its images: --images gives the root, else a clear error naming the unreadable file
    away = tmp_path / "elsewhere" / "ann.json"
    away.parent.mkdir()
    away.write_text(json.dumps(coco))
    capsys.readouterr()
    assert main([*args, "--ann", str(away), "--images", str(root)]) == 0
    assert json.loads(out.read_text()) == expected
    assert main([*args, "--ann", str(away)]) == 2
    err = capsys.readouterr().err
    assert (f"{away}: image 1 needs numeric width/height to add box noise: none in the JSON, and "
            f"{away.parent / 'images/a.jpg'} cannot be read (image root: --images DIR)") in err
