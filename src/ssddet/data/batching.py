"""Batch samplers: aspect-ratio grouping for training, whole-batch sharding for distributed evaluation.

A detection batch is padded to its largest image (GeneralizedRCNNTransform.batch_images), so a portrait image
batched with a landscape one spends up to half the step on padding. Grouping by aspect-ratio bucket (the idea of
torchvision's detection references, `GroupedBatchSampler` + `create_aspect_ratio_groups`) keeps the padding small.
Both samplers are pure functions of the index order they are given, so a DistributedSampler or a seeded
RandomSampler underneath keeps runs reproducible and resumable.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from .coco import ImageRecord


def aspect_ratio_groups(records: Sequence[ImageRecord], factor: int) -> list[int]:
    """Group id per record: its width/height bucketed at 2**linspace(-1, 1, 2*factor + 1) (torchvision's
    bins: 2*factor + 2 buckets, the outer two for ratios beyond 1:2 and 2:1); factor 0: portrait vs landscape."""
    bins = (2.0 ** np.linspace(-1, 1, 2 * factor + 1)).tolist() if factor > 0 else [1.0]
    return [bisect.bisect_right(bins, r.width / r.height) for r in records]


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` indices from `sampler` that share a group id, in the order the groups fill up.

    What is left in the groups at the end (fewer than `batch_size` each) is chained in group order (neighbouring
    aspect buckets) and cut into batches, so every index is used exactly once and the number of batches is that
    of a plain BatchSampler: ceil(n / batch_size), or floor with drop_last. It therefore depends on n only, which
    keeps DDP processes (equal n per process under DistributedSampler) in lockstep. With a single group the
    batches are exactly a BatchSampler's."""

    def __init__(self, sampler: Iterable[int], group_ids: Sequence[int], batch_size: int, drop_last: bool):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for idx in self.sampler:
            bucket = buckets.setdefault(self.group_ids[idx], [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
        rest = [i for g in sorted(buckets) for i in buckets[g]]
        for start in range(0, len(rest), self.batch_size):
            batch = rest[start:start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class ShardedBatchSampler(Sampler[list[int]]):
    """Evaluation under DDP: the dataset cut in order into batches of `batch_size`, batch b going to rank
    b % world. Each image is predicted once (DistributedSampler would pad with repeats) and in the very batch a
    single process forms, so the detections, padding included, match a 1-process run's."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        super().__init__()
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for b, start in enumerate(range(0, self.n, self.batch_size)):
            if b % self.world == self.rank:
                yield list(range(start, min(start + self.batch_size, self.n)))

    def __len__(self) -> int:
        return len(range(self.rank, math.ceil(self.n / self.batch_size), self.world))
