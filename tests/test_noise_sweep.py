"""benchmarks/noise_sweep.py: the cell plan, the scheduler's ordering, the aggregate table and the README block."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("noise_sweep")


def test_plan_seeds_and_order(sweep):
    cells = sweep.plan([0.0, 0.2, 0.4], [0, 1])
    names = [c.name for c in cells]
    # 3 levels x 4 methods x 2 seeds, OA-MIL with the ignore band (3 x 2), the partial-noise and missing-box rows
    # (3 x 3 methods x 2), then the user path (2) and the 12-epoch row (3 methods + clean vanilla) x 2
    assert len(cells) == 24 + 6 + 18 + 2 + 8 and len(set(names)) == len(names)
    assert names[:2] == ["n40_vanilla_s0", "n40_vanilla_s1"]
    assert {c.noise for c in cells[:8]} == {0.4} and {c.noise for c in cells[8:16]} == {0.0}
    assert names[24:30] == ["n40_oamil-band_s0", "n40_oamil-band_s1", "n00_oamil-band_s0", "n00_oamil-band_s1",
                            "n20_oamil-band_s0", "n20_oamil-band_s1"]
    assert names[30:33] == ["n40_vanilla-f20_s0", "n40_vanilla-f20_s1", "n40_oamil-f20_s0"]
    assert names[42:48] == ["n40_vanilla-m20_s0", "n40_vanilla-m20_s1", "n40_oamil-m20_s0", "n40_oamil-m20_s1",
                            "n40_ssddet-m20_s0", "n40_ssddet-m20_s1"]
    assert cells[30].share == 0.2 and cells[36].share == 0.5 and cells[0].share is None
    del names[24:48], cells[24:48]
    assert names[24:] == ["n40_ssddet-user_s0", "n40_ssddet-user_s1", "n40_vanilla-e12_s0", "n40_vanilla-e12_s1",
                          "n40_oamil-e12_s0", "n40_oamil-e12_s1", "n40_ssddet-e12_s0", "n40_ssddet-e12_s1",
                          "n00_vanilla-e12_s0", "n00_vanilla-e12_s1"]
    assert cells[-1].epochs == 12 and cells[0].epochs is None and cells[24].epochs is None
    assert sweep.Cell(0.2, "ssddet+fr", 3).parent == sweep.Cell(0.2, "ssddet", 3)
    assert len(sweep.plan([0.0, 0.4], [0, 1, 2], user_path=False, long_epochs=0, band=False, partial=(),
                          missing=())) == 2 * 4 * 3


def test_only_selects_cells_by_shell_pattern(sweep):
    cells = sweep.plan([0.0, 0.4], [0, 1])
    assert sweep.select(cells, None) == cells
    picked = [c.name for c in sweep.select(cells, ["n40_*-e12_s*"])]
    assert picked == ["n40_vanilla-e12_s0", "n40_vanilla-e12_s1", "n40_oamil-e12_s0", "n40_oamil-e12_s1",
                      "n40_ssddet-e12_s0", "n40_ssddet-e12_s1"]
    assert [c.name for c in sweep.select(cells, ["n40_ssddet-user_s0", "n00_vanilla_s1"])] == [
        "n00_vanilla_s1", "n40_ssddet-user_s0"]  # plan order


def test_user_path_and_long_cells_train_as_a_user_would(sweep, tmp_path):
    from types import SimpleNamespace

    a = SimpleNamespace(preset="cpu", extra="", data="data/bccd")
    user = sweep.train_args(sweep.Cell(0.4, "ssddet", 1, "user"), a, tmp_path / "n40_ssddet-user_s1")
    assert "--noise" not in user and user[user.index("--train-ann") + 1] == str(tmp_path / "n40_noisy_train.json")
    plain = sweep.train_args(sweep.Cell(0.4, "ssddet", 1), a, tmp_path / "n40_ssddet_s1")
    assert plain[plain.index("--noise") + 1] == "0.4" and "--train-ann" not in plain
    part = sweep.train_args(sweep.Cell(0.4, "ssddet", 0, "f20"), a, tmp_path / "x")
    assert part[part.index("--noise-fraction") + 1] == "0.2" and part[part.index("--noise") + 1] == "0.4"
    miss = sweep.train_args(sweep.Cell(0.4, "vanilla", 0, "m20"), a, tmp_path / "x")
    assert miss[miss.index("--noise-missing") + 1] == "0.2" and "--noise-fraction" not in miss
    long = sweep.train_args(sweep.Cell(0.4, "oamil", 0, "e12"), a, tmp_path / "x")
    assert long[len(long) - 1 - long[::-1].index("--epochs") + 1] == "12"  # the last --epochs wins


def test_schedule_runs_fr_after_its_ssddet_cell_and_skips_after_failure(sweep):
    cells = [sweep.Cell(0.4, "ssddet+fr", 0), sweep.Cell(0.4, "ssddet", 0), sweep.Cell(0.4, "vanilla", 0),
             sweep.Cell(0.2, "ssddet", 0), sweep.Cell(0.2, "ssddet+fr", 0)]
    finished, lock = [], threading.Lock()

    def work(c):
        time.sleep(0.01)
        if c.name == "n20_ssddet_s0":
            raise RuntimeError("boom")
        with lock:
            finished.append(c.name)

    errors = sweep.schedule(cells, 2, work)
    assert finished.index("n40_ssddet-fr_s0") > finished.index("n40_ssddet_s0")
    assert set(errors) == {"n20_ssddet_s0", "n20_ssddet-fr_s0"} and "boom" in errors["n20_ssddet_s0"]
    assert "n20_ssddet-fr_s0" not in finished


def _cell(noise, method, seed, ap, iou=None):
    return {"noise": noise, "method": method, "seed": seed, "wall_s": 600.0, "iou_noisy": 0.5 if noise else 1.0,
            "iou_refined": iou, "test": {"AP": ap, "AP50": 2 * ap, "AP75": ap / 2, "per_class": {"a": ap, "b": 0.0}}}


def test_aggregate_gap_recovered_and_spread(sweep):
    cells = [_cell(0.0, "vanilla", 0, 0.50), _cell(0.0, "vanilla", 1, 0.54), _cell(0.4, "vanilla", 0, 0.10),
             _cell(0.4, "vanilla", 1, 0.14), _cell(0.4, "ssddet", 0, 0.30, 0.6), _cell(0.4, "ssddet", 1, 0.34, 0.7)]
    rows = {(r["noise"], r["method"]): r for r in sweep.aggregate(cells)}
    clean, noisy, ssd = rows[(0.0, "vanilla")], rows[(0.4, "vanilla")], rows[(0.4, "ssddet")]
    assert clean["AP"][0] == pytest.approx(0.52) and clean["AP"][2] == 2
    assert noisy["AP"][1] == pytest.approx(0.0282843, abs=1e-6)  # sample SD of 0.10, 0.14
    assert ssd["gap_recovered"] == pytest.approx((0.32 - 0.12) / (0.52 - 0.12))
    assert noisy["gap_recovered"] == pytest.approx(0.0) and clean["gap_recovered"] is None
    assert ssd["iou_refined"] == pytest.approx(0.65) and ssd["per_class"] == {"a": pytest.approx(0.32), "b": 0.0}
    lines = sweep.comparisons(list(rows.values()))
    assert lines == ["- 40% noise: SSD-Det − vanilla = +0.200 test AP (largest seed SD 0.028, seeds: 2): "
                     "beyond the seed spread."]


def _summary(sweep, cells):
    return {"rows": sweep.aggregate(cells), "cells": cells, "command": "python benchmarks/noise_sweep.py",
            "preset": "cpu", "preset_args": ["--epochs", "6"],
            "machine": {"cpus": 2, "platform": "Linux", "torch": "2.x"}, "threads": 1, "jobs": 2,
            "n_cells": len(cells), "n_planned": 17, "cell_hours": 0.5}


def test_full_table_and_headline(sweep):
    cells = [_cell(0.0, "vanilla", 0, 0.5), _cell(0.4, "vanilla", 0, 0.1), _cell(0.4, "ssddet", 0, 0.3, 0.6),
             _cell(0.4, "ssddet", 1, 0.34, 0.7)]
    cells[2]["spec"] = {"ssddet": {"sampler": "large", "max_objects_per_image": 4}}  # before selection/keep_given
    cells[3]["spec"] = {"ssddet": {"sampler": "large", "max_objects_per_image": 8, "selection": "oldest",
                                   "keep_given": True, "w_det": 1.0}, "model": {"box_bg_iou_thresh": 0.4}}
    mode = {**cells[3], "seed": 2, "spec": {**cells[3]["spec"], "ssddet": {**cells[3]["spec"]["ssddet"],
                                                                            "trust_mode": 0.72}}}
    assert "`trust_agreement=0`, `trust_mode=0.72`" in sweep.ssddet_settings([mode])  # named where it is on
    # the fixed convs' bias: how its gradient was taken (predated: exact, stride 1), where it trained
    fixed = {**mode, "spec": {**mode["spec"], "ssddet": {**mode["spec"]["ssddet"], "trunk_reduce_train": False}}}
    assert "`trunk_bias_train=true`, `trunk_bias_grad_stride=1`" in sweep.ssddet_settings([fixed])
    fixed["spec"]["ssddet"]["trunk_bias_grad_stride"] = 8
    assert "`trunk_bias_grad_stride=8`" in sweep.ssddet_settings([fixed])
    assert "trunk_precision" not in sweep.ssddet_settings([fixed])  # predated: fp32, the default, not named
    fixed["spec"]["ssddet"]["trunk_precision"] = "bf16"
    assert "`trunk_precision=bf16`" in sweep.ssddet_settings([fixed])
    summary = _summary(sweep, cells)
    md = sweep.markdown(summary)
    assert ("| 40% | ssddet | 0,1 | 0.320 ± 0.028 | 0.640 ± 0.057 | 0.160 ± 0.014 | 0.320 | 0.000 | 55% | "
            "0.500 → 0.650 | 10 |") in md
    assert "seed spread not measured (1 seed)" in md and "4 of 17 planned cells" in md
    # the settings each SSD-Det cell trained with, from its recorded spec (predated fields: what the code then did)
    assert ("every level: `sampler=large`, `max_objects_per_image=4`, `selection=random`, `keep_given=false`, "
            "`w_det=4`, `model.box_bg_iou_thresh=0.5`, `trunk_reduce_train=true` / `sampler=large`, "
            "`max_objects_per_image=8`, `selection=oldest`, `keep_given=true`, `w_det=1`, "
            "`model.box_bg_iou_thresh=0.4`, `trunk_reduce_train=true`, `keep_iou=0`, `trust_agreement=0`") in md
    head = sweep.headline(summary)
    lines = head.splitlines()
    assert lines[0] == ("| box noise | Faster R-CNN test AP | SSD-Det test AP | SSD-Det boxes: IoU noisy → refined |")
    assert lines[2:4] == ["| 0% | 0.500 | – | – |", "| 40% | 0.100 | 0.320 ± 0.028 | 0.500 → 0.650 |"]
    assert "Reproduce: `python benchmarks/noise_sweep.py --preset cpu`" in head
    # the front page points to the settings instead of listing them
    assert "selection=oldest" not in head and "SSD-Det settings: per noise level under the full table" in head


def test_blocks_are_replaced_in_the_readme_and_the_benchmarks_page(sweep, tmp_path):
    readme, docs = tmp_path / "README.md", tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    readme.write_text("intro\n<!-- sweep:begin -->\nold table\n<!-- sweep:end -->\noutro\n")
    docs.write_text("# B\n<!-- sweep-full:begin -->\nold full\n<!-- sweep-full:end -->\nend\n")
    sweep.write_block(readme, "NEW", "sweep")
    sweep.write_block(docs, "FULL", "sweep-full")
    assert readme.read_text() == "intro\n<!-- sweep:begin -->\nNEW\n<!-- sweep:end -->\noutro\n"
    assert docs.read_text() == "# B\n<!-- sweep-full:begin -->\nFULL\n<!-- sweep-full:end -->\nend\n"
    with pytest.raises(SystemExit, match="no `<!-- sweep-full:begin -->`"):
        sweep.write_block(readme, "x", "sweep-full")


def test_spec_leaves_out_the_other_methods_sections(sweep):
    """A vanilla cell does not go stale when SSD-Det's or OA-MIL's defaults change."""
    cfg = {"train": {"method": "vanilla", "seed": 0}, "ssddet": {"max_objects_per_image": 4}, "oamil": {"x": 1}}
    assert sweep.spec_of(cfg) == {"train": {"method": "vanilla", "seed": 0}}
    cfg["train"]["method"] = "ssddet"
    assert sweep.spec_of(cfg) == {"train": {"method": "ssddet", "seed": 0}, "ssddet": {"max_objects_per_image": 4}}
    recorded = {"train": {"method": "vanilla", "seed": 0}, "ssddet": {"max_objects_per_image": 4}}
    assert sweep.same_spec(recorded, sweep.spec_of({"train": {"method": "vanilla", "seed": 0},
                                                    "ssddet": {"max_objects_per_image": 8}}))


def test_spec_ignores_paths_and_workers(sweep):
    a = {"data": {"noise": 0.4, "num_workers": 1, "data_dir": "x"}, "train": {"output": "o", "seed": 0}}
    b = {"data": {"noise": 0.4, "num_workers": 4, "data_dir": "y"}, "train": {"output": "p", "seed": 0}}
    assert sweep.spec_of(a) == sweep.spec_of(b)
    b["train"]["seed"] = 1
    assert sweep.spec_of(a) != sweep.spec_of(b)


def test_export_ious(sweep, tmp_path):
    path = tmp_path / "refined.json"
    anns = [{"bbox": [0, 0, 10, 10], "noisy_bbox": [0, 0, 10, 5], "true_bbox": [0, 0, 10, 10]},
            {"bbox": [0, 0, 5, 10], "noisy_bbox": [0, 0, 10, 10], "true_bbox": [0, 0, 10, 10]}]
    path.write_text(json.dumps({"annotations": anns}))
    assert sweep.export_ious(path) == pytest.approx((0.75, 0.75))
    for x in anns:  # 0 % noise: no true_bbox, the input boxes are the clean ones
        del x["true_bbox"]
    path.write_text(json.dumps({"annotations": anns}))
    assert sweep.export_ious(path) == pytest.approx((1.0, 0.5))


def test_same_spec_compares_every_field_and_a_missing_one_only_through_the_table(sweep):
    recorded = {"train": {"seed": 0, "lr": 0.005, "batch_size": 2}}
    assert sweep.same_spec(recorded, {"train": {"seed": 0, "lr": 0.005, "batch_size": 2}})
    assert not sweep.same_spec(recorded, {"train": {"seed": 1, "lr": 0.005, "batch_size": 2}})
    assert sweep.same_spec({"train": {"seed": 0, "gone": 1}}, {"train": {"seed": 0}})  # a removed field: ignored
    # a field missing from the recorded spec and not in the table: stale, whatever its value
    assert ("train", "new_knob") not in sweep.PREDATED_FIELDS
    assert not sweep.same_spec({"train": {"seed": 0}}, {"train": {"seed": 0, "new_knob": 0}})
    # in the table: the value that run trained with (no ignore band then: 0.5)
    assert sweep.same_spec({"model": {}}, {"model": {"box_bg_iou_thresh": 0.5}})
    assert not sweep.same_spec({"model": {}}, {"model": {"box_bg_iou_thresh": 0.4}})
    # the keep step predates: off; the ablation switches predate: off
    assert not sweep.same_spec({"ssddet": {}}, {"ssddet": {"keep_given": True}})
    assert sweep.same_spec({"ssddet": {}}, {"ssddet": {"target_momentum": 0.0, "det_ramp": 0.0, "band_until": 1.0,
                                                      "det_reset": 0.0}})
    assert not sweep.same_spec({"ssddet": {}}, {"ssddet": {"trust_agreement": 0.68}})


def test_trusted_only_fields_do_not_matter_to_a_run_that_never_trusted_its_boxes(sweep, tmp_path):
    """A run from before `trusted_keep_iou` (it kept every box while trusted) is current for today's 0.5 if its
    log shows no trusted step, stale if it shows one; the same through a run folder's log.jsonl."""
    old = {"ssddet": {"trust_agreement": 0.68}}
    new = {"ssddet": {"trust_agreement": 0.68, "trust_margin": 0.02, "trusted_keep_iou": 0.5}}
    never = [{"epoch": 1, "given_trusted": 0.0}, {"epoch": 2, "given_trusted": 0.0}]
    once = [{"epoch": 1, "given_trusted": 0.0}, {"epoch": 2, "given_trusted": 0.25}]
    assert not sweep.same_spec(old, new)
    assert sweep.same_spec(old, new, epochs=never)
    assert not sweep.same_spec(old, new, epochs=once)
    assert not sweep.same_spec(old, new, epochs=[{"epoch": 1}])  # no record of the trust: not shown
    assert not sweep.same_spec({"ssddet": {"trust_agreement": 0.6}}, new, epochs=never)  # other fields still count
    run = tmp_path / "run"
    run.mkdir()
    for trace, current in ((never, True), (once, False)):  # as the trainer writes it: statistics under "train"
        records = [{"kind": "epoch", "epoch": e["epoch"], "train": {"given_trusted": e["given_trusted"]}}
                   for e in trace]
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
        assert sweep.epoch_records(run) == records
        assert sweep.same_spec(old, new, epochs=sweep.epoch_records(run)) is current


