"""YOLO-txt -> COCO conversion (data/yolo.py, `ssddet data yolo2coco`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import write_image

from ssddet.cli import main
from ssddet.data.coco import load_coco
from ssddet.data.yolo import parse_line, to_coco_box, to_yolo_box, yolo2coco
from ssddet.errors import UserError


@pytest.fixture
def ultralytics(tmp_path):
    """images/{train,val} + labels/{train,val} + data.yaml with names as a mapping."""
    root = tmp_path / "ds"
    write_image(root / "images" / "train" / "a.png", 640, 480)
    write_image(root / "images" / "train" / "b.jpg", 100, 50)
    write_image(root / "images" / "val" / "c.png", 64, 64)  # no label file: an image without objects
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.25 0.5\n"  # the known box: [240, 120, 160, 240] px
        "1 0.1 0.2 0.1 0.1\n"
        "\n"
        "1 0.5 oops 0.1 0.1\n"  # malformed
        "5 0.5 0.5 0.1 0.1\n"  # class index outside the names
        "0 0.5 0.5 0.0 0.1\n")  # empty box
    (root / "labels" / "train" / "b.txt").write_text("1 0.2 0.2 0.6 0.2 0.6 0.8 0.2 0.8\n")  # a segment polygon
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cell\n  1: platelet\n")
    return root


def test_yolo2coco_converts_a_known_box_exactly_and_round_trips(ultralytics, tmp_path):
    out = tmp_path / "coco.json"
    coco = yolo2coco(out, yaml_path=ultralytics / "data.yaml")
    assert json.loads(out.read_text()) == coco
    assert coco["categories"] == [{"id": 1, "name": "cell"}, {"id": 2, "name": "platelet"}]
    ims = {im["file_name"]: im for im in coco["images"]}
    assert {k: (v["width"], v["height"], v["split"]) for k, v in ims.items()} == {
        "ds/images/train/a.png": (640, 480, "train"), "ds/images/train/b.jpg": (100, 50, "train"),
        "ds/images/val/c.png": (64, 64, "val")}
    a = [x for x in coco["annotations"] if x["image_id"] == ims["ds/images/train/a.png"]["id"]]
    assert a[0]["bbox"] == [240.0, 120.0, 160.0, 240.0] and a[0]["category_id"] == 1
    assert to_yolo_box(a[0]["bbox"], 640, 480).tolist() == [0.5, 0.5, 0.25, 0.5]  # exactly back
    assert a[1]["bbox"] == pytest.approx([32.0, 72.0, 64.0, 48.0]) and a[1]["category_id"] == 2
    b = [x for x in coco["annotations"] if x["image_id"] == ims["ds/images/train/b.jpg"]["id"]]
    assert b[0]["bbox"] == pytest.approx([20.0, 10.0, 40.0, 30.0])  # the polygon's bounding box
    st = coco["info"]["ssddet_yolo2coco"]
    assert st["boxes"] == 3 and st["max_roundtrip_error"] < 1e-12
    assert sum(st["skipped"].values()) == 3 and "class index outside the 2 names" in st["skipped"]
    # the output is a dataset ssddet trains on, boxes unchanged
    data = load_coco(out)
    assert [r.split for r in data.records] == ["train", "train", "val"] and data.warnings == {}
    assert data.records[0].boxes[0].tolist() == [240.0, 120.0, 400.0, 360.0]


def test_yolo2coco_darknet_folder_with_names_file(tmp_path, capsys):
    root = tmp_path / "darknet"
    write_image(root / "x.jpg", 200, 100)
    (root / "x.txt").write_text("2 0.25 0.5 0.5 1.0\n")
    (root / "obj.names").write_text("a\nb\n\nc\n")
    out = tmp_path / "out" / "coco.json"
    assert main(["data", "yolo2coco", "--images", str(root), "--names", str(root / "obj.names"), "--split", "val",
                 "--out", str(out)]) == 0
    assert "1 images, 1 boxes, 3 categories" in capsys.readouterr().out
    coco = json.loads(out.read_text())
    assert coco["images"][0]["file_name"] == "../darknet/x.jpg" and coco["images"][0]["split"] == "val"
    assert coco["annotations"][0]["bbox"] == [0.0, 0.0, 100.0, 100.0] and coco["annotations"][0]["category_id"] == 3


def test_yolo_boxes_invert_each_other():
    rng = np.random.default_rng(0)
    for _ in range(100):
        box = np.concatenate([rng.uniform(0.1, 0.9, 2), rng.uniform(0.01, 0.2, 2)])
        w, h = (int(v) for v in rng.integers(1, 4000, 2))
        assert np.abs(to_yolo_box(to_coco_box(box, w, h), w, h) - box).max() < 1e-12


@pytest.mark.parametrize("line, reason", [("0 0.5 0.5 0.1", "malformed"), ("a 0.5 0.5 0.1 0.1", "malformed"),
                                          ("1.5 0.5 0.5 0.1 0.1", "class index"), ("0 0.5 0.5 -0.1 0.1", "empty")])
def test_parse_line_rejects_bad_lines(line, reason):
    assert reason in parse_line(line)


def test_yolo2coco_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("train: images\nnames: [a]\n")
    assert main(["data", "yolo2coco", "--yaml", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: split entry 'images'" in err and "Traceback" not in err
    with pytest.raises(UserError, match="give --yaml"):
        yolo2coco(tmp_path / "o.json", images=tmp_path)
    (tmp_path / "n.yaml").write_text("names: {0: a, 2: c}\ntrain: .\n")
    with pytest.raises(UserError, match="indices 0..1"):
        yolo2coco(tmp_path / "o.json", yaml_path=tmp_path / "n.yaml")
