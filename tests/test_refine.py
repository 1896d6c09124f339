"""SSD-Det box bank and the `ssddet refine` export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_coco_dict, write_coco

from ssddet.cli import main
from ssddet.engine.refine import export
from ssddet.models.ssddet.bank import BoxBank, from_unit, to_unit


def test_unit_round_trip_with_flip():
    box = torch.tensor([[10.0, 20.0, 30.0, 50.0]])
    u = to_unit(box, (100, 200), flipped=False)
    assert torch.allclose(u, torch.tensor([[0.05, 0.2, 0.15, 0.5]]))
    # the same object seen in a flipped, resized image maps to the same unit box
    flipped = torch.tensor([[200 - 30.0, 20.0, 200 - 10.0, 50.0]]) * 2
    assert torch.allclose(to_unit(flipped, (200, 400), flipped=True), u)
    assert torch.allclose(from_unit(u, (200, 400), flipped=True), flipped)


def test_bank_lookup_update_and_state_round_trip():
    bank = BoxBank()
    bank.update(torch.tensor([5, 9]), torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.7]]))
    boxes, found = bank.lookup(torch.tensor([9, 1, 5]))
    assert found.tolist() == [True, False, True]
    assert torch.allclose(boxes[0], torch.tensor([0.5, 0.5, 0.6, 0.7]))
    restored = BoxBank()
    restored.load_state_dict(bank.state_dict())
    assert restored.boxes == bank.boxes and len(restored) == 2  # float32 values survive exactly


@pytest.fixture()
def tiny_ssddet_run(tmp_path):
    data = tmp_path / "data"
    write_coco(data, tiny_coco_dict())
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--noise", "0.3", "--epochs", "1", "--min-size", "64", "--max-size",
               "96", "--workers", "0", "--batch-size", "2", "--out", str(out), "--set", "ssddet.trunk_dim=32"])
    assert rc == 0
    return data, out


def test_refine_exports_refined_boxes(tiny_ssddet_run, tmp_path, capsys):
    data, run = tiny_ssddet_run
    dst = tmp_path / "refined.json"
    assert main(["refine", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(dst)]) == 0
    d = json.loads(dst.read_text())
    # only the training split is written (its image without boxes too), with all of its annotations
    assert [(im["id"], im["split"]) for im in d["images"]] == [(1, "train"), (2, "train"), (3, "train")]
    assert sorted(a["id"] for a in d["annotations"]) == [11, 12, 21, 22]
    refined = [a for a in d["annotations"] if "noisy_bbox" in a]
    # every non-crowd training box (ids 11, 12, 21) is refined; the crowd box is untouched
    assert sorted(a["id"] for a in refined) == [11, 12, 21]
    assert all(len(a["bbox"]) == 4 and a["bbox"][2] > 0 for a in refined)
    assert all("true_bbox" in a for a in refined)  # the run's on-the-fly noise is reproduced with its seed
    assert d["info"]["ssddet_refine"]["noise"] == 0.3 and d["info"]["ssddet_refine"]["all_splits"] is False
    out = capsys.readouterr().out
    assert "mean IoU with true_bbox" in out and "wrote split 'train' only (3 of 5 images" in out


def test_refine_export_passes_check_strict(tiny_ssddet_run, tmp_path, capsys):
    """Our own output passes our own check: refined boxes are clipped to their image."""
    data, run = tiny_ssddet_run
    dst = tmp_path / "refined.json"
    assert main(["refine", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(dst)]) == 0
    assert "clipped to their image:" in capsys.readouterr().out
    assert main(["check", "--ann", str(dst), "--images", str(data), "--strict"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "OK"


def test_export_clips_refined_boxes_to_their_image():
    raw = tiny_coco_dict()
    refined = {11: np.array([-5.0, 2.0, 50.0, 70.0]),  # image 1 is 80 x 64: x1 and y2 reach outside
               12: np.array([90.0, 70.0, 120.0, 90.0]),  # nothing inside: keeps its input box
               21: np.array([5.0, 5.0, 45.0, 45.0])}
    d, stats = export(raw, refined, {}, sizes={1: (80, 64), 2: (96, 72)})
    anns = {a["id"]: a for a in d["annotations"]}
    assert anns[11]["bbox"] == [0.0, 2.0, 50.0, 62.0] and anns[11]["noisy_bbox"] == [10.0, 10.0, 30.0, 20.0]
    assert anns[12]["bbox"] == [40.0, 20.0, 20.0, 30.0] and "noisy_bbox" not in anns[12]
    assert anns[21]["bbox"] == [5.0, 5.0, 40.0, 40.0]
    assert stats == {"refined_boxes": 2, "clipped_boxes": 1, "kept_input_boxes": 1}


def test_refine_all_splits_keeps_the_other_splits_unchanged(tiny_ssddet_run, tmp_path):
    data, run = tiny_ssddet_run
    dst = tmp_path / "refined_all.json"
    assert main(["refine", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(dst), "--all-splits"]) == 0
    d = json.loads(dst.read_text())
    assert [im["id"] for im in d["images"]] == [1, 2, 3, 4, 5]
    src = {a["id"]: a for a in tiny_coco_dict()["annotations"]}
    others = [a for a in d["annotations"] if a["image_id"] in (4, 5)]
    assert [(a["id"], a["bbox"]) for a in others] == [(i, src[i]["bbox"]) for i in (41, 42, 51)]
    assert not any("noisy_bbox" in a for a in others)


def test_refine_takes_the_ann_that_audit_takes(tiny_ssddet_run, tmp_path):
    """`ssddet noise ... --out noisy.json`, then `refine --ann noisy.json` as `audit --ann noisy.json`: the given
    boxes are the file's (already noisy, so the run's noise is not added again); the earlier `--train-ann`
    spelling gives the same export."""
    data, run = tiny_ssddet_run
    noisy = tmp_path / "noisy.json"
    assert main(["noise", "--data", str(data), "--noise", "0.3", "--split", "train", "--out", str(noisy)]) == 0
    given = {a["id"]: a["bbox"] for a in json.loads(noisy.read_text())["annotations"]}
    outs = []
    for flag in ("--ann", "--train-ann"):
        dst = tmp_path / f"refined{flag}.json"
        assert main(["refine", "--checkpoint", str(run / "checkpoint.pt"), flag, str(noisy), "--images", str(data),
                     "--out", str(dst)]) == 0
        outs.append(json.loads(dst.read_text()))
    refined = [a for a in outs[0]["annotations"] if "noisy_bbox" in a]
    assert sorted(a["id"] for a in refined) == [11, 12, 21]
    assert all(a["noisy_bbox"] == given[a["id"]] for a in refined)
    assert outs[0]["annotations"] == outs[1]["annotations"]


@pytest.mark.parametrize("all_splits", [False, True])
def test_fr_recipe_trains_on_the_training_split_only(tiny_ssddet_run, tmp_path, all_splits):
    """`ssddet refine` then `ssddet train --train-ann refined.json --val-ann DATA.json`: whatever the export
    holds, no val/test image (with its clean boxes) reaches the training set, and validation is the val split."""
    from ssddet.config import DataConfig
    from ssddet.data.splits import load_train_val

    data, run = tiny_ssddet_run
    dst = tmp_path / "refined.json"
    assert main(["refine", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(dst),
                 *(["--all-splits"] if all_splits else [])]) == 0
    splits = load_train_val(DataConfig(train_ann=str(dst), val_ann=str(data / "annotations.json"),
                                       images=str(data)))
    assert [r.image_id for r in splits.train_records] == [1, 2, 3]
    assert [r.image_id for r in splits.val_records] == [4]
    refined = {a["id"]: a["bbox"] for a in json.loads(dst.read_text())["annotations"]}
    for r in splits.train_records:  # the training boxes are the refined ones
        for aid, box in zip(r.ann_ids.tolist(), r.boxes.tolist()):
            x, y, w, h = refined[aid]
            assert box == pytest.approx([x, y, x + w, y + h], abs=1e-4)


def test_refine_rejects_a_vanilla_run(tmp_path, capsys):
    data = tmp_path / "data"
    write_coco(data, tiny_coco_dict())
    out = tmp_path / "run"
    main(["train", "--data", str(data), "--method", "vanilla", "--epochs", "1", "--min-size", "64",
          "--max-size", "96", "--workers", "0", "--out", str(out)])
    assert main(["refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "x.json")]) == 2
    assert "needs an ssddet run" in capsys.readouterr().err


def test_ssddet_method_passes_the_bank_boxes_for_the_negatives_to_avoid(monkeypatch):
    """Every banked annotation of an image (refined this iteration or not) reaches the refiner as a box its
    negatives must avoid, in the image's resized and flipped frame."""
    from types import SimpleNamespace

    from ssddet.config import ModelConfig, SSDDetConfig
    from ssddet.models.detector import build_detector
    from ssddet.models.methods import SSDDetMethod
    from ssddet.models.ssddet.refiner import RefinerOutput

    method = SSDDetMethod(build_detector(ModelConfig(min_size=64, max_size=96), 2), SSDDetConfig(), 2).train()
    method.bank.update(torch.tensor([5, 9]), torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.7]]))
    seen = {}

    def fake_refiner(features, sizes, boxes, labels, true=None, progress=None, avoid=None, priority=None,
                     previous=None):
        seen["avoid"] = avoid
        return RefinerOutput([b.clone() for b in boxes], [b.clone() for b in boxes], {}, {},
                             [torch.ones(len(b), dtype=torch.bool) for b in boxes])

    monkeypatch.setattr(method.refiner, "forward", fake_refiner)
    boxes = torch.tensor([[1.0, 1.0, 5.0, 5.0], [10.0, 10.0, 20.0, 20.0], [30.0, 30.0, 40.0, 40.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2, 1]), "ann_ids": torch.tensor([9, 7, 5]),
                "flipped": True},
               {"boxes": boxes[:1], "labels": torch.tensor([1]), "ann_ids": torch.tensor([8])}]
    method.refine_targets({}, SimpleNamespace(image_sizes=[(100, 200), (100, 200)]), targets, 1.0)
    # unit (x1, y1, x2, y2) in a 200 x 100 image flipped: (200 (1 - x2), 100 y1, 200 (1 - x1), 100 y2)
    torch.testing.assert_close(seen["avoid"][0], torch.tensor([[80.0, 50.0, 100.0, 70.0],
                                                               [140.0, 20.0, 180.0, 40.0]]))
    assert seen["avoid"][1].shape == (0, 4)