def test_predated_fields_cover_every_field_the_recorded_cells_lack(sweep):
    """Every committed sweep cell's spec, filled from PREDATED_FIELDS, names every field the current config has
    (so strictness does not depend on luck), and each entry is a field that exists today."""
    import dataclasses

    from ssddet.config import Config

    config = json.loads(json.dumps(dataclasses.asdict(Config())))
    for sec, key in sweep.PREDATED_FIELDS:
        assert key in config[sec], (sec, key)
    for path in sorted((ROOT / "benchmarks" / "results" / "sweep" / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        expected = sweep.spec_of({**config, "train": {**config["train"], "method": cell["spec"]["train"]["method"]}})
        for sec, fields in expected.items():
            for k in fields:
                assert k in cell["spec"].get(sec, {}) or (sec, k) in sweep.PREDATED_FIELDS, (path.name, sec, k)


def test_same_spec_compares_fields_by_their_effect(sweep, tmp_path):
    base = {"train": {"lr": 0.005, "batch_size": 2, "amp": False}}
    # the linear scaling rule: --lr as given (0) at batch 2 is the default's 0.005 for 2 images
    assert sweep.same_spec({"train": {**base["train"], "lr_ref_batch": 0}},
                           {"train": {**base["train"], "lr_ref_batch": 2}})
    assert not sweep.same_spec({"train": {**base["train"], "lr_ref_batch": 0}},
                               {"train": {**base["train"], "lr_ref_batch": 4}})
    # AMP's dtype only under AMP; SyncBatchNorm never in a one-process sweep run
    assert sweep.same_spec({"train": {**base["train"]}}, {"train": {**base["train"], "amp_dtype": "bf16",
                                                                    "sync_bn": False}})
    amp = {**base["train"], "amp": True}
    assert not sweep.same_spec({"train": {**amp, "amp_dtype": "fp16"}}, {"train": {**amp, "amp_dtype": "bf16"}})
    # a finished run under on_bad_image=stop read every image: the same as skip; not the other way round
    assert sweep.same_spec({"data": {"on_bad_image": "stop"}}, {"data": {"on_bad_image": "skip"}})
    assert not sweep.same_spec({"data": {"on_bad_image": "skip"}}, {"data": {"on_bad_image": "stop"}})
    # aspect-ratio grouping changes nothing where every training image is in one bucket
    from PIL import Image

    def dataset(name, sizes):
        d = tmp_path / name
        d.mkdir()
        images = []
        for i, (w, h) in enumerate(sizes):
            Image.new("RGB", (w, h)).save(d / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h, "split": "train"})
        anns = [{"id": i + 1, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
                for i in range(len(sizes))]
        (d / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                        "categories": [{"id": 1, "name": "a"}]}))
        return str(d)

    one, two = dataset("one", [(64, 48), (64, 48)]), dataset("two", [(64, 48), (48, 64)])
    old, new = {"data": {"aspect_groups": -1}}, {"data": {"aspect_groups": 3}}
    assert sweep.same_spec(old, new, one) and not sweep.same_spec(old, new, two)
    assert not sweep.same_spec(old, new)  # without the dataset: by value


