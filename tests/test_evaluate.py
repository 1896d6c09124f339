"""COCO evaluation: sanity values, agreement with pycocotools, results-file validation, `ssddet eval`."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch

from ssddet.cli import main
from ssddet.data.coco import load_coco
from ssddet.engine.evaluate import STAT_NAMES, coco_evaluate, format_metrics, load_results
from ssddet.errors import UserError


def gt_as_results(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "score": 1.0} for a in gt["annotations"] if not a["iscrowd"]]


@pytest.fixture
def tiny_gt(tiny_coco):
    _, ann, _ = tiny_coco
    data = load_coco(ann)
    return data.gt_dict(data.records)


def test_ground_truth_scores_one(tiny_gt):
    results = gt_as_results(tiny_gt)
    before = copy.deepcopy(results)
    m = coco_evaluate(tiny_gt, results)
    for k in ("AP", "AP50", "AP75"):
        assert m[k] == pytest.approx(1.0), k
    assert m["AR100"] == pytest.approx(1.0)
    assert m["per_class"] == pytest.approx({"cat3": 1.0, "cat7": 1.0, "cat42": 1.0})
    assert results == before  # the caller's detections are not modified
    text = format_metrics(m)
    assert "AP=1.000" in text and "cat42: 1.000" in text


def test_shifted_detection_lowers_ap(tiny_gt):
    results = gt_as_results(tiny_gt)
    x, y, w, h = results[0]["bbox"]
    results[0]["bbox"] = [x + 0.3 * w, y, w, h]  # IoU ~0.54: counts at 0.5, not at 0.75
    m = coco_evaluate(tiny_gt, results)
    assert m["AP"] < 1.0
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] < 1.0
    cat = {c["id"]: c["name"] for c in tiny_gt["categories"]}[results[0]["category_id"]]
    assert m["per_class"][cat] < 1.0
    assert sum(v == pytest.approx(1.0) for v in m["per_class"].values()) == 2


def test_no_results_gives_zeros(tiny_gt):
    m = coco_evaluate(tiny_gt, [])
    assert all(m[k] == 0.0 for k in STAT_NAMES)
    assert m["per_class"] == {"cat3": 0.0, "cat7": 0.0, "cat42": 0.0}


def test_a_class_without_ground_truth_scores_zero_and_says_so(tiny_gt, caplog):
    gt = copy.deepcopy(tiny_gt)
    cat42 = next(c["id"] for c in gt["categories"] if c["name"] == "cat42")
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != cat42]
    gt["images"] = gt["images"][:-1] + [dict(gt["images"][-1], id=999)]  # a new set: the warning is per set
    m = coco_evaluate(gt, gt_as_results(gt))
    assert m["AP"] == pytest.approx(1.0) and m["per_class"]["cat42"] == 0.0
    assert "has no box of cat42: its AP is reported as 0" in caplog.text


def test_crowd_only_ground_truth_gives_zeros_not_minus_one(tiny_gt, caplog):
    gt = copy.deepcopy(tiny_gt)
    for a in gt["annotations"]:
        a["iscrowd"] = 1
    gt["images"] = gt["images"] + [dict(gt["images"][-1], id=998)]
    m = coco_evaluate(gt, gt_as_results(tiny_gt))
    assert all(m[k] == 0.0 for k in STAT_NAMES) and set(m["per_class"].values()) == {0.0}
    assert "has no box of cat3, cat7, cat42: their AP is reported as 0" in caplog.text


def random_case(seed: int):
    rng = np.random.RandomState(seed)
    cats = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]
    images, anns, results = [], [], []
    for iid in range(1, 7):
        images.append({"id": iid, "width": 200, "height": 160, "file_name": f"{iid}.jpg"})
        for _ in range(rng.randint(1, 6)):
            w, h = rng.uniform(8, 120, 2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 160 - h)
            cat = int(rng.choice([1, 5, 9]))
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.rand() < 0.1)})
            for _ in range(rng.randint(0, 3)):  # jittered true positives, wrong classes, duplicates
                j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                rcat = cat if rng.rand() < 0.8 else int(rng.choice([1, 5, 9]))
                results.append({"image_id": iid, "category_id": rcat,
                                "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]})
        for _ in range(rng.randint(0, 4)):  # pure false positives
            w, h = rng.uniform(5, 60, 2)
            results.append({"image_id": iid, "category_id": int(rng.choice([1, 5, 9])),
                            "bbox": [rng.uniform(0, 140), rng.uniform(0, 100), w, h]})
    scores = rng.permutation(len(results)) / len(results) + 0.01  # distinct scores: no sort ties
    for r, s in zip(results, scores):
        r["score"] = float(s)
    return {"images": images, "annotations": anns, "categories": cats}, results


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pycocotools(seed):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results = random_case(seed)
    ours = coco_evaluate(copy.deepcopy(gt), copy.deepcopy(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    np.testing.assert_allclose([ours[k] for k in STAT_NAMES], ev.stats[:12], atol=1e-9)
    assert 0.05 < ours["AP"] < 0.95  # a non-trivial case
    precision = ev.eval["precision"]
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        ref = float(np.mean(p[p > -1])) if (p > -1).any() else 0.0
        name = {c["id"]: c["name"] for c in gt["categories"]}[cat]
        assert ours["per_class"][name] == pytest.approx(ref, abs=1e-9)


def test_load_results_rejects_unknown_category(tiny_gt, tmp_path):
    res = gt_as_results(tiny_gt)
    res[1]["category_id"] = 99
    path = tmp_path / "res.json"
    path.write_text(json.dumps(res))
    with pytest.raises(UserError, match=r"res\.json: entry 1 has category_id 99 unknown to the ground truth"):
        load_results(path, tiny_gt)


@pytest.mark.parametrize("entry,problem", [
    ({"image_id": 1, "category_id": 3}, "needs image_id, category_id and bbox"),
    ({"image_id": 1, "category_id": 3, "bbox": [1, 2, 3]}, "bbox"),
    ({"image_id": 1, "category_id": 3, "bbox": [1, 2, "a", 4]}, "bbox"),
    ({"image_id": 1, "category_id": 3, "bbox": [30, 30, -20, 5]}, "negative width or height"),
    ({"image_id": [1], "category_id": 3, "bbox": [1, 2, 3, 4]}, "image_id"),
    ({"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": "high"}, "score"),
])
def test_load_results_rejects_bad_entries(tiny_gt, tmp_path, entry, problem):
    path = tmp_path / "res.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(UserError, match=problem) as e:
        load_results(path, tiny_gt)
    assert "res.json: entry 0" in str(e.value)


def test_load_results_file_problems(tiny_gt, tmp_path):
    with pytest.raises(UserError, match="results file not found"):
        load_results(tmp_path / "nope.json", tiny_gt)
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_results(bad, tiny_gt)
    bad.write_text('{"x": 1}')
    with pytest.raises(UserError, match="list of detections"):
        load_results(bad, tiny_gt)


def test_load_results_keeps_split_images_only(tiny_gt, tmp_path):
    res = gt_as_results(tiny_gt) + [{"image_id": 999, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5}]
    path = tmp_path / "res.json"
    path.write_text(json.dumps({"annotations": res}))
    kept = load_results(path, tiny_gt)
    assert len(kept) == len(res) - 1 and all(r["image_id"] != 999 for r in kept)


def test_cli_eval_results(tiny_coco, tmp_path, capsys):
    root, ann, _ = tiny_coco
    data = load_coco(ann)
    gt = data.gt_dict(data.select("val"))
    path = tmp_path / "res.json"
    path.write_text(json.dumps(gt_as_results(gt)))
    assert main(["eval", "--results", str(path), "--data", str(root), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "val (1 images)" in out and "AP=1.000" in out and "AP50=1.000" in out
    assert main(["eval", "--results", str(path), "--data", str(root), "--split", "val", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["per_class"]["cat3"] == pytest.approx(1.0)


def test_cli_eval_unknown_category(tiny_coco, tmp_path, capsys):
    root, _, _ = tiny_coco
    path = tmp_path / "res.json"
    path.write_text(json.dumps([{"image_id": 4, "category_id": 8, "bbox": [1, 2, 3, 4], "score": 0.9}]))
    assert main(["eval", "--results", str(path), "--data", str(root), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "res.json: entry 0 has category_id 8 unknown to the ground truth" in err
    assert "Traceback" not in err and err.count("error:") == 1


class _FixedDetector(torch.nn.Module):
    """Detects one box, [10, 20, 30, 40] in the frame of the image it is given, label 1, score 0.9."""

    def forward(self, images):
        return [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])} for _ in images]


def test_detections_are_reported_in_the_jsons_frame():
    """A file twice the size the JSON says: the loader scales the boxes onto the file, so a detection in the file's
    frame is halved back into the JSON's, where the ground truth and the COCO results file live."""
    from ssddet.engine.evaluate import predict

    batch = ([torch.zeros(3, 64, 64), torch.zeros(3, 32, 32)],
             [{"image_id": 5, "file_scale": (2.0, 2.0)}, {"image_id": 6}])
    dets = predict(_FixedDetector(), [batch], torch.device("cpu"), {1: 7}, progress=False)
    assert [d["image_id"] for d in dets] == [5, 6] and {d["category_id"] for d in dets} == {7}
    assert dets[0]["bbox"] == [5.0, 10.0, 10.0, 10.0]  # xywh of [5, 10, 15, 20]
    assert dets[1]["bbox"] == [10.0, 20.0, 20.0, 20.0]


def test_per_class_keeps_two_categories_that_share_a_name():
    gt = {"images": [{"id": 1, "width": 50, "height": 50}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "area": 100,
                           "iscrowd": 0}],
          "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "cell"}, {"id": 3, "name": "other"}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}]
    per_class = coco_evaluate(gt, dets)["per_class"]
    assert per_class == {"cell (id 1)": pytest.approx(1.0), "cell (id 2)": 0.0, "other": 0.0}