def _fake_refined_method(monkeypatch, cfg, refined_box):
    """SSDDetMethod whose refiner returns `refined_box` (Tensor[1, 4]) for the one object of each image."""
    from ssddet.config import ModelConfig
    from ssddet.models.detector import build_detector
    from ssddet.models.methods import SSDDetMethod
    from ssddet.models.ssddet.refiner import RefinerOutput

    method = SSDDetMethod(build_detector(ModelConfig(min_size=64, max_size=96), 2), cfg, 2).train()

    def fake_refiner(features, sizes, boxes, labels, true=None, progress=None, avoid=None, priority=None,
                     previous=None):
        return RefinerOutput([refined_box.clone() for _ in boxes], [b.clone() for b in boxes], {}, {},
                             [torch.ones(len(b), dtype=torch.bool) for b in boxes])

    monkeypatch.setattr(method.refiner, "forward", fake_refiner)
    return method


@pytest.mark.parametrize("momentum", [0.0, 0.75])
def test_target_momentum_averages_the_new_box_with_the_banked_one(monkeypatch, momentum):
    """ssddet.target_momentum m: the detector trains on m * banked + (1 - m) * refined, averaged in the bank's
    unflipped frame (the banked box came from the other flip), and the bank keeps that average; m = 0: the newest
    refined box, bit for bit."""
    from types import SimpleNamespace

    from ssddet.config import SSDDetConfig

    cfg = SSDDetConfig(target_momentum=momentum, warmup_frac=0.0, keep_given=False)
    new = torch.tensor([[40.0, 20.0, 80.0, 60.0]])
    method = _fake_refined_method(monkeypatch, cfg, new)
    method.bank.update(torch.tensor([7]), torch.tensor([[0.5, 0.2, 0.7, 0.6]]))  # unit, unflipped
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1]),
              "ann_ids": torch.tensor([7]), "flipped": True}
    det, _, _ = method.refine_targets({}, SimpleNamespace(image_sizes=[(100, 200)]), [target], 1.0)
    banked_here = torch.tensor([[200 * (1 - 0.7), 20.0, 200 * (1 - 0.5), 60.0]])  # (60, 20, 100, 60) flipped
    expected = momentum * banked_here + (1 - momentum) * new
    assert torch.equal(det[0]["boxes"], expected) if momentum == 0 else torch.allclose(det[0]["boxes"], expected)
    unit, _ = method.bank.lookup(torch.tensor([7]))
    assert torch.allclose(from_unit(unit, (100, 200), flipped=True), expected)