def test_same_spec_compares_the_refiners_decay_by_its_effect(sweep):
    """A cell that predates ssddet.refiner_decay_epochs decayed the refiner at train.lr_steps: still current
    where the field changes nothing (6 epochs, decay at epoch 4 either way), out of date where it does (12)."""
    steps = [8 / 12, 11 / 12]

    def spec(epochs, method="ssddet", **ssddet):
        return {"train": {"method": method, "epochs": epochs, "lr_steps": steps}, "ssddet": ssddet}

    assert sweep.same_spec(spec(6), spec(6, refiner_decay_epochs=4.0))
    assert not sweep.same_spec(spec(12), spec(12, refiner_decay_epochs=4.0))
    assert sweep.same_spec(spec(12), spec(12, refiner_decay_epochs=0.0))
    assert not sweep.same_spec(spec(6, refiner_decay_epochs=2.0), spec(6, refiner_decay_epochs=4.0))
    assert sweep.same_spec(spec(12, "vanilla"), sweep.spec_of(spec(12, "vanilla", refiner_decay_epochs=4.0)))


def test_fr_cell_is_stale_once_its_ssddet_run_is_retrained(sweep, tmp_path):
    """A +FR cell's own spec (a vanilla run on the export) cannot see its SSD-Det run change: modification
    times do, and an adopted SSD-Det run counts as its parent."""
    import os
    from types import SimpleNamespace

    runs, a = tmp_path / "runs", SimpleNamespace(adopt={})
    fr, ssd = sweep.Cell(0.4, "ssddet+fr", 0), sweep.Cell(0.4, "ssddet", 0)
    cell_json = tmp_path / "cell.json"
    cell_json.write_text("{}")
    assert sweep.parent_checkpoint(ssd, a, runs) is None and not sweep.fr_stale(ssd, a, runs, cell_json)
    assert not sweep.fr_stale(fr, a, runs, cell_json)  # no run directories (a fresh clone): the cell stands
    ckpt = runs / "n40_ssddet_s0" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("x")
    os.utime(cell_json, (1e9, 1e9))  # the cell was written long before the SSD-Det run
    assert sweep.fr_stale(fr, a, runs, cell_json)
    os.utime(ckpt, (1e8, 1e8))
    assert not sweep.fr_stale(fr, a, runs, cell_json)
    adopted = tmp_path / "elsewhere" / "checkpoint.pt"
    adopted.parent.mkdir()
    adopted.write_text("x")
    a.adopt = {"n40_ssddet_s0": str(adopted.parent)}
    assert sweep.parent_checkpoint(fr, a, runs) == adopted and sweep.fr_stale(fr, a, runs, cell_json)


