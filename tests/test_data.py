"""COCO loading -> records -> torchvision targets; flip; splits; train/val loading with injected noise."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import tiny_coco_dict, write_coco, write_image

from ssddet.config import DataConfig
from ssddet.data.coco import load_coco
from ssddet.data.dataset import CocoDetection, collate, load_image, record_target, training_records
from ssddet.data.splits import load_split, load_train_val
from ssddet.data.transforms import RandomHorizontalFlip, hflip
from ssddet.errors import UserError


def by_id(records):
    return {r.image_id: r for r in records}


def test_target_format(tiny_coco):
    root, ann, _ = tiny_coco
    data = load_coco(ann)
    ds = CocoDetection(data.select("train"))
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 80)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (2, 4)
    assert target["labels"].dtype == torch.int64
    torch.testing.assert_close(target["boxes"], torch.tensor([[10., 10., 40., 30.], [40., 20., 60., 50.]]))
    assert target["labels"].tolist() == [1, 2]  # category 3 -> 1, 7 -> 2
    assert target["image_id"] == 1
    assert target["ann_ids"].tolist() == [11, 12]
    assert "true_boxes" not in target  # the clean file has no true_bbox
    # an empty image still gives well-shaped tensors
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == 2 and [t["image_id"] for t in targets] == [1, 2]


def test_true_boxes_in_target(tmp_path):
    coco = tiny_coco_dict()
    for a in coco["annotations"]:
        a["true_bbox"] = [v + 1 for v in a["bbox"]]
    ann = write_coco(tmp_path / "d", coco)
    rec = by_id(load_coco(ann).records)[1]
    t = record_target(rec)
    assert t["true_boxes"].dtype == torch.float32
    torch.testing.assert_close(t["true_boxes"], torch.tensor([[11., 11., 42., 32.], [41., 21., 62., 52.]]))


def test_noncontiguous_category_mapping(tiny_coco):
    _, ann, _ = tiny_coco
    data = load_coco(ann)
    assert data.num_classes == 3
    assert data.class_names == ["cat3", "cat7", "cat42"]
    assert data.label_to_cat == {1: 3, 2: 7, 3: 42}
    labels = {int(a): int(lab) for r in data.records for a, lab in zip(r.ann_ids, r.labels)}
    assert labels == {11: 1, 12: 2, 21: 3, 41: 1, 42: 2, 51: 3}
    # unsorted category list in the file: still sorted by id
    coco = tiny_coco_dict()
    coco["categories"] = coco["categories"][::-1]
    ann2 = ann.parent / "rev.json"
    ann2.write_text(json.dumps(coco))
    assert load_coco(ann2).label_to_cat == {1: 3, 2: 7, 3: 42}


def test_hflip_hand_values():
    image = torch.arange(3 * 2 * 100, dtype=torch.float32).reshape(3, 2, 100)
    target = {"boxes": torch.tensor([[10., 20., 30., 40.]]), "true_boxes": torch.tensor([[0., 0., 100., 5.]]),
              "labels": torch.tensor([1])}
    flipped, t = hflip(image, target)
    torch.testing.assert_close(t["boxes"], torch.tensor([[70., 20., 90., 40.]]))
    torch.testing.assert_close(t["true_boxes"], torch.tensor([[0., 0., 100., 5.]]))
    assert torch.equal(flipped[:, :, 0], image[:, :, 99]) and torch.equal(flipped[:, :, 99], image[:, :, 0])
    assert torch.equal(flipped, image.flip(-1))
    torch.testing.assert_close(target["boxes"], torch.tensor([[10., 20., 30., 40.]]))  # input untouched
    # flipping twice is the identity
    back, t2 = hflip(flipped, t)
    assert torch.equal(back, image) and torch.equal(t2["boxes"], target["boxes"])


def test_random_flip_probability():
    image = torch.rand(3, 4, 10)
    target = {"boxes": torch.tensor([[1., 1., 3., 3.]])}
    torch.manual_seed(0)
    img, t = RandomHorizontalFlip(1.0)(image, target)
    assert torch.equal(img, image.flip(-1)) and t["boxes"].tolist() == [[7., 1., 9., 3.]]
    img, t = RandomHorizontalFlip(0.0)(image, target)
    assert torch.equal(img, image) and t["boxes"].tolist() == [[1., 1., 3., 3.]]


def test_training_dataset_flips_true_boxes(tmp_path):
    coco = tiny_coco_dict()
    for a in coco["annotations"]:
        a["true_bbox"] = list(a["bbox"])
    ann = write_coco(tmp_path / "d", coco)
    rec = by_id(load_coco(ann).records)[1]
    ds = CocoDetection([rec], train=True, flip=1.0)
    image, t = ds[0]
    plain, _ = CocoDetection([rec])[0]
    assert torch.equal(image, plain.flip(-1))
    expected = torch.tensor([[80 - 40., 10., 80 - 10., 30.], [80 - 60., 20., 80 - 40., 50.]])
    torch.testing.assert_close(t["boxes"], expected)
    torch.testing.assert_close(t["true_boxes"], expected)


def test_empty_images_skipped_by_default(tiny_coco):
    _, ann, _ = tiny_coco
    train = load_coco(ann).select("train")
    assert [r.image_id for r in train] == [1, 2, 3]
    assert [r.image_id for r in training_records(train, keep_empty=False, src="x")] == [1, 2]
    assert [r.image_id for r in training_records(train, keep_empty=True, src="x")] == [1, 2, 3]


def test_crowd_boxes(tiny_coco):
    _, ann, _ = tiny_coco
    data = load_coco(ann)
    rec = by_id(data.records)[2]
    np.testing.assert_allclose(rec.boxes, [[5, 5, 45, 45]])
    assert rec.ann_ids.tolist() == [21]
    np.testing.assert_allclose(rec.crowd_boxes, [[50, 10, 80, 40]])
    assert rec.crowd_labels.tolist() == [2]
    gt = data.gt_dict(data.select("train"))
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["category_id"] == 7 and crowd[0]["image_id"] == 2
    assert crowd[0]["bbox"] == [50.0, 10.0, 30.0, 30.0]
    ids = [a["id"] for a in gt["annotations"]]
    assert len(set(ids)) == len(ids) and min(ids) >= 1
    assert {a["category_id"] for a in gt["annotations"] if not a["iscrowd"]} == {3, 7, 42}
    assert [im["id"] for im in gt["images"]] == [1, 2, 3]
    assert gt["categories"] == data.categories


def test_partially_outside_boxes_are_clipped_and_counted(tmp_path, caplog):
    coco = tiny_coco_dict()
    coco["annotations"] += [
        {"id": 90, "image_id": 1, "category_id": 3, "bbox": [-5.0, 50.0, 20.0, 30.0]},  # 80x64 image
        {"id": 91, "image_id": 1, "category_id": 3, "bbox": [70.0, -2.0, 30.0, 10.0]},
    ]
    ann = write_coco(tmp_path / "d", coco)
    with caplog.at_level(logging.WARNING):
        data = load_coco(ann)
    assert data.warnings["clipped"] == 2
    assert data.warning_examples["clipped"] == [90, 91]
    rec = by_id(data.records)[1]
    np.testing.assert_allclose(rec.boxes[2:], [[0, 50, 15, 64], [70, 0, 80, 8]])
    assert "2 annotation(s): clipped" in caplog.text


def test_split_selection(tiny_coco):
    _, ann, _ = tiny_coco
    data = load_coco(ann)
    assert [r.image_id for r in data.select("train")] == [1, 2, 3]
    assert [r.image_id for r in data.select("val")] == [4]
    assert [r.image_id for r in data.select("test")] == [5]
    assert len(data.select(None)) == 5
    with pytest.raises(UserError, match=r"no image has split 'trian'.*\['test', 'train', 'val'\]"):
        data.select("trian")


def test_load_split_test(tiny_coco):
    root, _, _ = tiny_coco
    data, recs = load_split(DataConfig(data_dir=str(root)), "test")
    assert [r.image_id for r in recs] == [5] and recs[0].true_boxes is None


def test_load_train_val_with_noise(tiny_coco):
    root, _, coco = tiny_coco
    splits = load_train_val(DataConfig(data_dir=str(root), noise=0.4, noise_seed=45))
    train, val = by_id(splits.train_records), by_id(splits.val_records)
    assert sorted(train) == [1, 2, 3] and sorted(val) == [4]
    clean = {a["id"]: a["bbox"] for a in coco["annotations"]}
    for rec in (train[1], train[2]):
        assert rec.true_boxes is not None and rec.true_boxes.shape == rec.boxes.shape
        expected_true = [[x, y, x + w, y + h] for x, y, w, h in (clean[int(i)] for i in rec.ann_ids)]
        np.testing.assert_allclose(rec.true_boxes, expected_true)
        assert np.abs(rec.boxes - rec.true_boxes).max() > 0.1  # noisy
    np.testing.assert_allclose(val[4].boxes, [[8, 8, 38, 38], [30, 30, 50, 50]])  # clean
    assert val[4].true_boxes is None
    assert splits.val.info.get("box_noise") is None
    assert splits.train.info["box_noise"]["level"] == 0.4
    # crowd boxes are not perturbed
    np.testing.assert_allclose(train[2].crowd_boxes, [[50, 10, 80, 40]])
    # and the val ground truth used for evaluation is clean
    gt = splits.val.gt_dict(splits.val_records)
    assert sorted(a["bbox"] for a in gt["annotations"]) == [[8.0, 8.0, 30.0, 30.0], [30.0, 30.0, 20.0, 20.0]]


def test_load_train_val_noise_without_sizes_in_json(tmp_path):
    coco = tiny_coco_dict()
    ann = write_coco(tmp_path / "d", coco)
    for im in coco["images"]:
        del im["width"], im["height"]
    ann.write_text(json.dumps(coco))
    splits = load_train_val(DataConfig(data_dir=str(ann.parent), noise=0.2))
    rec = by_id(splits.train_records)[1]
    assert (rec.width, rec.height) == (80, 64)
    assert rec.true_boxes is not None and np.abs(rec.boxes - rec.true_boxes).max() > 0


def test_load_train_val_clean(tiny_coco):
    root, _, _ = tiny_coco
    splits = load_train_val(DataConfig(data_dir=str(root)))
    assert splits.train is splits.val
    assert all(r.true_boxes is None for r in splits.train_records)


def test_separate_train_val_files(tmp_path):
    coco = tiny_coco_dict()
    root = tmp_path / "d"
    train_ann = write_coco(root, coco, name="train.json")
    val = {**coco, "images": [im for im in coco["images"] if im["split"] == "val"]}
    val_ann = write_coco(root, val, name="val.json", images=False)
    splits = load_train_val(DataConfig(train_ann=str(train_ann), val_ann=str(val_ann), noise=0.1))
    # the train file has `split` fields: its training split only (never its val/test images), noised
    assert [r.image_id for r in splits.train_records] == [1, 2, 3]
    assert [r.image_id for r in splits.val_records] == [4] and splits.val_records[0].true_boxes is None
    assert splits.train.info["box_noise"]["boxes_perturbed"] == 3  # images 1 and 2, not 4 and 5
    # a file without `split` fields is used whole
    for im in coco["images"]:
        del im["split"]
    write_coco(root, coco, name="train.json", images=False)
    splits = load_train_val(DataConfig(train_ann=str(train_ann), val_ann=str(val_ann)))
    assert [r.image_id for r in splits.train_records] == [1, 2, 3, 4, 5]
    # a --val-ann file with every split (and `split` fields): its val split only
    all_ann = write_coco(root, tiny_coco_dict(), name="all.json", images=False)
    splits = load_train_val(DataConfig(train_ann=str(train_ann), val_ann=str(all_ann)))
    assert [r.image_id for r in splits.val_records] == [4]


def test_image_size_mismatch_rescales_boxes(tmp_path):
    coco = tiny_coco_dict()
    root = tmp_path / "d"
    ann = write_coco(root, coco)
    write_image(root / "images/a.jpg", 160, 32)  # JSON says 80x64: x2, y/2
    rec = by_id(load_coco(ann).records)[1]
    image, sx, sy = load_image(rec)
    assert image.shape == (3, 32, 160) and (sx, sy) == (2.0, 0.5)
    _, t = CocoDetection([rec])[0]
    torch.testing.assert_close(t["boxes"], torch.tensor([[20., 5., 80., 15.], [80., 10., 120., 25.]]))


@pytest.mark.parametrize("mode,suffix", [("L", ".jpg"), ("RGBA", ".png"), ("P", ".png"), ("I;16", ".png")])
def test_non_rgb_images_load_as_three_channels(tmp_path, mode, suffix):
    coco = tiny_coco_dict()
    coco["images"][0]["file_name"] = f"images/a{suffix}"
    root = tmp_path / "d"
    ann = write_coco(root, coco)
    write_image(root / f"images/a{suffix}", 80, 64, mode=mode)
    rec = by_id(load_coco(ann).records)[1]
    image, _, _ = load_image(rec)
    assert image.shape == (3, 64, 80) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    if mode == "L":
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_training_records_empty_raises(tiny_coco):
    _, ann, _ = tiny_coco
    empty = [r for r in load_coco(ann).records if len(r.boxes) == 0]
    with pytest.raises(UserError, match="training set is empty after filtering"):
        training_records(empty, keep_empty=False, src="my.json")


def test_internal_ann_ids_keep_integer_ids_and_never_collide():
    from ssddet.data.coco import internal_ann_ids

    anns = [{"id": 5}, {"id": "a"}, {}, {"id": 2**64}, {"id": -3}, "not a dict", {"id": True}]
    # below every usable id (-3): -3 - 1 - position
    assert internal_ann_ids(anns) == [5, -5, -6, -7, -3, -9, -10]
    assert internal_ann_ids([{"id": 1}, {"id": 2}]) == [1, 2]


def test_string_annotation_ids_keep_their_source_id(tmp_path):
    from ssddet.data.coco import parse_coco

    d = tiny_coco_dict()
    d["annotations"][0]["id"] = "first"
    data = parse_coco(d, "x.json", tmp_path)
    rec = data.records[0]
    assert rec.source_ids[0] == "first" and rec.ann_ids[0] < 0
    assert len(set(np.concatenate([r.ann_ids for r in data.records]).tolist())) == sum(
        len(r.ann_ids) for r in data.records)


@pytest.mark.parametrize("value, crowd", [(0, False), (1, True), ("0", False), ("1", True), ("false", False),
                                          ("", False), (True, True), (None, False), (2, True)])
def test_iscrowd_is_read_leniently(value, crowd):
    from ssddet.data.coco import is_crowd

    assert is_crowd(value) is crowd


def test_split_names_match_exactly_and_near_misses_are_named(tmp_path, caplog, capsys):
    """An image of split "Train" or " train" is not in 'train': selecting warns that it was left out, a split
    with only near misses is an error that names them, and `check --strict` fails on them."""
    from ssddet.cli import main

    d = tiny_coco_dict()
    d["images"][1]["split"] = "Train"
    d["images"][2]["split"] = " train"
    write_coco(tmp_path, d)
    data = load_coco(tmp_path / "annotations.json")
    with caplog.at_level(logging.WARNING):
        assert [r.image_id for r in data.select("train")] == [1]
    assert "left out, since split names match exactly: 1 with ' train', 1 with 'Train'" in caplog.text
    d["images"][0]["split"] = "TRAIN"
    write_coco(tmp_path, d)
    with pytest.raises(UserError, match="no image has split 'train'.*1 with 'TRAIN'"):
        load_coco(tmp_path / "annotations.json").select("train")
    assert main(["check", "--data", str(tmp_path), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "1 image(s) have split 'Train', which no command selects" in out
    assert "no image of split 'train'" in out and "3 image(s) in a split that differs" in out