def test_target_momentum_is_off_while_the_given_boxes_are_trusted(monkeypatch):
    from types import SimpleNamespace

    from ssddet.config import SSDDetConfig

    new = torch.tensor([[40.0, 20.0, 80.0, 60.0]])
    cfg = SSDDetConfig(target_momentum=0.5, warmup_frac=0.0, trust_agreement=0.68)
    method = _fake_refined_method(monkeypatch, cfg, new)
    method.refiner.keep.agreement.fill_(0.99)  # the refiner keeps every given box: those are the targets
    method.bank.update(torch.tensor([7]), torch.tensor([[0.0, 0.0, 0.1, 0.1]]))
    target = {"boxes": new.clone(), "labels": torch.tensor([1]), "ann_ids": torch.tensor([7])}
    det, _, _ = method.refine_targets({}, SimpleNamespace(image_sizes=[(100, 200)]), [target], 0.9)
    assert torch.equal(det[0]["boxes"], new)


def test_target_momentum_is_validated():
    from ssddet.cli import build_parser
    from ssddet.config_overrides import config_from_args
    from ssddet.errors import UserError

    for bad in ("1.0", "-0.1", "true"):
        with pytest.raises(UserError, match="target_momentum"):
            config_from_args(build_parser().parse_args(["train", "--set", f"ssddet.target_momentum={bad}"]))
    with pytest.raises(UserError, match="needs ssddet.bank"):
        config_from_args(build_parser().parse_args(["train", "--set", "ssddet.target_momentum=0.5", "--set",
                                                    "ssddet.bank=false"]))