def test_epoch_trace_records_what_the_detector_trained_on(sweep, tmp_path):
    """Each SSD-Det cell keeps, per epoch, the refined IoU (by size) beside the detector's targets; a cell recorded
    before this gets the trace from its run's log, and one whose run is gone is left as it is."""
    epochs = [{"kind": "epoch", "epoch": 1, "train": {"iou_refined": 0.6, "iou_det_target": 0.55, "loss": 1.0,
                                                      "iou_refined_small": 0.4}},
              {"kind": "epoch", "epoch": 2, "train": {"iou_refined": 0.7, "iou_det_target": 0.69},
               "val": {"AP": 0.3}}]
    trace = sweep.epoch_trace(epochs)
    assert trace == [{"epoch": 1, "iou_refined": 0.6, "iou_det_target": 0.55, "iou_refined_small": 0.4},
                     {"epoch": 2, "iou_refined": 0.7, "iou_det_target": 0.69, "val_AP": 0.3}]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "log.jsonl").write_text("\n".join(json.dumps(e) for e in epochs) + "\n")
    path = tmp_path / "c.json"
    cell = sweep.backfill_epochs({"cell": "c"}, tmp_path, path)
    assert cell["epochs"] == trace and json.loads(path.read_text())["epochs"] == trace
    assert "epochs" not in sweep.backfill_epochs({"cell": "gone"}, tmp_path, tmp_path / "gone.json")


