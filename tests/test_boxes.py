"""The box module (`ssddet.data.boxes`): the aligned-pairs IoU and its numpy wrapper (exact values on hand-built
boxes, broadcasting, dtypes, empty/degenerate boxes: 0, never NaN), sides, areas, clipping, COCO conversions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssddet.data.boxes import (
    aligned_iou,
    aligned_iou_np,
    box_area_nonneg,
    box_wh,
    clip_boxes,
    replace_degenerate,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

A = [[0.0, 0.0, 10.0, 10.0]] * 6
B = [[0.0, 0.0, 10.0, 10.0],  # identical: 1
     [5.0, 0.0, 15.0, 10.0],  # half overlap: 50 / 150
     [10.0, 0.0, 20.0, 10.0],  # touching edge: 0
     [2.0, 2.0, 6.0, 7.0],  # inside: 20 / 100
     [20.0, 20.0, 30.0, 30.0],  # disjoint: 0
     [-5.0, 5.0, 5.0, 20.0]]  # corner: 25 / (100 + 150 - 25)
EXPECTED = [1.0, 1 / 3, 0.0, 0.2, 0.0, 25 / 225]


def test_aligned_iou_exact_values():
    got = aligned_iou(torch.tensor(A, dtype=torch.float64), torch.tensor(B, dtype=torch.float64))
    assert got.dtype == torch.float64 and got.tolist() == EXPECTED
    assert aligned_iou_np(A, B).tolist() == EXPECTED
    # symmetric, float32 by default
    got32 = aligned_iou(torch.tensor(B), torch.tensor(A))
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32, torch.tensor(EXPECTED))


def test_aligned_iou_empty_and_degenerate_boxes_are_zero_not_nan():
    point = [3.0, 3.0, 3.0, 3.0]
    line = [0.0, 5.0, 10.0, 5.0]
    inverted = [10.0, 10.0, 0.0, 0.0]  # x2 < x1 and y2 < y1: empty, not an area of +100
    a = torch.tensor([point, point, line, line, inverted, inverted, [0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([point, [0.0, 0.0, 10.0, 10.0], line, [0.0, 0.0, 10.0, 10.0], inverted,
                      [0.0, 0.0, 10.0, 10.0], [4.0, 8.0, 2.0, 9.0]])
    got = aligned_iou(a, b)
    assert got.tolist() == [0.0] * 7  # 0/0 for the identical empty pairs
    # no boxes at all
    assert aligned_iou(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)
    assert aligned_iou_np(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0,)


def test_aligned_iou_broadcasts_a_bag_against_its_box():
    bag = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]],
                        [[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]]])  # [M=2, P=2, 4]
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])  # [M, 4]
    got = aligned_iou(bag, ref[:, None])
    assert got.shape == (2, 2)
    torch.testing.assert_close(got, torch.tensor([[1.0, 1 / 3], [1.0, 0.25]]))
    # one box against many (numpy, as the synthetic-set generator uses it)
    assert aligned_iou_np(A[0], B[:2]).tolist() == pytest.approx([1.0, 1 / 3])
    assert aligned_iou_np(A[0], B[1]).shape == ()


def test_aligned_iou_half_precision_and_int_inputs_give_float32():
    a = torch.tensor([[0, 0, 10, 10]])
    b = torch.tensor([[5, 0, 15, 10]])
    assert aligned_iou(a, b).dtype == torch.float32
    assert aligned_iou(a.half(), b.half()).dtype == torch.float32
    torch.testing.assert_close(aligned_iou(a, b), torch.tensor([1 / 3]))


def test_clip_boxes_one_size_and_per_object():
    boxes = torch.tensor([[-5.0, 3.0, 70.0, 90.0], [10.0, -2.0, 20.0, 30.0]])
    assert clip_boxes(boxes, (50, 60)).tolist() == [[0.0, 3.0, 60.0, 50.0], [10.0, 0.0, 20.0, 30.0]]
    hw = torch.tensor([[50, 60], [25, 15]])  # (h, w) of each object's image
    per = clip_boxes(boxes, hw)
    assert per.tolist() == [[0.0, 3.0, 60.0, 50.0], [10.0, 0.0, 15.0, 25.0]]
    bags = boxes[:, None].expand(2, 3, 4)  # a per-object size broadcasts over a bag's proposals
    assert torch.equal(clip_boxes(bags, hw), per[:, None].expand(2, 3, 4))


def test_sides_areas_and_coco_conversions():
    b = torch.tensor([[0.0, 0.0, 4.0, 3.0], [5.0, 5.0, 2.0, 9.0]])  # the second box is inverted in x
    assert box_wh(b).tolist() == [[4.0, 3.0], [-3.0, 4.0]]
    assert box_area_nonneg(b).tolist() == [12.0, 0.0]
    assert box_area_nonneg(b[None].expand(3, 2, 4)).shape == (3, 2)
    xywh = [[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, 1.0, 2.5]]
    assert xywh_to_xyxy(xywh).tolist() == [[1.0, 2.0, 4.0, 6.0], [0.5, 0.0, 1.5, 2.5]]
    assert xyxy_to_xywh(xywh_to_xyxy(xywh)).tolist() == xywh
    assert xywh_to_xyxy(xywh[0]).shape == (4,)


def test_replace_degenerate_boxes():
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 0.5, 5.0], [1.0, float("nan"), 2.0, 3.0],
                          [3.0, 3.0, 2.0, 9.0]])
    fallback = torch.full((4, 4), 7.0)
    out, n = replace_degenerate(boxes, fallback, min_size=1.0)
    assert n.item() == 3 and out[0].tolist() == [0.0, 0.0, 5.0, 5.0]
    assert (out[1:] == 7.0).all()  # too thin, non-finite, inverted