def test_flip_average_cancels_a_bias_of_the_image_frame(tiny_ssddet_run, monkeypatch):
    """--flip-average: the mean of the boxes refined in the image and in its mirror image. A refiner that moves
    every box 3 px right in the frame it sees moves it 3 px left in the mirror image: the mean is the input box,
    while one view alone is 3 px off."""
    from ssddet.data.splits import training_split_json
    from ssddet.engine.refine import load_refiner_method, refine_records
    from ssddet.models.ssddet.refiner import RefinerOutput

    _, run = tiny_ssddet_run
    method, cfg, _ = load_refiner_method(run / "checkpoint.pt", torch.device("cpu"))
    _, _, records = training_split_json(cfg.data)
    records = [r for r in records if len(r.boxes)]
    def biased(features, sizes, boxes, labels, *args, **kwargs):
        shift = boxes[0].new_tensor([3.0, 0.0, 3.0, 0.0])
        return RefinerOutput([boxes[0] + shift], [boxes[0].clone()], {}, {},
                             [torch.ones(len(boxes[0]), dtype=torch.bool)])

    monkeypatch.setattr(method.refiner, "forward", biased)
    plain = refine_records(method, records, torch.device("cpu"))
    averaged = refine_records(method, records, torch.device("cpu"), flip_average=True)
    for rec in records:
        for aid, given in zip(rec.ann_ids.tolist(), rec.boxes):
            np.testing.assert_allclose(averaged[aid], given, atol=1e-3)  # the bias cancels
            assert abs(plain[aid][0] - given[0]) > 1.0  # one view alone keeps it


