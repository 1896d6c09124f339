"""predict, show, plot, audit, export and the Python API on a tiny SSD-Det run (trained once for the module)."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import tiny_coco_dict, write_coco, write_image
from PIL import Image

import ssddet
from ssddet.cli import main
from ssddet.engine.audit import SELF_MARGIN
from ssddet.errors import UserError
from ssddet.viz.draw import CLEAN, NOISY, REFINED, contact_sheet_size, legend_height, read_rgb, tile_height


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch SSD-Det run on the tiny set (64-96 px images), trained through the Python API."""
    root = tmp_path_factory.mktemp("looking")
    data = root / "data"
    write_coco(data, tiny_coco_dict())
    torch.set_num_threads(1)
    metrics = ssddet.train(data=str(data), noise=0.3, epochs=1, min_size=64, max_size=96, num_workers=0,
                           batch_size=2, output=str(root / "run"), **{"ssddet.trunk_dim": 32})
    assert "AP" in metrics
    yield root, data, root / "run"
    shutil.rmtree(root, ignore_errors=True)  # its checkpoints (see conftest._drop_tmp_path_of_passed_tests)


def test_import_is_cheap_and_the_api_is_exported():
    code = "import sys, ssddet; assert callable(ssddet.predict) and callable(ssddet.refine); print('torch' in " \
           "sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_api_train_rejects_an_unknown_field():
    with pytest.raises(UserError, match="config field 'epoch' is unknown"):
        ssddet.train(epoch=3)


