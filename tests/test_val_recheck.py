"""benchmarks/val_recheck.py: which recorded runs pair up for a default (their specs differ in that field only),
on hand-built cells."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
W_DET, BAND, DECAY = ("ssddet", "w_det"), ("model", "box_bg_iou_thresh"), ("ssddet", "refiner_decay_epochs")
WALL = itertools.count(1000)  # every hand-built cell is its own run (its own wall time)


@pytest.fixture(scope="module")
def vr():
    return load_benchmark("val_recheck")


def cell(seed=0, noise=0.2, val=0.45, test=0.46, epochs=6, band=0.4, **ssddet) -> dict:
    """A recorded SSD-Det cell as noise_sweep writes it (a reduced spec)."""
    spec = {
        "data": {"noise": noise, "noise_seed": 45, "on_bad_image": "skip", "aspect_groups": 3},
        "model": {"backbone": "efficientnet_lite0_fpn", "box_bg_iou_thresh": band},
        "train": {"method": "ssddet", "epochs": epochs, "batch_size": 2, "lr": 0.005, "lr_ref_batch": 2,
                  "lr_steps": [0.6666666666666666, 0.9166666666666666], "seed": seed, "amp": False,
                  "amp_dtype": "bf16", "sync_bn": False},
        "ssddet": {"w_det": 1.0, "trust_agreement": 0.68, "refiner_decay_epochs": 4.0, **ssddet},
    }
    return {"cell": f"n{round(noise * 100):02d}_ssddet_s{seed}", "noise": noise, "method": "ssddet", "seed": seed,
            "spec": spec, "test": {"AP": test}, "val_final": {"AP": val}, "epochs": [{"epoch": 1}],
            "wall_s": float(next(WALL))}


def runs(vr, *cells):
    return vr.load_runs([(f"file{i}.json", json.dumps(c)) for i, c in enumerate(cells)], None)


def values(vr, pairs, key):
    return [sorted(vr.get(g[0].spec, key) for g in pair) for pair in pairs]


def test_a_pair_differing_in_one_field_is_found(vr):
    rs = runs(vr, cell(w_det=1.0, val=0.47), cell(w_det=4.0, val=0.43))
    assert values(vr, vr.find_pairs(rs, W_DET), W_DET) == [[1.0, 4.0]]
    assert vr.find_pairs(rs, BAND) == [] and vr.find_pairs(rs, DECAY) == []


def test_a_pair_differing_in_two_fields_is_not(vr):
    rs = runs(vr, cell(w_det=1.0, band=0.4), cell(w_det=4.0, band=0.5))
    assert vr.find_pairs(rs, W_DET) == [] and vr.find_pairs(rs, BAND) == []
    # nor one that differs in the seed, the noise or the schedule besides the field
    for other in (cell(seed=1, w_det=4.0), cell(noise=0.4, w_det=4.0), cell(epochs=12, w_det=4.0)):
        assert vr.find_pairs(runs(vr, cell(w_det=1.0), other), W_DET) == []


def test_a_predated_field_takes_its_old_value(vr):
    old = cell(val=0.43)
    del old["spec"]["ssddet"]["w_det"]  # recorded before the field: the released 4.0
    assert values(vr, vr.find_pairs(runs(vr, cell(val=0.47), old), W_DET), W_DET) == [[1.0, 4.0]]
    # a field missing with no known old value makes the specs incomparable
    new = cell(val=0.47, brand_new_switch=1.0)
    assert vr.find_pairs(runs(vr, new, cell(w_det=4.0)), W_DET) == []


def test_a_field_without_effect_on_the_run_makes_no_pair(vr):
    # the refiner's early decay after 4 epochs is the default decay point of a 6-epoch schedule already
    assert vr.find_pairs(runs(vr, cell(val=0.4), cell(refiner_decay_epochs=0.0, val=0.41)), DECAY) == []
    twelve = runs(vr, cell(epochs=12, val=0.46), cell(epochs=12, refiner_decay_epochs=0.0, val=0.41))
    assert values(vr, vr.find_pairs(twelve, DECAY), DECAY) == [[0.0, 4.0]]


def test_records_of_one_run_count_once_and_replicates_group(vr):
    a = cell(w_det=1.0, val=0.47)
    again = json.loads(json.dumps(a))
    again["spec"]["ssddet"]["w_det"] = 1  # the same run recorded elsewhere (int and float alike)
    rerun = cell(w_det=1.0, val=0.456)  # the same spec run again: a replicate
    rs = runs(vr, a, again, rerun, cell(w_det=4.0, val=0.43))
    assert len(rs) == 3 and sorted(len(r.sources) for r in rs) == [1, 1, 2]
    (pair,) = vr.find_pairs(rs, W_DET)
    assert sorted(len(g) for g in pair) == [1, 2]


def test_comparisons_put_the_default_first_and_average_over_seeds(vr):
    rs = runs(vr, cell(seed=0, w_det=0.5, val=0.40), cell(seed=0, w_det=1.0, val=0.36),
              cell(seed=1, w_det=0.5, val=0.42), cell(seed=1, w_det=1.0, val=0.42))
    d = next(d for d in vr.DEFAULTS if d.key == W_DET)
    (c,) = vr.comparisons(rs, d)
    assert (c["a"], c["b"]) == (1.0, 0.5) and [p["seed"] for p in c["seeds"]] == [0, 1]
    assert c["val_a"] == pytest.approx(0.39) and c["val_b"] == pytest.approx(0.41)
    assert c["seed_deltas"] == pytest.approx([-0.04, 0.0]) and c["seed_sd"] == pytest.approx(0.0424264, abs=1e-6)


def test_one_run_recorded_under_two_values_is_not_a_pair(vr):
    run = cell(trust_agreement=0.68, val=0.28)
    run["wall_s"], run["epochs"] = 2412.0, [{"epoch": 1, "loss": 0.5}]
    relabelled = json.loads(json.dumps(run))
    relabelled["spec"]["ssddet"]["trust_agreement"] = 0.0  # the same log and wall time under another value
    rerun = json.loads(json.dumps(relabelled))
    rerun["wall_s"] = 2501.0  # a genuine re-run, bit-identical in AP
    key = ("ssddet", "trust_agreement")
    assert vr.find_pairs(runs(vr, run, relabelled), key) == []
    assert len(vr.relabelled(runs(vr, run, relabelled), key)) == 1
    assert values(vr, vr.find_pairs(runs(vr, run, rerun), key), key) == [[0.0, 0.68]]
