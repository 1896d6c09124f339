"""Our own outputs pass our own check: `ssddet check --strict` accepts what `ssddet noise`, `ssddet data
voc2coco` and `ssddet data yolo2coco` write, also from input boxes that reach outside their image (the
`ssddet refine` export: tests/test_refine.py)."""
from __future__ import annotations

import json

from helpers import write_image
from PIL import Image

from ssddet.cli import main


def passes_check_strict(ann, capsys, *extra) -> None:
    capsys.readouterr()
    rc = main(["check", "--ann", str(ann), "--strict", *map(str, extra)])
    out = capsys.readouterr().out
    assert rc == 0 and out.splitlines()[-1] == "OK", out


def test_noise_export_passes_check(tiny_coco, tmp_path, capsys):
    root, ann, _ = tiny_coco
    dst = root / "noisy.json"
    assert main(["noise", "--ann", str(ann), "--level", "0.4", "--out", str(dst)]) == 0
    passes_check_strict(dst, capsys)


def test_voc2coco_export_passes_check(tmp_path, capsys):
    voc = tmp_path / "VOC"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    Image.new("RGB", (40, 30), (90, 90, 90)).save(voc / "JPEGImages/a.jpg")
    objects = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                      f"<ymax>{b[3]}</ymax></bndbox></object>"
                      for n, b in (("dog", (1, 2, 11, 22)), ("cat", (30, 20, 45, 35))))  # the cat reaches outside
    (voc / "Annotations/a.xml").write_text(f"<annotation><filename>a.jpg</filename><size><width>40</width>"
                                           f"<height>30</height></size>{objects}</annotation>")
    (voc / "ImageSets/Main/train.txt").write_text("a\n")
    out = tmp_path / "out/voc.json"
    assert main(["data", "voc2coco", "--voc-root", str(voc), "--out", str(out)]) == 0
    bbox = {a["category_id"]: a["bbox"] for a in json.loads(out.read_text())["annotations"]}
    assert bbox == {1: [30.0, 20.0, 10.0, 10.0], 2: [1.0, 2.0, 10.0, 20.0]}  # cat clipped to 40 x 30
    passes_check_strict(out, capsys)


def test_yolo2coco_export_passes_check(tmp_path, capsys):
    root = tmp_path / "ds"
    write_image(root / "images/train/a.jpg", 100, 50)
    write_image(root / "images/val/b.jpg", 64, 64)
    (root / "labels/train").mkdir(parents=True)
    (root / "labels/val").mkdir(parents=True)
    (root / "labels/train/a.txt").write_text("0 0.95 0.5 0.2 0.4\n")  # x 85..105 in a 100 px wide image
    (root / "labels/val/b.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [cell]\n")
    out = tmp_path / "coco.json"
    assert main(["data", "yolo2coco", "--yaml", str(root / "data.yaml"), "--out", str(out)]) == 0
    assert "1 box(es) clipped to their image" in capsys.readouterr().out
    coco = json.loads(out.read_text())
    assert coco["annotations"][0]["bbox"] == [85.0, 15.0, 15.0, 20.0]
    assert coco["info"]["ssddet_yolo2coco"]["max_roundtrip_error"] < 1e-12  # checked before clipping
    passes_check_strict(out, capsys)
