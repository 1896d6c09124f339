"""Tests for the Pascal VOC -> COCO converter."""

import json
import logging

import pytest
from PIL import Image

from ssddet.data.voc import voc2coco


def _obj(name, box, difficult=None):
    diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    x0, y0, x1, y1 = box
    return (f"<object><name>{name}</name><pose>Unspecified</pose>{diff}"
            f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def _xml(filename, objects, size=(40, 30)):
    fn = "" if filename is None else f"<filename>{filename}</filename>"
    sz = "" if size is None else (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    return f"<annotation><folder>VOC</folder>{fn}{sz}{''.join(objects)}</annotation>"


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOC"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    for name, size in (("a", (40, 30)), ("b", (50, 20)), ("c", (33, 44)), ("d", (10, 10))):
        Image.new("RGB", size, (128, 64, 32)).save(root / "JPEGImages" / f"{name}.jpg")
    files = {
        "a": _xml("a.jpg", [_obj("dog", (1, 2, 11, 22)), _obj("cat", (5.5, 6, 20, 9.25), difficult=1)]),
        "b": _xml("b.jpg", [_obj("cat", (0, 0, 50, 20), difficult=0),
                            _obj("dog", (10, 5, 10, 15)),      # zero width -> dropped
                            _obj("dog", (12, 8, 20, 4))],       # negative height -> dropped
                  size=(50, 20)),
        "c": _xml(None, [_obj("person", (3, 4, 30, 40))], size=None),   # no filename, no size
        "d": _xml("d.jpg", [_obj("dog", (1, 1, 5, 5))], size=(10, 10)),  # in no split
    }
    for stem, text in files.items():
        (root / "Annotations" / f"{stem}.xml").write_text(text)
    (root / "ImageSets/Main/train.txt").write_text("a\nc\n")
    (root / "ImageSets/Main/val.txt").write_text("b\n\n")
    return root


def test_convert(voc, tmp_path, caplog):
    out = tmp_path / "out" / "voc.json"
    with caplog.at_level(logging.WARNING, logger="ssddet.data.voc"):
        coco = voc2coco(voc, out)
    assert json.loads(out.read_text()) == coco
    assert coco["categories"] == [
        {"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "person"}]
    assert [(im["id"], im["file_name"], im["width"], im["height"], im["split"]) for im in coco["images"]] == [
        (1, "../VOC/JPEGImages/a.jpg", 40, 30, "train"),
        (2, "../VOC/JPEGImages/b.jpg", 50, 20, "val"),
        (3, "../VOC/JPEGImages/c.jpg", 33, 44, "train"),  # size read from the JPEG
    ]
    anns = [(a["id"], a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"])
            for a in coco["annotations"]]
    assert anns == [
        (1, 1, 2, [1.0, 2.0, 10.0, 20.0], 200.0, 0),
        (2, 1, 1, [5.5, 6.0, 14.5, 3.25], 14.5 * 3.25, 1),
        (3, 2, 1, [0.0, 0.0, 50.0, 20.0], 1000.0, 0),
        (4, 3, 3, [3.0, 4.0, 27.0, 36.0], 972.0, 0),
    ]
    text = caplog.text
    assert "dropped 2 degenerate" in text
    assert "skipped 1 annotation file" in text
    assert "test" in text  # missing test split reported


def test_file_names_relative_to_root_without_out_json(voc):
    coco = voc2coco(voc)
    assert coco["images"][0]["file_name"] == "JPEGImages/a.jpg"


def test_file_names_relative_to_json_dir(voc):
    coco = voc2coco(voc, voc / "annotations.json")
    assert coco["images"][0]["file_name"] == "JPEGImages/a.jpg"


def test_class_names_order_and_filter(voc):
    coco = voc2coco(voc, class_names=["dog", "cat"])
    assert coco["categories"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 2]


def test_image_in_two_splits(voc):
    (voc / "ImageSets/Main/test.txt").write_text("b\n")
    with pytest.raises(ValueError, match="'b'"):
        voc2coco(voc)


def test_splits_selection(voc):
    coco = voc2coco(voc, splits=("val",))
    assert [im["split"] for im in coco["images"]] == ["val"]


def test_no_split_files(voc):
    with pytest.raises(FileNotFoundError):
        voc2coco(voc, splits=("trainval",))


@pytest.mark.parametrize("text, problem", [
    (_xml("a.jpg", ["<object><name>dog</name>"
                    "<bndbox><xmin>1</xmin><ymin>1</ymin><ymax>3</ymax></bndbox></object>"]),
     "<bndbox> missing <xmax>"),
    (_xml("a.jpg", ["<object><name>dog</name></object>"]), "missing <bndbox>"),
    (_xml("a.jpg", [_obj("dog", (1, 1, "x", 3))]), "not a number"),
    (_xml("a.jpg", ["<object><bndbox/></object>"]), "missing <name>"),
    ("<annotation><object>", "malformed XML"),
])
def test_malformed_xml(voc, text, problem):
    (voc / "Annotations" / "a.xml").write_text(text)
    with pytest.raises(ValueError) as err:
        voc2coco(voc)
    assert "Annotations/a.xml" in str(err.value)
    assert problem in str(err.value)