def test_read_rgb_converts_any_mode(tmp_path):
    grey16 = np.array([[0, 257 * 100], [65535, 257]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert read_rgb(tmp_path / "g16.png")[0].tolist() == [[0, 100], [255, 1]]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque pixel kept, transparent ones become white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_rgb(tmp_path / "a.png")
    assert img[:, 0, 0].tolist() == [10, 20, 30] and img[:, 1, 1].tolist() == [255, 255, 255]
    Image.fromarray(np.full((3, 5), 7, np.uint8), "L").save(tmp_path / "l.png")
    assert read_rgb(tmp_path / "l.png").shape == (3, 3, 5)


def test_predict_writes_results_and_pngs_of_the_source_size(run, tmp_path, caplog):
    _, data, out = run
    imgs = tmp_path / "imgs"
    write_image(imgs / "photo.jpg", 90, 70)
    write_image(imgs / "sub" / "grey.png", 64, 80, mode="L")
    write_image(imgs / "rgba.png", 70, 64, mode="RGBA")
    Image.fromarray(np.full((66, 77), 40000, np.uint16)).save(imgs / "deep.png")
    (imgs / "broken.jpg").write_bytes(b"not a jpeg")
    (imgs / "notes.txt").write_text("ignored: not an image suffix")
    dst = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(out / "model_final.pt"), str(imgs), str(data / "images" / "a.jpg"),
                 "--out", str(dst), "--score", "0.0"]) == 0
    assert "skipped 1 unreadable file(s)" in caplog.text and "broken.jpg" in caplog.text
    dets = json.loads((dst / "detections.json").read_text())
    sizes = {"photo.jpg": (90, 70), "sub/grey.png": (64, 80), "rgba.png": (70, 64),
             "deep.png": (77, 66), "a.jpg": (80, 64)}
    assert dets and {d["file_name"] for d in dets} <= set(sizes)
    ids = {}
    for d in dets:
        assert ids.setdefault(d["file_name"], d["image_id"]) == d["image_id"]  # one id per image
        x, y, w, h = d["bbox"]
        width, height = sizes[d["file_name"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
        assert 0.0 <= d["score"] <= 1.0 and d["category_id"] in (3, 7, 42)
    assert sorted(ids.values()) == sorted(set(ids.values())) and max(ids.values()) <= 6
    for name, size in sizes.items():  # one PNG per readable image, named after it, of its size
        assert Image.open((dst / name).with_suffix(".png")).size == size
    assert not (dst / "broken.png").exists()


def test_colliding_names_keep_their_file_name_and_get_distinct_pngs(tmp_path):
    """x.jpg and x.png, and a.jpg from two folders: the results' file_name is each input's own name (never an
    invented x_2.png); only the drawn PNGs get a suffix, so none overwrites another."""
    from ssddet.engine.predict import collect_images

    for rel in ("x.jpg", "x.png", "d1/a.jpg", "d2/a.jpg"):
        write_image(tmp_path / rel, 8, 8)
    items = collect_images([tmp_path / "x.jpg", tmp_path / "x.png", tmp_path / "d1" / "a.jpg",
                            tmp_path / "d2" / "a.jpg"])
    assert [(n, png) for _, n, png in items] == [("x.jpg", "x.png"), ("x.png", "x_2.png"), ("a.jpg", "a.png"),
                                                 ("a.jpg", "a_2.png")]
    assert [p for p, _, _ in items][3] == tmp_path / "d2" / "a.jpg"


def test_predict_api_applies_the_score_threshold(run):
    _, data, out = run
    model = ssddet.load_detector(out / "model_final.pt")
    every = ssddet.predict(model, data / "images", score=0.0, progress=False)
    high = ssddet.predict(model, data / "images", score=0.6, progress=False)
    assert len(high) == sum(d["score"] >= 0.6 for d in every) and len(high) < len(every)


def test_show_draws_each_layer_with_a_legend(run, tmp_path):
    _, data, out = run
    noisy = tmp_path / "noisy.json"
    ssddet.noise(data / "annotations.json", level=0.4, split="train", out=noisy)
    refined = tmp_path / "refined.json"
    ssddet.refine(out / "checkpoint.pt", out=refined)
    dst = tmp_path / "show"
    assert main(["show", "--ann", str(noisy), "--images", str(data), "--compare", str(refined), "--out", str(dst),
                 "--split", "train"]) == 0
    pngs = sorted(p.name for p in dst.iterdir())
    assert pngs == ["1_a.png", "2_b.png", "contact_sheet.png"]  # the training images with boxes
    img = np.asarray(Image.open(dst / "1_a.png"))
    assert img.shape == (64 + legend_height(80, 64, 3), 80, 3)
    colours = {tuple(c) for c in img[:64].reshape(-1, 3).tolist()}
    assert {CLEAN, NOISY, REFINED} <= colours  # clean, noisy and refined boxes drawn on the image part
    w, h = contact_sheet_size(2, tile_height([(80, 64), (96, 72)]))
    assert Image.open(dst / "contact_sheet.png").size == (w, h + legend_height(w, h, 3))
    assert main(["show", "--ann", str(noisy), "--images", str(data), "--out", str(dst / "one"), "--ids", "2"]) == 0
    assert sorted(p.name for p in (dst / "one").iterdir()) == ["2_b.png", "contact_sheet.png"]
    # --data DIR: DIR/annotations.json with its images, as every dataset command takes it
    assert main(["show", "--data", str(data), "--out", str(dst / "data"), "--ids", "2"]) == 0
    assert sorted(p.name for p in (dst / "data").iterdir()) == ["2_b.png", "contact_sheet.png"]


def test_plot_overlays_runs(run, tmp_path, capsys):
    from ssddet.viz.plot import figure_size, panels, read_epochs

    _, _, out = run
    other = tmp_path / "vanilla"
    other.mkdir()
    rec = {"kind": "epoch", "epoch": 1, "train": {"loss": 2.0, "loss_classifier": 1.0}, "val": {"AP": 0.1, "AP50": 0.3}}
    (other / "log.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "epoch": 2}) + "\n{cut")
    png = tmp_path / "curves.png"
    assert main(["plot", str(out), str(other), "--out", str(png)]) == 0
    n = len(panels([read_epochs(out), read_epochs(other)]))
    assert n == 14  # AP, AP50, IoU, total loss, 4 detector and 6 refiner loss terms
    assert Image.open(png).size == figure_size(n) and png.stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no log.jsonl" in capsys.readouterr().err


def _audit_set(root):
    """Three 64 x 64 images (the run resizes nothing: min_size 64), clean boxes far apart, annotation 22's given
    box shifted off its clean box (IoU 0.29)."""
    clean = {11: [4, 4, 20, 20], 12: [36, 36, 24, 24], 21: [6, 30, 22, 26], 22: [40, 4, 18, 18], 31: [20, 20, 30, 30],
             32: [2, 52, 10, 10]}
    anns = [{"id": aid, "image_id": aid // 10, "category_id": (3, 7, 42)[aid % 3], "bbox": list(b),
             "true_bbox": list(b), "iscrowd": 0} for aid, b in clean.items()]
    anns[3]["bbox"] = [46.0, 10.0, 18.0, 18.0]
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in (1, 2, 3)],
            "annotations": anns, "categories": tiny_coco_dict()["categories"]}
    return write_coco(root, coco), [[x, y, x + w, y + h] for x, y, w, h in clean.values()]


def _snap_refiner(monkeypatch, clean):
    """The real refiner (with its real confidences), then every box snapped onto its clean box."""
    from torchvision.ops import box_iou

    from ssddet.models.ssddet.refiner import SSDDetRefiner

    clean = torch.tensor(clean, dtype=torch.float32)
    real = SSDDetRefiner.forward

    def snapping(self, features, sizes, boxes, labels, *args, **kwargs):
        res = real(self, features, sizes, boxes, labels, *args, **kwargs)
        assert [tuple(s) for s in sizes] == [(64, 64)]  # so the JSON frame is the refiner's frame
        res.refined = [clean[box_iou(b, clean).argmax(dim=1)] for b in boxes]
        return res

    monkeypatch.setattr(SSDDetRefiner, "forward", snapping)


def test_audit_ranks_a_hand_corrupted_box_first(run, tmp_path, monkeypatch, capsys):
    """A refiner that moves every box onto its clean box (the real one, with its real confidences, then the
    boxes snapped): the one wrong box has the only IoU(given, refined) < 1, so it ranks first."""
    _, _, out = run
    ann, clean = _audit_set(tmp_path / "audit")
    _snap_refiner(monkeypatch, clean)
    csv_path, html = tmp_path / "audit.csv", tmp_path / "audit.html"
    assert main(["audit", "--checkpoint", str(out / "checkpoint.pt"), "--ann", str(ann), "--out", str(csv_path),
                 "--html", str(html)]) == 0
    every = list(csv.DictReader(csv_path.open()))
    rows = [r for r in every if r["kind"] != "missing"]  # the annotations; the missing objects follow them
    assert [int(r["rank"]) for r in every] == list(range(1, len(every) + 1)) and every[:6] == rows
    assert rows[0]["annotation_id"] == "22" and float(rows[0]["score"]) > 0
    assert float(rows[0]["iou_given_clean"]) < 0.5 and all(float(r["score"]) == 0 for r in rows[1:])
    assert [float(rows[0][k]) for k in ("refined_x", "refined_y", "refined_w", "refined_h")] == [40, 4, 18, 18]
    text = capsys.readouterr().out
    assert "ranking precision: 1.000 of the top 10% (1 boxes)" in text and "base rate of 0.167 (6.00x)" in text
    assert "16.7% flagged (IoU < 0.5 with it)" in text  # the one moved box, of 6
    missing = len(every) - 6  # the tiny detector's confident detections off the annotations
    assert html.read_text().count("<img src=\"data:image/png;base64,") == 6 + min(200, missing)


def test_audit_api_with_the_real_refiner(run, tmp_path):
    _, data, out = run
    ann, _ = _audit_set(tmp_path / "audit")
    rep = ssddet.audit(out / "checkpoint.pt", ann)
    anns = [r for r in rep.rows if r["kind"] != "missing"]  # the missing objects follow the annotations
    scores = [r["score"] for r in anns]
    assert len(anns) == 6 and scores == sorted(scores, reverse=True)
    assert all(r["kind"] == "missing" for r in rep.rows[6:])
    assert all(0.0 <= r["confidence"] <= 1.0 and np.isfinite(r["refined"]).all() for r in anns)
    assert rep.summary["with_clean"] == 6 and rep.summary["base_rate"] == pytest.approx(1 / 6)
    # the refiner's second look, on the mirror image: per box and its mean, which decides the estimate
    mirror = [r["iou_refined_mirror"] for r in anns]
    assert all(0.0 <= v <= 1.0 for v in mirror)
    assert rep.summary["self_agreement"] == pytest.approx(np.mean(mirror))
    assert rep.summary["estimate_reliable"] == (rep.summary["iou_given_refined"] < np.mean(mirror) - SELF_MARGIN)
    assert (rep.summary["iou_estimate"] is None) == (not rep.summary["estimate_reliable"])
    with pytest.raises(UserError, match="needs an ssddet run|not a training checkpoint"):
        ssddet.audit(out / "model_final.pt", ann)


def test_audit_kinds_in_the_csv_html_and_api(run, tmp_path):
    """Every annotation carries the three scores and the kind they name; missing objects are rows of their own; each
    kind is ranked 1..n by its score; the HTML page filters by kind, a picture per row, no external asset; the API
    returns the rows the CSV holds."""
    from collections import Counter

    from ssddet.engine.audit import CSV_FIELDS, KIND_SCORE
    from ssddet.engine.audit_kinds import annotation_kind

    _, _, out = run
    ann, _ = _audit_set(tmp_path / "audit")
    csv_path, html = tmp_path / "audit.csv", tmp_path / "audit.html"
    assert main(["audit", "--checkpoint", str(out / "checkpoint.pt"), "--ann", str(ann), "--out", str(csv_path),
                 "--html", str(html), "--html-top", "3", "--missing-score", "0.3"]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert tuple(rows[0]) == CSV_FIELDS
    anns, missing = rows[:6], rows[6:]
    for r in anns:
        s = {k: float(r[k]) for k in ("score", "wrong_class_score", "spurious_score")}
        assert all(0.0 <= v <= 1.0 for v in s.values()) and r["kind"] != "missing"
        assert r["kind"] == annotation_kind(s["score"], s["wrong_class_score"], s["spurious_score"])
        assert r["suggested_category"] in ("cat3", "cat7", "cat42") and r["suggested_category"] != r["category"]
        assert r["missing_score"] == r["detected_x"] == ""
    for r in missing:
        assert r["kind"] == "missing" and float(r["missing_score"]) >= 0.3 and float(r["detected_w"]) > 0
        assert r["annotation_id"] == r["score"] == r["given_x"] == r["spurious_score"] == ""
    for kind, key in KIND_SCORE.items():
        of = sorted((r for r in rows if r["kind"] == kind), key=lambda r: int(r["kind_rank"]))
        assert [int(r["kind_rank"]) for r in of] == list(range(1, len(of) + 1))
        assert [float(r[key]) for r in of] == sorted((float(r[key]) for r in of), reverse=True)
    assert all(r["kind_rank"] == "" for r in rows if r["kind"] == "ok")
    rep = ssddet.audit(out / "checkpoint.pt", ann, missing_score=0.3)
    assert [(r["kind"], r["kind_rank"], r["category"]) for r in rep.rows] == \
        [(r["kind"], int(r["kind_rank"]) if r["kind_rank"] else None, r["category"]) for r in rows]
    kinds = Counter(r["kind"] for r in rows)
    assert rep.summary["kinds"] == {k: kinds[k] for k in ("misplaced", "wrong_class", "spurious", "missing", "ok",
                                                          "invalid")}
    assert "likely missing objects: " + str(kinds["missing"]) in str(rep)
    assert set(rep.detections) == {1, 2, 3} and rep.of_kind("missing") == [r for r in rep.rows[6:]]
    page = html.read_text()
    shown = sum(min(3, n) for n in kinds.values())
    assert page.count("<tr data-kind=") == page.count('<img src="data:image/png;base64,') == shown
    for kind in ("all", "misplaced", "wrong_class", "spurious", "missing", "ok"):
        assert f"<button data-k='{kind}'" in page
    assert "function show(k)" in page and "http" not in page.replace("http-equiv", "") and "<link" not in page


def test_audit_lists_the_annotations_no_command_can_use_first(run, tmp_path):
    """Annotations the loader leaves out (an unknown image or category id, a zero-width or NaN box, a box outside its
    image) are errors too: kind `invalid`, first in the CSV in file order, each with its problem; the others are
    ranked as before, and an invalid one on an image of another split is not listed."""
    _, _, out = run
    ann, _ = _audit_set(tmp_path / "audit")
    coco = json.loads(ann.read_text())
    coco["annotations"] += [
        {"id": 90, "image_id": 99, "category_id": 3, "bbox": [1, 1, 5, 5]},
        {"id": 91, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]},
        {"id": 92, "image_id": 2, "category_id": 7, "bbox": [10, 10, 0, 5]},
        {"id": 93, "image_id": 3, "category_id": 42, "bbox": [float("nan"), 1, 5, 5]},
        {"id": 94, "image_id": 3, "category_id": 42, "bbox": [70, 70, 5, 5]}]
    ann.write_text(json.dumps(coco))
    csv_path, html = tmp_path / "audit.csv", tmp_path / "audit.html"
    assert main(["audit", "--checkpoint", str(out / "checkpoint.pt"), "--ann", str(ann), "--out", str(csv_path),
                 "--html", str(html)]) == 0
    assert "invalid annotations, left out by every command" in html.read_text()  # the page's summary
    rows = list(csv.DictReader(csv_path.open()))
    bad = rows[:5]
    assert [(r["annotation_id"], r["kind"], r["kind_rank"], r["rank"]) for r in bad] == \
        [(str(90 + i), "invalid", str(i + 1), str(i + 1)) for i in range(5)]
    assert [r["problem"].split(" (bbox")[0] for r in bad] == [
        "unknown image_id", "unknown category_id", "non-positive width/height", "bbox is not 4 finite numbers",
        "outside the image (nothing left after clipping)"]
    assert bad[0]["file_name"] == "" and bad[2]["file_name"].endswith("2.jpg") and bad[2]["category"] == "cat7"
    assert bad[1]["category"] == "5" and bad[0]["score"] == bad[0]["given_x"] == ""
    assert sorted(r["annotation_id"] for r in rows[5:] if r["kind"] != "missing") == ["11", "12", "21", "22", "31",
                                                                                     "32"]
    rep = ssddet.audit(out / "checkpoint.pt", ann)
    assert rep.summary["kinds"]["invalid"] == 5 and rep.summary["annotations"] == 6
    assert "invalid annotations, left out by every command" in str(rep) and ": 5" in str(rep)
    for im in coco["images"]:
        im["split"] = "train" if im["id"] == 1 else "val"
    ann.write_text(json.dumps(coco))
    rep = ssddet.audit(out / "checkpoint.pt", ann, split="train")
    assert [r["annotation_id"] for r in rep.rows if r["kind"] == "invalid"] == [90, 91]  # no image, image 1


def test_audit_reports_a_confident_detection_no_annotation_covers(run, tmp_path, monkeypatch):
    """Hand-built detections in image 1 (boxes a, b at [4, 4, 24, 24] and [36, 36, 60, 60]): one off every box
    (reported, with its class and score), a less confident copy of it in another class (merged), one on box a (not
    reported), one off every box below the threshold (not reported)."""
    from ssddet.engine import audit_kinds

    _, _, out = run
    ann, clean = _audit_set(tmp_path / "audit")
    _snap_refiner(monkeypatch, clean)

    def detect(detector, view):
        found = {1: ([[40, 4, 60, 24], [41, 5, 61, 25], [4, 4, 24, 24], [2, 40, 20, 60]], [0.9, 0.8, 0.95, 0.3],
                     [2, 3, 1, 3])}.get(view.rec.image_id, ([], [], []))
        return {"boxes": torch.tensor(found[0], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(found[1], dtype=torch.float32), "labels": torch.tensor(found[2]).long()}

    monkeypatch.setattr(audit_kinds, "detect", detect)
    rep = ssddet.audit(out / "checkpoint.pt", ann)
    (m,) = rep.of_kind("missing")
    assert (m["image_id"], m["category"], m["missing_score"], m["kind_rank"]) == (1, "cat7", pytest.approx(0.9), 1)
    assert m["detected"].tolist() == [40, 4, 60, 24] and m["annotation_id"] is None
    assert rep.summary["kinds"]["missing"] == 1 and rep.detections[1]["category_ids"].tolist() == [7, 42, 3, 42]


def test_ranking_precision_on_a_hand_built_case():
    from ssddet.engine.audit import ranking_precision

    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    iou_clean = np.array([0.2, 0.3, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    # top ceil(10 % of 12) = 2 by score: annotations 0 (wrong) and 2 (right); 3 of 12 wrong overall
    assert ranking_precision(scores, iou_clean) == (0.5, 0.25, 2)


def test_export_onnx_matches_pytorch(run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnx

    _, _, out = run
    # 110 px: torchvision's float32 resize arithmetic would give 63 px instead of eager PyTorch's 64
    write_image(tmp_path / "check.png", 110, 110)
    dst = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(out / "model_final.pt"), "--out", str(dst), "--image",
                 str(tmp_path / "check.png")]) == 0
    text = capsys.readouterr().out
    assert "on a 110x110 image" in text and "tolerance: 0.05 px, 0.001 score: OK" in text
    meta = {p.key: p.value for p in onnx.load(str(dst), load_external_data=False).metadata_props}
    assert [c["id"] for c in json.loads(meta["categories"])] == [3, 7, 42]


def test_match_detections_pairs_reordered_ties():
    from ssddet.engine.export import match_detections

    ref = {"boxes": [[0, 0, 10, 10], [5, 5, 20, 20]], "scores": [0.5, 0.5], "labels": [1, 2]}
    got = {"boxes": [[5, 5, 20.01, 20], [0, 0, 10, 10]], "scores": [0.5, 0.5001], "labels": [2, 1]}
    dbox, dscore, dcount = match_detections(ref, got)
    assert dbox == pytest.approx(0.01) and dscore == pytest.approx(1e-4) and dcount == 0
    assert match_detections(ref, {k: v[:1] for k, v in got.items()})[0] == float("inf")


def test_api_check_and_evaluate(tiny_coco):
    root, ann, coco = tiny_coco
    text, status = ssddet.check(ann)
    assert status == 0 and text.endswith("OK")
    results = [{"image_id": 4, "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in coco["annotations"] if a["image_id"] == 4]
    (root / "res.json").write_text(json.dumps(results))
    m = ssddet.evaluate(results=root / "res.json", data=str(root))
    assert m["AP"] == pytest.approx(1.0) and m.images == 1  # the val split: image 4
    # --ann: the file's --split images; a file without `split` fields: all of its images
    assert ssddet.evaluate(results=root / "res.json", ann=ann, split="val").images == 1
    for im in coco["images"]:
        im.pop("split", None)
    (root / "nosplit.json").write_text(json.dumps(coco))
    m = ssddet.evaluate(results=root / "res.json", ann=root / "nosplit.json", split="val")
    assert m.images == 5 and m["AP"] < 1.0  # the other images' boxes were not detected
    assert ssddet.check(data=root) == (text, status)


def test_box_quality_estimate_is_the_calibration_line():
    """The estimate passes through both calibration points, is linear between them and stays in [0, 1]."""
    from ssddet.engine.audit import CALIBRATION, box_quality, estimate_box_iou

    (a0, q0), (a1, q1) = CALIBRATION
    assert estimate_box_iou(a0) == pytest.approx(q0) and estimate_box_iou(a1) == pytest.approx(q1)
    assert estimate_box_iou((a0 + a1) / 2) == pytest.approx((q0 + q1) / 2)
    assert estimate_box_iou(0.0) == 0.0 and estimate_box_iou(1.0) == 1.0
    q = box_quality(np.array([0.2, 0.9, 1.0, 0.4]))
    assert q["iou_given_refined"] == pytest.approx(0.625) and q["flagged"] == 0.5
    assert q["iou_estimate"] == pytest.approx(estimate_box_iou(0.625))


def test_box_quality_withholds_the_estimate_where_the_refiner_agrees_with_itself_no_better():
    """IoU(given, b̃) below the refiner's self-agreement IoU(b̃, b̃ mirror): the estimate is the line's; at or
    above it the moves are within the refiner's own noise, and no estimate is given (the summary says why)."""
    from ssddet.engine.audit import box_quality, estimate_box_iou, format_summary

    agree = np.array([0.5, 0.6])
    q = box_quality(agree, np.array([0.8, 0.9]))
    assert q["estimate_reliable"] and q["self_agreement"] == pytest.approx(0.85)
    assert q["iou_estimate"] == pytest.approx(estimate_box_iou(0.55))
    text = format_summary({"annotations": 2, **q})
    assert "agrees with itself (image against mirror image) at mean IoU 0.850" in text
    assert f"estimated mean IoU with the true boxes {estimate_box_iou(0.55):.2f}" in text
    q = box_quality(agree, np.array([0.5, 0.6]))  # equal: no better than with the given boxes
    assert not q["estimate_reliable"] and q["iou_estimate"] is None and q["flagged"] == 0.0
    # within the margin below: still withheld; just beyond it: estimated
    assert not box_quality(agree, agree + SELF_MARGIN)["estimate_reliable"]
    assert box_quality(agree, agree + SELF_MARGIN + 0.001)["estimate_reliable"]
    text = format_summary({"annotations": 2, **q})
    assert "cannot judge these boxes" in text and "estimated mean IoU" not in text


@pytest.mark.parametrize("score", [None, "high", [0.9], 10 ** 400, "0.9"])
def test_show_compare_names_a_results_entry_with_a_bad_score(tiny_coco, tmp_path, score, capsys):
    """A --compare results file is read as `eval --results` reads it: a score that is not a finite number is a
    one-line error naming the entry, not a traceback (nor a string taken for a number)."""
    data, _, _ = tiny_coco
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "score": 0.9},
                               {"image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "score": score}]))
    rc = main(["show", "--data", str(data), "--compare", str(res), "--out", str(tmp_path / "s"), "--n", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"{res}: entry 1 has an invalid score" in err


def test_show_draws_a_box_far_outside_the_image(tiny_coco, tmp_path):
    """A box reaching 1e30 px is drawn clipped to the image (PIL cannot place it), the clipped edges on the
    image's last row and column."""
    from ssddet.viz.draw import draw_boxes

    img = torch.zeros(3, 40, 50, dtype=torch.uint8)
    out = draw_boxes(img, [[10, 5, 1e30, 1e30], [60, 60, 90, 90]], (255, 0, 0), width=1)
    drawn = out[0] > 0
    assert drawn[5, 10:].all() and drawn[5:, 49].all() and drawn[39, 10:].all()  # top, right, bottom edges
    assert drawn.sum() == (50 - 10) * 2 + (40 - 5 - 2) * 2  # that one rectangle only: the second box is outside
