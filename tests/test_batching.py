"""Aspect-ratio grouped training batches (alone and over a DistributedSampler) and sharded evaluation batches."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler, SequentialSampler

from ssddet.data.batching import GroupedBatchSampler, ShardedBatchSampler, aspect_ratio_groups


def _records(sizes):
    return [SimpleNamespace(width=w, height=h) for w, h in sizes]


def test_aspect_ratio_groups_use_torchvision_bins():
    # factor 1: bins 2**[-1, 0, 1] = [0.5, 1, 2] on width/height -> 4 buckets
    recs = _records([(40, 100), (60, 100), (100, 100), (150, 100), (300, 100)])
    assert aspect_ratio_groups(recs, 1) == [0, 1, 2, 2, 3]
    assert aspect_ratio_groups(recs, 0) == [0, 0, 1, 1, 1]  # portrait | landscape (square counts as landscape)
    assert len(set(aspect_ratio_groups(_records([(100, 100 + i) for i in range(0, 100, 7)]), 3))) > 1


GROUPS = [0, 1, 0, 1, 1, 0, 2, 1, 0, 0, 1]  # 11 images: 5 of group 0, 5 of group 1, 1 of group 2


@pytest.mark.parametrize("drop_last", [False, True])
def test_grouped_batches_are_homogeneous_and_use_every_index_once(drop_last):
    order = [3, 0, 6, 1, 9, 4, 2, 10, 8, 5, 7]
    batches = list(GroupedBatchSampler(order, GROUPS, 2, drop_last))
    assert len(batches) == len(GroupedBatchSampler(order, GROUPS, 2, drop_last)) == (5 if drop_last else 6)
    full = batches[:4]  # 4 batches fill up within a group, in the order they fill up
    assert full == [[3, 1], [0, 9], [4, 10], [2, 8]]
    # the leftovers (5 of group 0, 7 of group 1, 6 of group 2) are chained in group order
    assert batches[4] == [5, 7]
    if not drop_last:
        assert batches[5] == [6]
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used)) and set(used) <= set(order)
    assert len(used) == (10 if drop_last else 11)


def test_one_group_gives_a_plain_batch_sampler():
    order = list(RandomSampler(range(9), generator=torch.Generator().manual_seed(0)))
    assert list(GroupedBatchSampler(order, [0] * 9, 4, False)) == list(BatchSampler(order, 4, False))
    assert list(GroupedBatchSampler(order, [0] * 9, 4, True)) == list(BatchSampler(order, 4, True))


def test_grouped_batches_over_a_distributed_sampler():
    """Each rank gets the same number of batches (lockstep), the ranks' images partition the (padded) epoch,
    the order is a function of (seed, epoch) only, and set_epoch reshuffles."""
    dataset = list(range(len(GROUPS)))

    def epoch(rank, e):
        s = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=7)
        s.set_epoch(e)
        return list(GroupedBatchSampler(s, GROUPS, 2, drop_last=True))

    for e in range(3):
        r0, r1 = epoch(0, e), epoch(1, e)
        assert len(r0) == len(r1) == 3  # 6 indices per rank (11 padded to 12) // 2
        assert epoch(0, e) == r0  # deterministic
        seen = [i for b in r0 + r1 for i in b]
        assert len(set(seen)) >= 10  # disjoint up to the padding repeat
    assert epoch(0, 0) != epoch(0, 1)


def test_sharded_eval_batches_partition_the_single_process_batches():
    one = list(ShardedBatchSampler(5, 2))
    assert one == list(BatchSampler(SequentialSampler(range(5)), 2, False)) == [[0, 1], [2, 3], [4]]
    r0, r1 = list(ShardedBatchSampler(5, 2, 0, 2)), list(ShardedBatchSampler(5, 2, 1, 2))
    assert r0 == [[0, 1], [4]] and r1 == [[2, 3]]
    assert (len(ShardedBatchSampler(5, 2, 0, 2)), len(ShardedBatchSampler(5, 2, 1, 2))) == (2, 1)
    assert list(ShardedBatchSampler(1, 2, 1, 2)) == [] and len(ShardedBatchSampler(1, 2, 1, 2)) == 0
