"""SSD-Det box bank and the `ssddet refine` export."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_coco_dict, write_coco

from ssddet.cli import main
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
               "96", "--workers", "0", "--batch-size", "2", "--output", str(out), "--set", "ssddet.trunk_dim=32"])
    assert rc == 0
    return data, out


def test_refine_exports_refined_boxes(tiny_ssddet_run, tmp_path, capsys):
    data, run = tiny_ssddet_run
    dst = tmp_path / "refined.json"
    assert main(["refine", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(dst)]) == 0
    d = json.loads(dst.read_text())
    train_ids = {im["id"] for im in d["images"] if im["split"] == "train"}
    refined = [a for a in d["annotations"] if "noisy_bbox" in a]
    # every non-crowd training box (ids 11, 12, 21) is refined; val/test and crowd boxes are untouched
    assert sorted(a["id"] for a in refined) == [11, 12, 21]
    assert all(a["image_id"] in train_ids and len(a["bbox"]) == 4 and a["bbox"][2] > 0 for a in refined)
    assert all("true_bbox" in a for a in refined)  # the run's on-the-fly noise is reproduced with its seed
    assert d["info"]["ssddet_refine"]["noise"] == 0.3
    assert "mean IoU with true_bbox" in capsys.readouterr().out


def test_refine_rejects_a_vanilla_run(tmp_path, capsys):
    data = tmp_path / "data"
    write_coco(data, tiny_coco_dict())
    out = tmp_path / "run"
    main(["train", "--data", str(data), "--method", "vanilla", "--epochs", "1", "--min-size", "64",
          "--max-size", "96", "--workers", "0", "--output", str(out)])
    assert main(["refine", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "x.json")]) == 2
    assert "needs an ssddet run" in capsys.readouterr().err