def test_variant_rows_compare_like_with_like_and_the_picture_is_drawn(sweep, tmp_path):
    def cell(noise, method, seed, ap, variant=""):
        return {**_cell(noise, method, seed, ap), **({"variant": variant} if variant else {})}

    cells = [cell(0.0, "vanilla", 0, 0.50), cell(0.0, "vanilla", 1, 0.52), cell(0.4, "vanilla", 0, 0.10),
             cell(0.4, "vanilla", 1, 0.12), cell(0.4, "ssddet", 0, 0.30), cell(0.4, "ssddet", 1, 0.32),
             cell(0.4, "ssddet", 0, 0.29, "user"), cell(0.4, "ssddet", 1, 0.33, "user"),
             cell(0.0, "vanilla", 0, 0.60, "e12"), cell(0.4, "vanilla", 0, 0.20, "e12"),
             cell(0.4, "ssddet", 0, 0.50, "e12")]
    rows = sweep.aggregate(cells)
    by = {(r["noise"], r["method"], r["variant"]): r for r in rows}
    assert by[(0.4, "ssddet", "user")]["gap_recovered"] == pytest.approx((0.31 - 0.11) / (0.51 - 0.11))
    assert by[(0.4, "ssddet", "e12")]["gap_recovered"] == pytest.approx((0.50 - 0.20) / (0.60 - 0.20))
    lines = sweep.comparisons(rows)
    assert ("- 40% noise, user path: SSD-Det (no --noise) − SSD-Det (--noise) = +0.000 test AP (largest seed SD "
            "0.028, seeds: 2): within the seed spread.") in lines
    assert "- 40% noise, 12 epochs: SSD-Det − vanilla = +0.300 test AP: seed spread not measured (1 seed)." in lines
    summary = _summary(sweep, cells)
    head = sweep.headline(summary).splitlines()
    assert "| 40% (user path) | – | 0.310 ± 0.028 | 0.500 → – |" in head
    assert "| 40% (12 epochs) | 0.200 | 0.500 | 0.500 → – |" in head
    assert "| 40% | ssddet (user path) | 0,1 |" in sweep.markdown(summary)
    sweep.plot(summary, tmp_path / "images" / "sweep.png")
    assert (tmp_path / "images" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audit_lines_set_the_estimate_against_the_truth(sweep, tmp_path):
    path = tmp_path / "audit.json"
    assert sweep.audit_lines(path) == []
    path.write_text(json.dumps({
        "n40_ssddet_s0": {"noise": 0.4, "iou_given_clean": 0.46, "iou_given_refined": 0.5, "iou_estimate": 0.50,
                          "flagged": 0.40},
        "n40_ssddet_s1": {"noise": 0.4, "iou_given_clean": 0.47, "iou_given_refined": 0.4, "iou_estimate": 0.44,
                          "flagged": 0.30},
        "n00_ssddet_s0": {"noise": 0.0, "iou_given_clean": 1.0, "iou_given_refined": 0.8, "iou_estimate": 0.97,
                          "flagged": 0.01}}))
    lines = sweep.audit_lines(path)
    assert "| 0% | 1 | 1.000 | 0.800 | – | 0.970 | 1.0% |" in lines
    assert "| 40% | 2 | 0.465 | 0.450 | – | 0.470 | 35.0% |" in lines
    # audits with the mirror look: an estimate withheld by one of two cells, then by both
    path.write_text(json.dumps({
        "n00_ssddet_s0": {"noise": 0.0, "iou_given_clean": 1.0, "iou_given_refined": 0.8, "self_agreement": 0.9,
                          "iou_estimate": 0.97, "flagged": 0.01},
        "n00_ssddet_s1": {"noise": 0.0, "iou_given_clean": 1.0, "iou_given_refined": 0.6, "self_agreement": 0.5,
                          "iou_estimate": None, "flagged": 0.03},
        "n40_ssddet_s0": {"noise": 0.4, "iou_given_clean": 0.46, "iou_given_refined": 0.6, "self_agreement": 0.58,
                          "iou_estimate": None, "flagged": 0.02}}))
    lines = sweep.audit_lines(path)
    assert "| 0% | 2 | 1.000 | 0.700 | 0.700 | 0.970 (1 withheld) | 2.0% |" in lines
    assert "| 40% | 1 | 0.460 | 0.600 | 0.580 | withheld | 2.0% |" in lines


def test_a_tampered_cell_is_re_run(sweep, tmp_path, monkeypatch):
    """A run folder whose log holds more epochs than its spec (another run appended to it) is not adopted, and a
    recorded cell whose trace has more epochs than its spec is not taken as done: the sweep trains it again and
    the new cell has the spec's epochs, its machine and its commit."""
    spec = {"train": {"method": "vanilla", "epochs": 2, "seed": 0}}
    calls = []

    def fake_ssddet(args, threads, log):
        calls.append(args[0])
        if args[0] == "train":
            run = Path(args[args.index("--out") + 1])
            run.mkdir(parents=True, exist_ok=True)
            write_run(run, 2)
            return ""
        return json.dumps({"AP": 0.5, "AP50": 0.8, "AP75": 0.4, "per_class": {"a": 0.5}})

    def write_run(run, n):
        (run / "config.json").write_text(json.dumps(spec))
        (run / "metrics.json").write_text(json.dumps({"val": {"AP": 0.4}}))
        (run / "log.jsonl").write_text("".join(json.dumps({"kind": "epoch", "epoch": e + 1, "train": {}}) + "\n"
                                               for e in range(n)))

    monkeypatch.setattr(sweep, "_ssddet", fake_ssddet)
    monkeypatch.setattr(sweep, "expected_spec", lambda cell, a, runs, threads: spec)
    results, runs = tmp_path / "results", tmp_path / "runs"
    name = "n00_vanilla_s0"
    (results / "cells").mkdir(parents=True)
    (runs / name).mkdir(parents=True)
    write_run(runs / name, 4)  # a second run appended its epochs to the folder
    tampered = {"cell": name, "noise": 0.0, "method": "vanilla", "seed": 0, "spec": spec, "wall_s": 1.0,
                "test": {"AP": 0.9, "AP50": 0.9, "AP75": 0.9, "per_class": {}},
                "epochs": [{"epoch": e + 1} for e in range(4)]}
    (results / "cells" / f"{name}.json").write_text(json.dumps(tampered))
    argv = ["--noise", "0", "--seeds", "0", "--methods", "vanilla", "--no-user-path", "--long-epochs", "0",
            "--results", str(results), "--runs", str(runs), "--data", str(tmp_path)]
    assert not sweep.finished_run(runs / name, spec)
    assert sweep.main(argv) == 0
    assert calls == ["train", "eval"]
    cell = json.loads((results / "cells" / f"{name}.json").read_text())
    assert cell["test"]["AP"] == 0.5 and len(cell["epochs"]) == 2
    assert cell["machine"]["cpus"] and "commit" in cell
    calls.clear()
    assert sweep.main(argv) == 0 and calls == []  # now current: nothing runs


def test_headline_shows_oamil_both_ways_and_the_user_path_as_a_determinism_check(sweep):
    def cell(noise, method, seed, ap, variant=""):
        return {**_cell(noise, method, seed, ap), **({"variant": variant} if variant else {})}

    cells = [cell(0.4, "vanilla", 0, 0.1), cell(0.4, "oamil", 0, 0.2), cell(0.4, "oamil", 0, 0.25, "band"),
             cell(0.4, "ssddet", 0, 0.3), cell(0.4, "ssddet", 0, 0.3, "user")]
    head = sweep.headline(_summary(sweep, cells)).splitlines()
    assert head[0] == ("| box noise | Faster R-CNN test AP | OA-MIL test AP | OA-MIL + band test AP | SSD-Det test AP "
                       "| SSD-Det boxes: IoU noisy → refined |")
    assert head[2] == "| 40% | 0.100 | 0.200 | 0.250 | 0.300 | 0.500 → – |" and "user path" not in head[3]
    text = "\n".join(head)
    assert "a determinism check" in text and "model.box_bg_iou_thresh=0.4" in text
    assert "SSD-Det − oamil (ignore band 0.4) = +0.050" in sweep.markdown(_summary(sweep, cells))
    cells[-1]["test"] = {**cells[-1]["test"], "AP": 0.31}  # no longer the same: a row of its own
    head = sweep.headline(_summary(sweep, cells))
    assert "| 40% (user path) |" in head and "ran on different machines" in head  # the twin has no machine record
    for c in cells[-2:]:
        c["machine"] = {"host": "a", "cpus": 2}
    head = sweep.headline(_summary(sweep, cells))
    assert "| 40% (user path) |" in head and "different machines" not in head  # same host, and still apart
    cells[-2]["spec"] = {"ssddet": {"trunk_reduce_train": False}}  # the --noise twin re-run under a new default
    head = sweep.headline(_summary(sweep, cells))
    assert "| 40% (user path) |" in head and "other SSD-Det settings than their `--noise` twins" in head


def test_partial_rows_report_the_exact_and_the_noised_boxes_apart(sweep, tmp_path):
    def ann(given, refined, true, noised):
        return {"noisy_bbox": given, "bbox": refined, "true_bbox": true, "noised": noised}

    path = tmp_path / "export.json"
    path.write_text(json.dumps({"annotations": [
        ann([0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], False),  # kept exactly
        ann([0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 10], False),  # an exact box made worse: IoU 0.5
        ann([0, 0, 10, 5], [0, 0, 10, 10], [0, 0, 10, 10], True)]}))  # a noised box repaired
    by = sweep.export_ious_by_flag(path)
    assert by["untouched"] == {"n": 2, "given": 1.0, "refined": 0.75}
    assert by["noised"] == {"n": 1, "given": 0.5, "refined": 1.0}
    cells = [{**_cell(0.4, "ssddet", 0, 0.3), "variant": "f20", "export_iou": by},
             {**_cell(0.4, "vanilla", 0, 0.2), "variant": "f20"}, _cell(0.0, "vanilla", 0, 0.5)]
    rows = sweep.aggregate(cells)
    ssd = next(r for r in rows if r["method"] == "ssddet")
    assert ssd["gap_recovered"] == pytest.approx((0.3 - 0.2) / (0.5 - 0.2))  # clean: the preset's 0 % vanilla
    assert sweep.export_lines(rows) == [
        "- 40% noise on 20 % of the boxes, SSD-Det's export (IoU with the clean box, given → refined, mean over "
        "seeds 0): untouched boxes 1.000 → 0.750; noised boxes 0.500 → 1.000."]


def test_another_datasets_sweep_writes_its_own_block(sweep, tmp_path):
    """--block aquarium: the full table goes between the aquarium-full markers; BCCD's block stays as it is."""
    docs = tmp_path / "benchmarks.md"
    docs.write_text("<!-- sweep-full:begin -->\nBCCD\n<!-- sweep-full:end -->\n"
                    "<!-- aquarium-full:begin -->\nold\n<!-- aquarium-full:end -->\n")
    sweep.main(["--report-only", "--results", str(tmp_path / "r"), "--runs", str(tmp_path / "runs"), "--noise", "0",
                "--audit", str(tmp_path / "none.json"), "--docs", str(docs), "--block", "aquarium"])
    text = docs.read_text()
    assert "<!-- sweep-full:begin -->\nBCCD\n<!-- sweep-full:end -->" in text
    block = text.split("<!-- aquarium-full:begin -->\n")[1].split("<!-- aquarium-full:end -->")[0]
    assert "old" not in block and "0 of " in block and "--block aquarium" in block
