"""The noise simulator's other kinds (method.md section 1): partial box noise (`fraction`) and the label errors
(missing, spurious, swapped annotations): exact counts, seeds, independence of the kinds, what stays untouched,
validation, the CLI and the training split loader."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from helpers import write_coco

from ssddet.cli import main
from ssddet.config import DataConfig
from ssddet.config_overrides import train_config
from ssddet.data.boxes import aligned_iou_np, xywh_to_xyxy
from ssddet.data.coco import parse_coco
from ssddet.data.label_noise import SPURIOUS_MAX_IOU, add_label_noise
from ssddet.data.noise import add_box_noise, perturb_box
from ssddet.data.simulate import noisy_copy
from ssddet.data.splits import load_train_val
from ssddet.errors import UserError

CATS = (1, 2, 5)
GRID = [[10.0, 10.0, 30.0, 25.0], [60.0, 10.0, 25.0, 30.0], [110.0, 10.0, 35.0, 20.0], [10.0, 80.0, 20.0, 40.0],
        [60.0, 80.0, 40.0, 30.0]]
TRAIN_IDS = [1, 2, 3, 4, 5]
ELIGIBLE = 25  # 5 train images x 5 grid boxes (the crowd and the thin box are not eligible)


def scene() -> dict:
    """Six 200x160 images (1-5 train, 6 val), five separate boxes each with a background strip free on the right
    and at the bottom, categories 1/2/5; image 1 also holds a crowd box, image 2 a box under 1 px wide."""
    coco = {"info": {"description": "scene"}, "images": [], "annotations": [],
            "categories": [{"id": c, "name": f"c{c}"} for c in CATS]}
    for iid in range(1, 7):
        coco["images"].append({"id": iid, "file_name": f"{iid}.jpg", "width": 200, "height": 160,
                               "split": "train" if iid <= 5 else "val"})
        extra = {1: [([150.0, 100.0, 30.0, 30.0], {"iscrowd": 1})], 2: [([5.0, 150.0, 0.5, 5.0], {})]}.get(iid, [])
        for j, (bbox, fields) in enumerate([(b, {}) for b in GRID] + extra):
            coco["annotations"].append({"id": 100 * iid + j, "image_id": iid, "category_id": CATS[j % 3],
                                        "bbox": list(bbox), "area": bbox[2] * bbox[3], "iscrowd": 0, **fields})
    return coco


def noisy(level=0.4, seed=45, **kinds) -> dict:
    return noisy_copy(scene(), level, seed, ".", "train", **kinds)[0]


def by_id(anns) -> dict:
    return {a["id"]: a for a in anns}


def real(coco) -> list[dict]:
    return [a for a in coco["annotations"] if not a.get("spurious")]


def test_all_kinds_off_is_todays_output():
    """Defaults and explicit "off" values give the file `add_box_noise` always gave, byte for byte."""
    raw = scene()
    today, ious = add_box_noise(raw, 0.4, 45, image_ids=TRAIN_IDS)
    for kwargs in ({}, dict(fraction=1.0, missing=0.0, spurious=0.0, swap=0.0)):
        got, got_ious = noisy_copy(raw, 0.4, 45, ".", "train", **kwargs)
        assert json.dumps(got) == json.dumps(today)
        np.testing.assert_array_equal(got_ious, ious)
    assert json.dumps(add_box_noise(raw, 0.4, 45, image_ids=TRAIN_IDS, fraction=1.0)[0]) == json.dumps(today)
    assert raw == scene()  # the input is not modified
    assert add_label_noise(raw) == raw


def test_fraction_noises_an_exact_seeded_subset_from_the_oamil_stream():
    raw = scene()
    out, ious = add_box_noise(raw, 0.4, 45, image_ids=TRAIN_IDS, fraction=0.5)
    anns, clean = out["annotations"], raw["annotations"]
    chosen = [a for a in anns if a.get("noised")]
    assert len(chosen) == len(ious) == 13  # round(0.5 x 25), halves up
    assert out["info"]["box_noise"]["fraction"] == 0.5 and out["info"]["box_noise"]["boxes_eligible"] == ELIGIBLE
    # the chosen boxes take the OA-MIL draws in order, four each, as if they were the only boxes
    rs = np.random.RandomState(45)
    for a in chosen:
        want = perturb_box(xywh_to_xyxy(a["true_bbox"]), 0.4, 200, 160, rs)
        np.testing.assert_allclose(xywh_to_xyxy(a["bbox"]), want, atol=1e-9)
    # every other box is exact; train annotations carry true_bbox and the flag, val ones are bit-identical
    for a, c in zip(anns, clean):
        if c["image_id"] in TRAIN_IDS:
            assert a["true_bbox"] == c["bbox"] and isinstance(a["noised"], bool)
            if not a["noised"]:
                assert json.dumps(a) == json.dumps({**c, "true_bbox": c["bbox"], "noised": False})
        else:
            assert json.dumps(a) == json.dumps(c)
    assert not any(a["noised"] for a in anns if a.get("iscrowd") or a["bbox"][2] < 1)  # never the ineligible
    # the subset is the seed's, whatever the level; another seed picks another one
    flags = [a.get("noised") for a in anns]
    assert [a.get("noised") for a in add_box_noise(raw, 0.2, 45, image_ids=TRAIN_IDS, fraction=0.5)[0][
        "annotations"]] == flags
    assert [a.get("noised") for a in add_box_noise(raw, 0.4, 46, image_ids=TRAIN_IDS, fraction=0.5)[0][
        "annotations"]] != flags


@pytest.mark.parametrize("fraction,count", [(0.0, 0), (0.1, 3), (0.5, 13), (1.0, 25)])
def test_fraction_counts(fraction, count):
    out, ious = add_box_noise(scene(), 0.4, 45, image_ids=TRAIN_IDS, fraction=fraction)
    assert len(ious) == count
    assert sum(bool(a.get("noised")) for a in out["annotations"]) == (count if fraction < 1 else 0)  # 1: no flag


def test_missing_moves_an_exact_share_to_missing_annotations():
    raw = scene()
    out = add_label_noise(raw, 45, TRAIN_IDS, missing=0.2)
    gone = out["missing_annotations"]
    assert len(gone) == 5 and len(out["annotations"]) == len(raw["annotations"]) - 5
    assert {a["image_id"] for a in gone} <= set(TRAIN_IDS) and not any(a.get("iscrowd") for a in gone)
    clean = by_id(raw["annotations"])
    for a in out["annotations"] + gone:  # nothing else changes: every annotation bit-identical, kept or removed
        assert json.dumps(a) == json.dumps(clean[a["id"]])
    assert sorted(by_id(out["annotations"]) | by_id(gone)) == sorted(clean)
    assert out["info"]["label_noise"]["annotations_missing"] == 5
    assert "missing_annotations" not in add_label_noise(raw, 45, TRAIN_IDS, swap=0.2)


def test_swap_changes_the_class_of_an_exact_share():
    raw = scene()
    out = add_label_noise(raw, 45, TRAIN_IDS, swap=0.2)
    clean = by_id(raw["annotations"])
    swapped = [a for a in out["annotations"] if a.get("true_category_id", a["category_id"]) != a["category_id"]]
    assert len(swapped) == 5
    for a in out["annotations"]:
        c = clean[a["id"]]
        if a["image_id"] not in TRAIN_IDS:
            assert json.dumps(a) == json.dumps(c)
        elif a in swapped:
            assert a["true_category_id"] == c["category_id"] and a["category_id"] in CATS
            assert {**a, "category_id": c["category_id"]} == {**c, "true_category_id": c["category_id"]}
        else:
            assert json.dumps(a) == json.dumps({**c, "true_category_id": c["category_id"]})


def test_spurious_boxes_lie_on_background_with_a_real_size():
    raw = scene()
    out = add_label_noise(raw, 45, TRAIN_IDS, spurious=0.1)
    added = [a for a in out["annotations"] if a.get("spurious")]
    assert len(added) == 3  # round(0.1 x 25), halves up
    assert out["annotations"][:len(raw["annotations"])] == raw["annotations"]  # appended, the others untouched
    ids = [a["id"] for a in out["annotations"]]
    assert len(set(ids)) == len(ids)
    for a in added:
        assert a["image_id"] in TRAIN_IDS and a["category_id"] in CATS and "true_bbox" not in a
        assert a["bbox"][2:] in [b[2:] for b in GRID]  # the size of a real box of the set
        others = [b["bbox"] for b in out["annotations"] if b["image_id"] == a["image_id"] and b is not a]
        box = xywh_to_xyxy(a["bbox"])
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= 200 and box[3] <= 160
        assert aligned_iou_np(box[None], xywh_to_xyxy(others)).max() < SPURIOUS_MAX_IOU


def test_no_room_for_a_spurious_box_is_a_clear_error():
    coco = {"images": [{"id": 1, "width": 50, "height": 50}], "categories": [{"id": 1}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500}]}
    with pytest.raises(UserError, match=r"no background spot \(IoU < 0.1 with every box\)"):
        add_label_noise(coco, spurious=1.0)


@pytest.mark.parametrize("kinds", [dict(fraction=0.5), dict(missing=0.2), dict(spurious=0.1), dict(swap=0.2),
                                   dict(fraction=0.3, missing=0.1, spurious=0.1, swap=0.1)])
def test_seeded(kinds):
    assert noisy(**kinds) == noisy(**kinds)
    assert noisy(**kinds) != noisy(seed=46, **kinds)


def test_kinds_compose_and_do_not_change_one_another():
    both = noisy(fraction=0.5, missing=0.2, spurious=0.1, swap=0.2)
    boxes, missing, spurious, swap = (noisy(fraction=0.5), noisy(None, missing=0.2), noisy(None, spurious=0.1),
                                      noisy(None, swap=0.2))
    info = both["info"]["label_noise"]
    assert (info["annotations_missing"], info["boxes_spurious"], info["annotations_swapped"]) == (5, 3, 5)
    assert both["info"]["box_noise"]["boxes_perturbed"] == 13
    everything = by_id(real(both) + both["missing_annotations"])
    for a in boxes["annotations"]:  # the same boxes, noised or not, whatever else happened to the annotation
        assert (everything[a["id"]]["bbox"], everything[a["id"]].get("noised")) == (a["bbox"], a.get("noised"))
    assert [a["id"] for a in both["missing_annotations"]] == [a["id"] for a in missing["missing_annotations"]]
    assert [a for a in both["annotations"] if a.get("spurious")] == [
        {**a, "noised": False} for a in spurious["annotations"] if a.get("spurious")]
    assert {i: a["category_id"] for i, a in everything.items() if "true_category_id" in a} == {
        a["id"]: a["category_id"] for a in swap["annotations"] if "true_category_id" in a}
    val = [a for a in scene()["annotations"] if a["image_id"] not in TRAIN_IDS]
    assert [a for a in both["annotations"] if a["image_id"] not in TRAIN_IDS] == val  # only the chosen split


def test_the_loader_uses_the_evaluation_fields_for_statistics_only():
    """Stripping `noised`, `spurious`, `true_category_id` and `missing_annotations` changes no record; `true_bbox`
    feeds only `true_boxes` (an image with a spurious box, which has no clean box, has none)."""
    out = noisy(fraction=0.5, missing=0.2, spurious=0.1, swap=0.2)
    stripped = copy.deepcopy(out)
    del stripped["missing_annotations"]
    for a in stripped["annotations"]:
        for key in ("noised", "spurious", "true_category_id", "true_bbox"):
            a.pop(key, None)
    got, plain = parse_coco(out, "noisy", "."), parse_coco(stripped, "stripped", ".")
    assert not got.warnings
    with_spurious = {a["image_id"] for a in out["annotations"] if a.get("spurious")}
    for r, p in zip(got.records, plain.records):
        for name in ("boxes", "labels", "ann_ids", "crowd_boxes", "crowd_labels"):
            np.testing.assert_array_equal(getattr(r, name), getattr(p, name))
        assert p.true_boxes is None
        assert (r.true_boxes is None) == (r.image_id in with_spurious or r.image_id not in TRAIN_IDS)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), True, "0.5"])
def test_shares_are_validated(value):
    for kwargs in (dict(fraction=value), dict(missing=value), dict(spurious=value), dict(swap=value)):
        with pytest.raises(UserError, match=r"fraction must be a fraction in \[0, 1\], got"):
            noisy_copy(scene(), 0.4, 45, ".", **kwargs)
        name = "noise_" + next(iter(kwargs))
        config_error = (rf"^config field '{name}': expected a float" if isinstance(value, (bool, str)) else
                        rf"^data\.{name} must be a fraction in \[0, 1\], got")
        with pytest.raises(UserError, match=config_error):
            train_config(fields={name: value}, output="o")


def test_swap_needs_two_categories():
    coco = {"images": [{"id": 1, "width": 50, "height": 50}], "categories": [{"id": 1}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25}]}
    with pytest.raises(UserError, match="swapping classes needs at least two categories, the file has 1"):
        add_label_noise(coco, swap=0.5)


def test_cli(tmp_path, capsys):
    path = write_coco(tmp_path / "scene", scene())
    out = tmp_path / "noisy.json"
    kinds = ["--fraction", "0.5", "--missing", "0.1", "--swap", "0.1", "--spurious", "0.05"]
    assert main(["noise", "--ann", str(path), "--split", "train", "--noise-seed", "7", *kinds, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "13 of 25 boxes perturbed" in printed
    assert "label noise: 3 of 25 annotations missing, 3 swapped, 1 spurious boxes added" in printed
    expected, _ = noisy_copy(scene(), 0.4, 7, ".", "train", fraction=0.5, missing=0.1, swap=0.1, spurious=0.05)
    assert json.loads(out.read_text()) == expected
    with pytest.raises(SystemExit) as e:
        main(["noise", "--ann", str(path), "--missing", "1.5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --missing: must be a fraction in [0, 1], got 1.5" in err and "Traceback" not in err


def test_training_split_loader_applies_the_config_fields(tmp_path):
    path = write_coco(tmp_path / "scene", scene())
    kinds = dict(fraction=0.5, missing=0.2, spurious=0.1, swap=0.2)
    cfg = train_config(fields={"train_ann": str(path), "noise": 0.4, **{f"noise_{k}": v for k, v in kinds.items()}},
                       output=str(tmp_path / "run"))
    assert (cfg.data.noise_fraction, cfg.data.noise_missing, cfg.data.noise_spurious, cfg.data.noise_swap) == (
        0.5, 0.2, 0.1, 0.2)
    splits = load_train_val(cfg.data)
    expected = noisy_copy(scene(), 0.4, 45, path.parent, "train", **kinds)[0]
    want = parse_coco(expected, "expected", path.parent)
    assert [r.image_id for r in splits.train_records] == TRAIN_IDS
    for r, w in zip(splits.train_records, want.records):
        np.testing.assert_array_equal(r.boxes, w.boxes)
        np.testing.assert_array_equal(r.labels, w.labels)
        np.testing.assert_array_equal(r.ann_ids, w.ann_ids)
    assert sum(len(r.boxes) for r in splits.train_records) == ELIGIBLE + 1 - 5 + 3  # + the thin box the loader keeps
    val = parse_coco(scene(), "clean", path.parent).records[-1]
    np.testing.assert_array_equal(splits.val_records[0].boxes, val.boxes)  # the val split stays clean
    # label errors without box noise: the boxes as given, no clean boxes claimed
    alone = load_train_val(DataConfig(train_ann=str(path), noise_missing=0.2))
    assert sum(len(r.boxes) for r in alone.train_records) == ELIGIBLE + 1 - 5
    assert all(r.true_boxes is None for r in alone.train_records)
    assert load_train_val(DataConfig(train_ann=str(path))).train_records[0].true_boxes is None


def test_train_flags_set_the_fields():
    from ssddet.cli import build_parser
    from ssddet.config_overrides import config_from_args

    a = build_parser().parse_args(["train", "--out", "o", "--noise", "0.4", "--noise-fraction", "0.5",
                                   "--noise-missing", "0.1", "--noise-spurious", "0.05", "--noise-swap", "0.2"])
    d = config_from_args(a).data
    assert (d.noise_fraction, d.noise_missing, d.noise_spurious, d.noise_swap) == (0.5, 0.1, 0.05, 0.2)
    assert (DataConfig().noise_fraction, DataConfig().noise_missing) == (1.0, 0.0)
