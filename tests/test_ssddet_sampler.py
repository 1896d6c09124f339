"""Neighbourhood sampler, validity mask and random negatives of the SSD-Det refiner."""

import itertools

import pytest
import torch

from ssddet.models.ssddet.negatives import random_negatives, select_negatives
from ssddet.models.ssddet.sampler import (
    PRESETS,
    auto_window,
    bag_size,
    bag_validity,
    neighbourhood_bag,
    unshifted_correction,
)


def _reference_bag(box, scales, shift):
    """Plain-Python version of the documented order: (a outer, b inner) x [none, left, right, up, down]."""
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    out = []
    for a, b in itertools.product(scales, scales):
        ws, hs = w * a, h * b
        for ox, oy in [(0, 0), (-shift, 0), (shift, 0), (0, -shift), (0, shift)]:
            c_x, c_y = cx + ox * ws, cy + oy * hs
            out.append([c_x - ws / 2, c_y - hs / 2, c_x + ws / 2, c_y + hs / 2])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("preset,p", [("large", 125), ("small", 45)])
def test_bag_count_order_and_first_box(preset, p):
    scales, shift = PRESETS[preset]
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 7.0, 3.0]], dtype=torch.float64)
    bag = neighbourhood_bag(boxes, scales, shift)
    assert bag.shape == (2, p, 4) and bag_size(scales) == p
    torch.testing.assert_close(bag[:, 0], boxes)  # proposal 0 is the input box
    for i in range(2):
        torch.testing.assert_close(bag[i], _reference_bag(boxes[i].tolist(), scales, shift))


def test_exact_shifted_coordinates():
    # box w=20, h=40, centre (20, 40); pair (a=1.2, b=0.8) is pair 1*5+3 = 8 -> proposals 40..44
    bag = neighbourhood_bag(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), *PRESETS["large"])[0]
    expected = torch.tensor(
        [
            [8.0, 24.0, 32.0, 56.0],  # unshifted: 24 x 32
            [3.2, 24.0, 27.2, 56.0],  # left by 0.2*24
            [12.8, 24.0, 36.8, 56.0],  # right
            [8.0, 17.6, 32.0, 49.6],  # up by 0.2*32
            [8.0, 30.4, 32.0, 62.4],  # down
        ]
    )
    torch.testing.assert_close(bag[40:45], expected)


def test_validity_near_border():
    # image h=50, w=100; box touching the left border
    box = torch.tensor([[0.0, 10.0, 10.0, 20.0]])
    bag = neighbourhood_bag(box, *PRESETS["large"])
    valid = bag_validity(bag, (50, 100))
    assert valid.shape == (1, 125) and valid.dtype == torch.bool
    # brute force IoF > 0.7
    b = bag[0].double()
    inside = (b[:, 2].clamp(max=100) - b[:, 0].clamp(min=0)).clamp(min=0) * (
        b[:, 3].clamp(max=50) - b[:, 1].clamp(min=0)
    ).clamp(min=0)
    expect = inside / ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) > 0.7
    assert torch.equal(valid[0], expect)
    assert valid[0, 0] and valid[0, 1]  # unshifted; left by 2 px keeps 80 %
    # proposal index = (pair index a_i * 5 + b_i) * 5 + shift index
    assert valid[0, 25 + 1]  # (a=1.2, b=1): left shift keeps 8.6/12 = 72 %
    assert not valid[0, 50 + 1]  # (a=1.3, b=1): left shift keeps 8.9/13 = 68 % -> invalid
    assert valid[0, 50]  # (a=1.3, b=1) unshifted keeps 88 %
    assert 0 < int((~valid).sum()) < 125
    # per-object image sizes give the same answer; exactly 0.7 inside is invalid (strict)
    assert torch.equal(bag_validity(bag, torch.tensor([[50, 100]])), valid)
    edge = torch.tensor([[[-3.0, 0.0, 7.0, 10.0], [-2.9, 0.0, 7.1, 10.0], [5.0, 5.0, 5.0, 9.0]]])
    assert bag_validity(edge, (50, 100)).tolist() == [[False, True, False]]


def test_random_negatives_bounds_and_seed():
    g = torch.Generator().manual_seed(3)
    negs = random_negatives((50, 100), 500, g)
    assert negs.shape == (500, 4)
    x1, y1, x2, y2 = negs.unbind(1)
    assert (x1 >= -20).all() and (x1 <= 100).all() and (y1 >= -10).all() and (y1 <= 50).all()
    assert (x2 >= x1).all() and (x2 <= 120).all() and (y2 >= y1).all() and (y2 <= 60).all()
    again = random_negatives((50, 100), 500, torch.Generator().manual_seed(3))
    assert torch.equal(negs, again)


def test_select_negatives_iou_rule():
    negs = random_negatives((64, 64), 200, torch.Generator().manual_seed(0))
    bag = neighbourhood_bag(torch.tensor([[10.0, 10.0, 40.0, 30.0]]), *PRESETS["small"]).reshape(-1, 4)
    keep = select_negatives(negs, bag, 0.3)

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    expect = [all(iou(n, q) < 0.3 for q in bag.tolist()) for n in negs.tolist()]
    assert keep.tolist() == expect
    assert 0 < sum(expect) < 200
    assert select_negatives(negs, bag[:0]).all()  # no bag boxes: everything is a negative


def test_auto_sampler_reading_and_window():
    """The "auto" sampler's reading: the median relative move of the unshifted proposal (the noisy box); its
    window: the second half of auto_iters readings, or (auto_iters=0) the whole buffer once past the warm-up."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])
    b0 = neighbourhood_bag(boxes, [1.0, 1.1, 0.9], 0.1)
    b1 = b0.clone()
    b1[:, 0, 0] += torch.tensor([1.0, 2.0, 0.0])  # x1 moves by 10%, 20%, 0% of the width: /4 coordinates
    assert unshifted_correction(b0, b1, [1.0, 1.1, 0.9]).item() == pytest.approx(0.025)
    assert unshifted_correction(b0, b1, [1.1, 0.9]) is None  # no unshifted scale-1 proposal
    hist = torch.arange(8.0)
    assert auto_window(hist, 3, 4, 0.3, None) is None
    assert auto_window(hist, 4, 4, 0.3, None).tolist() == [4.0, 5.0, 6.0, 7.0]
    assert auto_window(hist, 8, 0, 0.3, 0.2) is None  # still in the warm-up
    assert auto_window(hist, 3, 0, 0.3, 0.5) is None  # fewer than half the window read
    assert auto_window(hist, 4, 0, 0.3, 0.5) is hist
