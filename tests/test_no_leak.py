"""No default may read the clean boxes: `true_bbox` in a training JSON is for the statistics only, so a run trains
bit for bit the same with or without it."""
from __future__ import annotations

import json

import torch
from helpers import CHEAP_MODEL, CHEAP_SSDDET, assert_same_state, write_shapes_coco

import ssddet
from ssddet.cli import main


def test_ssddet_trains_the_same_weights_with_and_without_the_clean_boxes(tmp_path):
    data = write_shapes_coco(tmp_path / "data", n_train=4, n_val=2)
    noisy = ssddet.noise(data / "annotations.json", level=0.3, seed=45, split="train")
    train_ids = {im["id"] for im in noisy["images"] if im["split"] == "train"}
    assert all("true_bbox" in a for a in noisy["annotations"] if a["image_id"] in train_ids)
    blind = json.loads(json.dumps(noisy))
    for a in blind["annotations"]:
        a.pop("true_bbox", None)
    states = []
    for name, coco in (("with", noisy), ("without", blind)):
        (tmp_path / f"{name}.json").write_text(json.dumps(coco))
        out = tmp_path / name
        assert main(["train", "--method", "ssddet", "--train-ann", str(tmp_path / f"{name}.json"),
                     "--val-ann", str(data / "annotations.json"), "--images", str(data), "--out", str(out),
                     "--epochs", "2", "--min-size", "64", "--max-size", "96", "--workers", "0",
                     "--batch-size", "2", "--warmup-iters", "1", *CHEAP_MODEL,
                     *CHEAP_SSDDET]) == 0
        states.append(torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["method"])
    def epoch_stats(name):
        return [r["train"] for r in map(json.loads, (tmp_path / name / "log.jsonl").read_text().splitlines())
                if r["kind"] == "epoch"]

    # the clean boxes did reach the first run (its statistics), and only its statistics
    assert all("iou_refined" in s for s in epoch_stats("with"))
    assert not any("iou_refined" in s for s in epoch_stats("without"))
    assert_same_state(*states)  # the refiner, its keep step's trust, the bank and the detector: all equal