def test_refine_unreadable_checkpoint_is_one_line_error(tmp_path, capsys):
    from ssddet.cli import main

    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["refine", "--checkpoint", str(bad), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssddet refine: error:") and "cannot load checkpoint" in err and "\n" not in err


def test_a_noisy_copy_is_not_noised_again(tmp_path):
    import json

    from ssddet.api import _holds_simulated_noise

    noisy, clean = tmp_path / "noisy.json", tmp_path / "clean.json"
    noisy.write_text(json.dumps({"annotations": [{"bbox": [0, 0, 4, 4], "true_bbox": [0, 0, 5, 5]}]}))
    clean.write_text(json.dumps({"annotations": [{"bbox": [0, 0, 4, 4]}]}))
    assert _holds_simulated_noise(noisy) and not _holds_simulated_noise(clean)
    for marked in ({"annotations": [{"bbox": [0, 0, 4, 4], "category_id": 1, "true_category_id": 2}]},
                   {"annotations": [{"bbox": [0, 0, 4, 4], "spurious": True}]},
                   {"annotations": [], "missing_annotations": [{"bbox": [0, 0, 4, 4]}]}):
        noisy.write_text(json.dumps(marked))
        assert _holds_simulated_noise(noisy), marked


def test_refine_exports_boxes_whatever_their_ids_and_checks_the_categories(tiny_ssddet_run, tmp_path, capsys):
    """Annotation ids that are strings, missing or beyond int64 get internal stand-ins (`internal_ann_ids`); the
    export still finds every refined box under its own id. A dataset with other categories than the checkpoint's
    is a one-line error, not a crash inside the refiner."""
    data, run = tiny_ssddet_run
    d = json.loads((data / "annotations.json").read_text())
    new_id = {11: "a-11", 12: None, 21: 2**64}  # None: the annotation has no id
    for a in d["annotations"]:
        if a["id"] in new_id:
            if new_id[a["id"]] is None:
                del a["id"]
            else:
                a["id"] = new_id[a["id"]]
    odd = data / "odd_ids.json"
    odd.write_text(json.dumps(d))
    dst = tmp_path / "refined.json"
    assert main(["refine", "--checkpoint", str(run / "checkpoint.pt"), "--ann", str(odd), "--out", str(dst)]) == 0
    out = json.loads(dst.read_text())
    refined = [a for a in out["annotations"] if "noisy_bbox" in a]
    assert sorted(str(a.get("id")) for a in refined) == sorted(["a-11", "None", str(2**64)])
    assert out["info"]["ssddet_refine"]["stats"]["refined_boxes"] == 3
    d["categories"].append({"id": 99, "name": "extra"})
    odd.write_text(json.dumps(d))
    assert main(["refine", "--checkpoint", str(run / "checkpoint.pt"), "--ann", str(odd), "--out", str(dst)]) != 0
    assert "trained on category ids" in capsys.readouterr().err
    odd.write_text(json.dumps({**d, "annotations": None}))  # the loader's message, not a crash before it
    assert main(["refine", "--checkpoint", str(run / "checkpoint.pt"), "--ann", str(odd), "--out", str(dst)]) != 0
    assert f"{odd}:" in capsys.readouterr().err


def test_export_leaves_an_unreadable_true_bbox_out_of_the_stats():
    raw = {"images": [{"id": 1, "width": 50, "height": 50}],
           "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 10, 10], "true_bbox": ["a", "b", "c", "d"]},
                           {"id": 2, "image_id": 1, "bbox": [0, 0, 10, 10], "true_bbox": [0, 0, 10, 10]}]}
    refined = {1: np.array([0.0, 0.0, 10.0, 10.0]), 2: np.array([0.0, 0.0, 10.0, 20.0])}
    d, stats = export(raw, refined, {})
    assert [a["bbox"] for a in d["annotations"]] == [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]]
    assert stats["iou_noisy"] == pytest.approx(1.0) and stats["iou_refined"] == pytest.approx(0.5)


def test_refining_another_file_takes_the_trust_from_that_file(tiny_ssddet_run, tmp_path, monkeypatch):
    """`trust_from_records`: the keep step's agreement becomes the records' own mean IoU(b*, b̃) (here a refiner
    faked to move every box by a known amount), no trust is carried over, and the threshold then decides; `refine
    --ann` records the agreement in the export's info, and the run's own boxes do not take the extra pass."""
    from types import SimpleNamespace

    import ssddet
    import ssddet.engine.refine as refine_mod
    from ssddet.data.boxes import aligned_iou
    from ssddet.data.coco import load_coco

    data, run = tiny_ssddet_run
    method, cfg, _ = refine_mod.load_refiner_method(run / "checkpoint.pt", torch.device("cpu"))
    records = load_coco(data / "annotations.json").select("train")

    def shifted(method, view, chunk=32):  # b̃ = b* shifted right by half its width: IoU 1/3
        b = view.boxes.float().clone()
        b[:, [0, 2]] += (b[:, 2] - b[:, 0])[:, None] / 2
        yield slice(0, len(b)), SimpleNamespace(refined=[b])

    monkeypatch.setattr(refine_mod, "refine_view", shifted)
    method.refiner.cfg.trust_agreement = 0.68  # the mean rule (the mode rule needs more boxes than this set has)
    method.refiner.keep.trust_on.fill_(1.0)
    mean = refine_mod.trust_from_records(method, records, torch.device("cpu"))
    assert mean == pytest.approx(1 / 3, abs=1e-4) and float(method.refiner.keep.agreement) == pytest.approx(mean)
    assert float(method.refiner.keep.trust_on) == 0.0 and not method.refiner.keep.trusted(None)
    assert method.refiner.cfg.keep_given  # restored
    monkeypatch.setattr(refine_mod, "refine_view", lambda m, v, chunk=32: iter([(slice(0, len(v.boxes)),
                                                                                SimpleNamespace(refined=[v.boxes]))]))
    assert refine_mod.trust_from_records(method, records, torch.device("cpu")) == pytest.approx(1.0)
    assert method.refiner.keep.trusted(None)
    assert torch.isnan(method.refiner.keep.mode)  # fewer boxes than the mode rule needs: it does not decide
    method.refiner.cfg.trust_agreement = method.refiner.cfg.trust_mode = 0.0
    assert refine_mod.trust_from_records(method, records, torch.device("cpu")) is None  # no trust to decide
    assert aligned_iou(torch.tensor([[0.0, 0, 2, 1]]), torch.tensor([[1.0, 0, 3, 1]])).item() == pytest.approx(1 / 3)
    monkeypatch.undo()
    d = ssddet.refine(run / "checkpoint.pt", ann=data / "annotations.json", images=data)
    assert 0.0 <= d["info"]["ssddet_refine"]["agreement"] <= 1.0
    assert "agreement" not in ssddet.refine(run / "checkpoint.pt")["info"]["ssddet_refine"]
    assert "agreement" in ssddet.refine(run / "checkpoint.pt", split="val")["info"]["ssddet_refine"]


