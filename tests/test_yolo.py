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


def _ds(root, labels: dict[str, bytes], yaml: bytes = b"path: .\ntrain: images/train\nnames: [cell]\n"):
    """root/images/train/<name>.png (640 x 480) + root/labels/train/<name>.txt (raw bytes) + data.yaml."""
    (root / "labels" / "train").mkdir(parents=True)
    for name, text in labels.items():
        write_image(root / "images" / "train" / f"{name}.png", 640, 480)
        (root / "labels" / "train" / f"{name}.txt").write_bytes(text)
    (root / "data.yaml").write_bytes(yaml)
    return root / "data.yaml"


def test_yolo2coco_skips_lines_outside_yolos_range_and_writes_only_finite_numbers(tmp_path, caplog):
    data = _ds(tmp_path / "ds", {"a": b"0 0.5 0.5 1e308 0.2\n"  # w * 640 overflows: was a NaN bbox and area
                                      b"0 0.5 0.5 1e200 0.2\n"  # was 'converted boxes differ ... by up to 0.5'
                                      b"0 -0.5 -0.5 0.2 0.2\n"  # centre outside the image
                                      b"0 40 32 20 20\n"  # pixels, not normalised
                                      b"0 0.1 0.1 1e308 0.2 -1e308 0.3\n"  # a segment whose width overflows
                                      b"0 0.5 0.5 1.0000001 0.2\n"  # a label tool's float overshoot: kept, clipped
                                      b"0 0.5 0.5 0.25 0.5\n"})
    out = tmp_path / "coco.json"
    coco = yolo2coco(out, yaml_path=data)
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the output"))
    bboxes = [a["bbox"] for a in coco["annotations"]]
    assert bboxes[0] == [0.0, pytest.approx(192.0), 640.0, pytest.approx(96.0)] and bboxes[1] == [240, 120, 160, 240]
    st = coco["info"]["ssddet_yolo2coco"]
    reason = "values outside YOLO's normalised range (centre in [0, 1], size in (0, 1])"
    assert st["skipped"] == {reason: 5} and st["clipped"] == 1 and st["max_roundtrip_error"] < 1e-12
    assert f"skipped 5: {reason} (e.g. {tmp_path / 'ds/labels/train/a.txt'}:1)" in caplog.text


@pytest.mark.parametrize("line", ["0 0.5 0.5 1e308 0.2", "0 1.5 0.5 0.1 0.1", "0 0.5 -0.01 0.1 0.1",
                                  "0 0.5 0.5 0.1 1.01", "0 0 0 2 0 0 2"])
def test_parse_line_rejects_values_outside_yolos_range(line):
    assert "outside YOLO's normalised range" in parse_line(line)


def test_parse_line_keeps_the_range_ends_and_a_tiny_overshoot():
    assert parse_line("0 1 0 1 1")[1].tolist() == [1, 0, 1, 1]
    assert parse_line("0 1.0000001 -0.0000001 0.5 1.0000001")[1].tolist() == [1.0000001, -0.0000001, 0.5, 1.0000001]


def test_yolo2coco_inputs_that_are_not_utf8_are_one_line_errors(tmp_path, capsys):
    latin1 = "names: ['café']\ntrain: images/train\n".encode("latin-1")
    data = _ds(tmp_path / "y", {"a": b"0 0.5 0.5 0.2 0.2\n"}, yaml=latin1)
    assert main(["data", "yolo2coco", "--yaml", str(data), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert err == f"ssddet data: error: {data}: not UTF-8 text (byte 12: invalid continuation byte)\n"
    data = _ds(tmp_path / "l", {"a": b"0 0.5 0.5 0.2 0.2\n"}, yaml=b"train: list.txt\nnames: [a]\n")
    (tmp_path / "l" / "list.txt").write_bytes(b"images/train/a.png\n\xe9.png\n")
    with pytest.raises(UserError, match=r"list\.txt: not UTF-8 text \(byte 19: invalid continuation byte\)$"):
        yolo2coco(tmp_path / "o.json", yaml_path=data)
    (tmp_path / "obj.names").write_bytes(b"caf\xe9\n")
    with pytest.raises(UserError, match=r"obj\.names: not UTF-8 text"):
        yolo2coco(tmp_path / "o.json", images=tmp_path / "l", names=tmp_path / "obj.names")


def test_yolo2coco_leaves_out_an_image_whose_label_file_is_not_utf8(tmp_path, caplog):
    data = _ds(tmp_path / "ds", {"a": b"0 0.5 0.5 0.2 0.2 \xe9\n", "b": b"\xef\xbb\xbf0 0.5 0.5 0.25 0.5\r\n"})
    coco = yolo2coco(tmp_path / "coco.json", yaml_path=data)
    assert [im["file_name"] for im in coco["images"]] == ["ds/images/train/b.png"]
    assert [a["bbox"] for a in coco["annotations"]] == [[240.0, 120.0, 160.0, 240.0]]  # a BOM is not a bad line
    reason = "label file not UTF-8 text (its image left out)"
    assert coco["info"]["ssddet_yolo2coco"]["skipped"] == {reason: 1}
    assert f"skipped 1: {reason} (e.g. {tmp_path / 'ds/labels/train/a.txt'})" in caplog.text


def test_yolo2coco_warns_about_images_in_more_than_one_split(ultralytics, tmp_path, caplog):
    yolo2coco(tmp_path / "coco.json", yaml_path=ultralytics / "data.yaml")
    assert "more than one split" not in caplog.text
    (ultralytics / "val.txt").write_text("images/train/a.png\n")
    (ultralytics / "data.yaml").write_text("train: images/train\nval: [images/val, val.txt]\ntest: images/train\n"
                                           "names: [cell, platelet]\n")
    coco = yolo2coco(tmp_path / "coco.json", yaml_path=ultralytics / "data.yaml")
    assert [(im["file_name"], im["split"]) for im in coco["images"]] == [  # converted as listed, as before
        ("ds/images/train/a.png", "train"), ("ds/images/train/b.jpg", "train"), ("ds/images/val/c.png", "val"),
        ("ds/images/train/a.png", "val"), ("ds/images/train/a.png", "test"), ("ds/images/train/b.jpg", "test")]
    assert (f"2 image(s) in more than one split (e.g. {(ultralytics / 'images/train/a.png').resolve()}: train, val, "
            "test): each is converted once per split, so a model is evaluated on images it was trained on"
            in caplog.text)
