"""Run logging: JSON lines (one record per log step / epoch) + TensorBoard scalars."""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path


class RunLogger:
    def __init__(self, out_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = out_dir / "log.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:  # tensorboard is a dependency, but logging must never kill a run
                self.tb = None

    def write(self, record: dict, step: int, prefix: str) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "kind": prefix, **record}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self.tb is not None:
            for k, v in _flatten(record).items():
                if k not in ("time", "kind", "epoch", "iteration") and isinstance(v, (int, float)):
                    if math.isfinite(v):
                        self.tb.add_scalar(f"{prefix}/{k}", v, step)
            self.tb.flush()

    def truncate_after(self, iteration: int) -> int:
        """Drop the records of iterations after `iteration` (what a crashed run logged past its last
        checkpoint, which the resumed run does again), so that log.jsonl reads as one uninterrupted run.
        An unparsable line (a record cut by the crash) is dropped too. -> number of records dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                keep = not (isinstance(rec.get("iteration"), int) and rec["iteration"] > iteration)
            except (json.JSONDecodeError, AttributeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
            tmp.replace(self.path)
        return dropped

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _flatten(d: dict, pre: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{pre}{k}/"))
        else:
            out[f"{pre}{k}"] = v
    return out


class Averager:
    """Running sums and counts of named finite floats (losses, stats) over an epoch; their means over all
    processes: engine/distributed.py `mean_across_ranks(sums, counts)`."""

    def __init__(self):
        self.sums = defaultdict(float)
        self.counts = defaultdict(int)

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            if v is not None and math.isfinite(v):
                self.sums[k] += v
                self.counts[k] += 1
