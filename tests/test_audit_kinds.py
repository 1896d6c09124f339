"""The scores of `ssddet audit`'s kinds (engine/audit_kinds.py) on hand-built tensors, and the ranking metrics and
cleanlab adapter of benchmarks/audit_bench.py on hand-built scores."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_benchmark

from ssddet.engine import audit_kinds as ak

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    yield load_benchmark("audit_bench")
    sys.modules.pop("audit_bench", None)


def test_wrong_class_score_is_the_best_other_class_against_the_annotated_one():
    # columns: background, class 1, class 2, class 3
    probs = torch.tensor([[0.1, 0.8, 0.05, 0.05],  # annotated 1, clearly class 1
                          [0.1, 0.2, 0.6, 0.1],  # annotated 1, the detector says class 2
                          [0.9, 0.02, 0.02, 0.06],  # annotated 2: mostly background; class 3 beats 2 by 3 to 1
                          [0.2, 0.4, 0.4, 0.0]])  # annotated 1: a tie with class 2
    score, other = ak.wrong_class_score(probs, torch.tensor([1, 1, 2, 1]))
    assert score.tolist() == pytest.approx([0.05 / 0.85, 0.6 / 0.8, 0.06 / 0.08, 0.5])
    assert other.tolist() == [2, 2, 3, 2]  # class 2 wins the 0.05 tie of row 0 by order, as max does
    assert (score > 0.5).tolist() == [False, True, True, False]  # another class is more likely than the annotated
    # the background share does not enter: the same class ratio ranks the same however much background there is
    same, _ = ak.wrong_class_score(torch.tensor([[0.0, 0.25, 0.75], [0.96, 0.01, 0.03]]), torch.tensor([1, 1]))
    assert same[0] == pytest.approx(same[1])
    one, lab = ak.wrong_class_score(torch.tensor([[0.3, 0.7]]), torch.tensor([1]))  # one class: no other
    assert one.tolist() == [0.0] and lab.tolist() == [1]


def test_the_class_view_is_the_box_with_more_foreground_and_spurious_is_the_smaller_background():
    given = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.1, 0.7]])
    refined = torch.tensor([[0.3, 0.1, 0.6], [0.4, 0.5, 0.1]])
    assert ak.class_view(given, refined).tolist() == [refined[0].tolist(), given[1].tolist()]
    assert ak.spurious_score(given, refined).tolist() == pytest.approx([0.3, 0.2])
    # a box that shows background on both views is flagged; one whose refinement finds the object is not
    assert ak.spurious_score(torch.tensor([[0.95, 0.05]]), torch.tensor([[0.8, 0.2]])).item() == pytest.approx(0.8)
    assert ak.spurious_score(torch.tensor([[0.95, 0.05]]), torch.tensor([[0.1, 0.9]])).item() == pytest.approx(0.1)


def test_the_kind_is_the_first_of_spurious_wrong_class_misplaced_past_one_half():
    assert ak.annotation_kind(0.9, 0.9, 0.9) == "spurious"
    assert ak.annotation_kind(0.9, 0.6, 0.4) == "wrong_class"
    assert ak.annotation_kind(0.9, 0.5, 0.5) == "misplaced"  # 0.5 itself is a tie, not evidence
    assert ak.annotation_kind(0.2, 0.1, 0.3) == ak.OK


def test_missing_objects_are_confident_detections_no_box_covers():
    covered = np.array([[0, 0, 10, 10], [50, 50, 70, 70]], float)  # a given box and a refined box, any class
    dets = np.array([[1, 1, 10, 10],  # on the given box: covered
                     [30, 0, 45, 15],  # off every box, confident: missing
                     [31, 1, 46, 16],  # the same object in another class, less confident: merged by NMS
                     [0, 30, 12, 42],  # off every box, below the score: not reported
                     [52, 52, 72, 72],  # on the refined box: covered
                     [80, 80, 95, 95]], float)  # off every box: missing
    scores = np.array([0.99, 0.9, 0.8, 0.3, 0.95, 0.6])
    assert ak.missing_objects(dets, scores, covered, 0.5).tolist() == [1, 5]  # most confident first
    assert ak.missing_objects(dets, scores, covered, 0.2).tolist() == [1, 5, 3]
    assert ak.missing_objects(dets, scores, np.zeros((0, 4)), 0.5).tolist() == [0, 4, 1, 5]  # an image without boxes
    assert ak.missing_objects(np.zeros((0, 4)), np.zeros(0), covered, 0.5).tolist() == []


def test_average_precision_and_precision_at_count_on_hand_built_rankings(bench):
    ap, pac = bench.average_precision, bench.precision_at_count
    hits = np.array([1, 0, 1, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    assert ap(scores, hits, 2) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert pac(scores, hits, 2) == pytest.approx(0.5)  # top 2: one hit
    assert ap(scores, hits, 4) == pytest.approx((1 + 2 / 3) / 4)  # two errors never found count 0
    assert ap(np.array([0.9, np.nan, 0.7]), np.array([1, 1, 0], bool), 2) == pytest.approx(0.5)  # NaN: not found
    assert ap(scores[::-1].copy(), hits, 2) == pytest.approx((1 / 3 + 2 / 5) / 2)  # the worst order
    # ties are found together, at the end of their group; a tie across the cut counts at its mean hit rate
    tied = np.array([0.5, 0.5, 0.5, 0.5])
    assert ap(tied, np.array([1, 0, 1, 0], bool), 2) == pytest.approx(0.5)
    assert pac(np.array([0.9, 0.5, 0.5, 0.1]), np.array([0, 1, 0, 1], float), 2) == pytest.approx(0.25)
    assert pac(np.array([0.9]), np.array([1.0]), 3) == pytest.approx(1 / 3)  # a short list still divides by 3
    assert np.isnan(ap(scores, hits, 0)) and np.isnan(pac(scores, hits, 0))


def test_missing_findings_match_a_removed_object_once_with_its_class(bench):
    removed = [{"image_id": 1, "box": np.array([0, 0, 10, 10.]), "category_id": 3},
               {"image_id": 2, "box": np.array([0, 0, 10, 10.]), "category_id": 3}]
    findings = [{"image_id": 1, "box": np.array([0, 0, 10, 9.]), "category_id": 3, "score": 0.7},
                {"image_id": 1, "box": np.array([0, 0, 10, 10.]), "category_id": 3, "score": 0.9},  # first
                {"image_id": 2, "box": np.array([0, 0, 10, 10.]), "category_id": 7, "score": 0.8},  # wrong class
                {"image_id": 2, "box": np.array([20, 20, 30, 30.]), "category_id": 3, "score": 0.6}]  # elsewhere
    assert bench.match_findings(findings, removed).tolist() == [False, True, False, False]


def test_truth_of_a_noisy_file(bench):
    noisy = {"annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "true_bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 0, 10, 10], "true_bbox": [0, 0, 10, 10]},  # IoU 1/3
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10], "true_bbox": [0, 0, 10, 10],
         "true_category_id": 3},
        {"id": 4, "image_id": 2, "category_id": 7, "bbox": [40, 40, 10, 10], "spurious": True}],
        "missing_annotations": [{"id": 5, "image_id": 2, "category_id": 3, "bbox": [1, 1, 9, 9],
                                 "true_bbox": [0, 0, 10, 10]},
                                {"id": 6, "image_id": 9, "category_id": 3, "bbox": [0, 0, 5, 5]}]}
    truth = bench.annotation_truth(noisy)
    assert [k for k in (1, 2, 3, 4) if truth[k]["misplaced"]] == [2]
    assert [k for k in (1, 2, 3, 4) if truth[k]["wrong_class"]] == [3]
    assert [k for k in (1, 2, 3, 4) if truth[k]["spurious"]] == [4]
    removed = bench.removed_objects(noisy, {1, 2})  # image 9 was not audited
    assert len(removed) == 1 and removed[0]["box"].tolist() == [0, 0, 10, 10]  # at its true box


def test_cleanlab_reads_the_adapter_as_per_class_predictions(bench):
    """Three classes, three predictions each: without the empty fourth class cleanlab would take the arrays for its
    (boxes, labels, probs) form. A box annotated 0 where class 1 is predicted gets the lowest swap score."""
    rank = pytest.importorskip("cleanlab.object_detection.rank")
    from types import SimpleNamespace

    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.]])
    noisy = {"annotations": [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": [b[0], b[1], 10, 10]}
                             for i, (b, c) in enumerate(zip(boxes, (1, 1, 3)))]}  # annotation 1: truly class 2
    dets = {1: {"boxes": np.concatenate([boxes, boxes + 60, boxes + 120]),
                "scores": np.full(9, 0.99), "category_ids": np.array([2, 1, 3] + [1, 2, 3] * 2)}}
    labels, preds, ids = bench.cleanlab_inputs(noisy, SimpleNamespace(detections=dets), [1, 2, 3])
    assert ids == [[1, 2, 3]] and len(preds[0]) == 4 and [len(p) for p in preds[0]] == [3, 3, 3, 0]
    swap = rank.compute_swap_box_scores(labels=labels, predictions=preds)[0]
    assert swap.argmin() == 0 and swap[0] < 0.5 < min(swap[1:])