def test_refine_with_keep_history_takes_the_mirror_images_merged_box_as_second_view(tiny_ssddet_run, monkeypatch):
    """keep_history at export: each chunk's refiner call gets `previous`, the merged box b̃ (keep step off) of the
    same objects on the mirror image, mapped back; with the option off, none. A fake refiner that moves every box
    3 px right in the frame it sees gives b̃ + 3 px in the image and b̃ - 3 px (mapped back) in the mirror."""
    from ssddet.data.splits import training_split_json
    from ssddet.engine.refine import load_refiner_method, refine_records
    from ssddet.models.ssddet.refiner import RefinerOutput

    _, run = tiny_ssddet_run
    method, cfg, _ = load_refiner_method(run / "checkpoint.pt", torch.device("cpu"))
    _, _, records = training_split_json(cfg.data)
    records = [r for r in records if len(r.boxes)][:2]
    seen = []

    def biased(features, sizes, boxes, labels, *args, previous=None, keep_step=True, **kwargs):
        seen.append((boxes[0].clone(), previous, keep_step and method.refiner.cfg.keep_given))
        shift = boxes[0].new_tensor([3.0, 0.0, 3.0, 0.0])
        return RefinerOutput([boxes[0] + shift], [boxes[0].clone()], {}, {},
                             [torch.ones(len(boxes[0]), dtype=torch.bool)])

    monkeypatch.setattr(method.refiner, "forward", biased)
    for on in (False, True):
        method.refiner.cfg.keep_history, seen[:] = on, []
        refine_records(method, records, torch.device("cpu"))
        main = [(b, p) for b, p, keep in seen if keep]
        assert len(main) == len(records)
        for boxes, prev in main:
            if not on:
                assert prev is None
            else:
                torch.testing.assert_close(prev[0], boxes + boxes.new_tensor([-3.0, 0.0, -3.0, 0.0]))
        assert method.refiner.cfg.keep_given  # the mirror pass skips step 8 without touching the config


def test_refine_ann_without_split_field_refines_every_image(tiny_ssddet_run, tmp_path):
    """`refine --ann` reads a file as `eval --ann` and `audit --ann` do: its images all, when none has a `split`
    field (a per-split export, a labelling tool's file)."""
    data, run = tiny_ssddet_run
    d = tiny_coco_dict()
    for im in d["images"]:
        del im["split"]
    ann = tmp_path / "nosplit.json"
    ann.write_text(json.dumps(d))
    dst = tmp_path / "refined.json"
    assert main(["refine", "--checkpoint", str(run / "checkpoint.pt"), "--ann", str(ann), "--images", str(data),
                 "--out", str(dst)]) == 0
    out = json.loads(dst.read_text())
    assert sorted(im["id"] for im in out["images"]) == [1, 2, 3, 4, 5]
    assert sorted(a["id"] for a in out["annotations"] if "noisy_bbox" in a) == [11, 12, 21, 41, 42, 51]
