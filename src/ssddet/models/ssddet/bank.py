"""Per-annotation memory bank of refined boxes.

Refining every object every iteration is what makes SSD-Det expensive (~3*P RoIs per object). With a cap on
the objects refined per image, the others would fall back to their noisy box; the bank instead gives them the
box the refiner produced the last time it saw that annotation. Boxes are stored normalised to [0, 1] in the
unflipped image frame, so they survive resizing and random flips. The bank is saved in the state_dict
(`get_extra_state`), so `--resume` continues with it.

Under DDP there is one logical bank: every process holds a full copy, and each step's updates of all processes are
all-gathered and applied by every process in rank order (`update_all_ranks`), so every copy stays identical. A
per-process bank would miss most entries, since the DistributedSampler deals an annotation to a different process
each epoch. The updates are a few boxes per image (tens of floats per step), so the copy costs little, and rank 0's
copy saved in the checkpoint is the whole bank.

Shapes: M objects of one image.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def to_unit(boxes: Tensor, size: tuple[int, int], flipped: bool) -> Tensor:
    """Tensor[M,4] xyxy pixels of an (h, w) image, possibly flipped -> Tensor[M,4] unflipped, in [0,1] units."""
    h, w = size
    u = boxes / boxes.new_tensor([w, h, w, h])
    if flipped:
        u = torch.stack([1 - u[:, 2], u[:, 1], 1 - u[:, 0], u[:, 3]], dim=1)
    return u


def from_unit(unit: Tensor, size: tuple[int, int], flipped: bool) -> Tensor:
    """Inverse of `to_unit`."""
    h, w = size
    if flipped:
        unit = torch.stack([1 - unit[:, 2], unit[:, 1], 1 - unit[:, 0], unit[:, 3]], dim=1)
    return unit * unit.new_tensor([w, h, w, h])


class BoxBank(nn.Module):
    """Annotation id -> last refined unit box, and the step (`update_all_ranks` call) that wrote it, so the
    refiner can pick the objects whose banked box is oldest (`last_refined`); and, where the caller gives them, the
    merged boxes b̃ before the keep step (`merged`, the keep step's second view at the next visit)."""

    def __init__(self):
        super().__init__()
        self.boxes: dict[int, tuple[float, float, float, float]] = {}
        self.merged: dict[int, tuple[float, float, float, float]] = {}
        self.when: dict[int, int] = {}  # annotation id -> step of its last refinement
        self.step = 0

    def __len__(self) -> int:
        return len(self.boxes)

    def lookup(self, ann_ids: Tensor, merged: bool = False) -> tuple[Tensor, Tensor]:
        """Int64[M] -> (Tensor[M,4] unit boxes (zeros where unknown), Bool[M] found); `merged`: from that table."""
        ids, table = ann_ids.tolist(), self.merged if merged else self.boxes
        found = [i in table for i in ids]
        rows = [table.get(i, (0.0, 0.0, 0.0, 0.0)) for i in ids]
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4), torch.tensor(found, dtype=torch.bool)

    def last_refined(self, ann_ids: Tensor) -> Tensor:
        """Int64[M] -> Int64[M]: the step each annotation was last refined at, -1 if never."""
        return torch.tensor([self.when.get(i, -1) for i in ann_ids.tolist()], dtype=torch.int64)

    def update(self, ann_ids: Tensor, unit_boxes: Tensor, merged: Tensor | None = None) -> None:
        self._write([_rows(ann_ids, unit_boxes, merged)])

    def _write(self, updates: list[tuple[list[int], list[list[float]], list[list[float]] | None]]) -> None:
        """Write (ids, unit boxes, merged unit boxes or None) in order, all stamped with this step; then the step
        advances."""
        for ids, boxes, merged in updates:
            for j, (i, b) in enumerate(zip(ids, boxes)):
                self.boxes[int(i)] = tuple(b)
                self.when[int(i)] = self.step
                if merged is not None:
                    self.merged[int(i)] = tuple(merged[j])
        self.step += 1

    def update_all_ranks(self, ann_ids: Tensor, unit_boxes: Tensor, merged: Tensor | None = None) -> None:
        """`update` with every process's Int64[M_r] ids and Tensor[M_r, 4] unit boxes (and merged boxes) of this
        step, applied in rank order, so all copies agree even when two processes refined the same annotation (the
        DistributedSampler pads a rank's share with repeated images). A collective: every process of the group
        calls it once per training step, with M_r = 0 if it has nothing to add. One process: plain `update`."""
        update = _rows(ann_ids, unit_boxes, merged)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            updates: list = [None] * dist.get_world_size()
            dist.all_gather_object(updates, update)
        else:
            updates = [update]
        self._write(updates)

    def get_extra_state(self) -> dict:
        ids = torch.tensor(list(self.boxes), dtype=torch.int64)
        return {"ids": ids, "boxes": torch.tensor(list(self.boxes.values()), dtype=torch.float32).reshape(-1, 4),
                "when": torch.tensor([self.when.get(i, 0) for i in self.boxes], dtype=torch.int64),
                "step": torch.tensor(self.step, dtype=torch.int64),
                "merged_ids": torch.tensor(list(self.merged), dtype=torch.int64),
                "merged": torch.tensor(list(self.merged.values()), dtype=torch.float32).reshape(-1, 4)}

    def set_extra_state(self, state: dict) -> None:
        self.boxes = {int(i): tuple(b) for i, b in zip(state["ids"].tolist(), state["boxes"].tolist())}
        # checkpoints written before the merged table: none known
        self.merged = {int(i): tuple(b) for i, b in zip(state.get("merged_ids", torch.zeros(0)).tolist(),
                                                         state.get("merged", torch.zeros(0, 4)).tolist())}
        # checkpoints written before the bank kept ages: every entry counts as written at step 0
        when = state["when"].tolist() if "when" in state else [0] * len(self.boxes)
        self.when = dict(zip(self.boxes, (int(w) for w in when)))
        self.step = int(state["step"]) if "step" in state else 0


def _rows(ann_ids: Tensor, unit_boxes: Tensor, merged: Tensor | None) -> tuple:
    """One process's update as plain lists (what all_gather_object sends)."""
    rows = merged.detach().float().cpu().tolist() if merged is not None else None
    return ann_ids.cpu().tolist(), unit_boxes.detach().float().cpu().tolist(), rows
