"""The training and validation DataLoaders of a run: seeded shuffling (DistributedSampler under DDP),
aspect-ratio grouped batches, worker processes, pinned memory on CUDA, and evaluation sharded over the ranks."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..config import Config
from ..data.batching import GroupedBatchSampler, ShardedBatchSampler, aspect_ratio_groups
from ..data.dataset import CocoDetection, collate, training_records


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the training loader's generator for one epoch: its shuffle order and the DataLoader workers'
    base seed (hence their flips) depend on (seed, epoch, rank) only, so a run resumed at an epoch boundary
    draws exactly what the uninterrupted run drew, with or without worker processes."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def make_loaders(cfg: Config, splits, world: int, rank: int, device: torch.device):
    """-> (train loader, val loader, the DistributedSampler to `set_epoch` or None).

    Training order: one process shuffles with the loader's generator (re-seeded every epoch from
    `epoch_seed`), DDP with a DistributedSampler (seeded with train.seed, `set_epoch` each epoch; equal shares,
    padded with repeats). Batches group images of similar aspect ratio (`data.aspect_groups`; -1: off). Every
    val batch is predicted by exactly one process (`ShardedBatchSampler`)."""
    records = training_records(splits.train_records, cfg.data.keep_empty, splits.train.ann_path)
    train_set = CocoDetection(records, train=True, flip=cfg.data.flip)
    gen = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, 0, rank))  # re-seeded every epoch
    dist_sampler = (DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.train.seed)
                    if world > 1 else None)
    order = dist_sampler if dist_sampler is not None else RandomSampler(train_set, generator=gen)
    # drop a last short batch, unless that would leave no batch at all (a dataset smaller than one step)
    drop_last = len(train_set) >= cfg.train.batch_size * world
    groups = (aspect_ratio_groups(records, cfg.data.aspect_groups) if cfg.data.aspect_groups >= 0
              else [0] * len(records))
    pin = device.type == "cuda"  # page-locked host memory: the copies to the GPU overlap with compute
    train_loader = DataLoader(train_set, batch_sampler=GroupedBatchSampler(order, groups, cfg.train.batch_size,
                                                                           drop_last),
                              num_workers=cfg.data.num_workers, collate_fn=collate, generator=gen,
                              pin_memory=pin, persistent_workers=False)
    val_set = CocoDetection(splits.val_records)
    val_loader = DataLoader(val_set, batch_sampler=ShardedBatchSampler(len(val_set), cfg.train.batch_size, rank,
                                                                       world),
                            num_workers=cfg.data.num_workers, collate_fn=collate, pin_memory=pin)
    return train_loader, val_loader, dist_sampler
