"""Named scopes at the seams of a training step (backbone, RPN, R-CNN, the refiner's parts, the bank), for
`benchmarks/speed.py --profile` and for torch.profiler traces.

`with scope("refiner.trunks"):` is a `torch.profiler.record_function` while a torch profiler runs, so the parts
show by name in its traces and tables; while a `StepTimer` is active (`timing`), it also adds the scope's wall
time (time.perf_counter) to the timer. With neither, it is a shared no-op context (a flag check and a call): the
model code keeps its scopes at no measurable cost. Neither path touches a tensor, so scopes change no result.

A scope's time is kept twice: inclusive (`total_s`) and exclusive (`self_s`, less the scopes nested in it), so
the exclusive times of all scopes plus the unscoped rest add up to the wall time of what was timed."""
from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.autograd.profiler as _autograd_profiler

_NULL = contextlib.nullcontext()
_timer: StepTimer | None = None


class StepTimer:
    """Wall time per scope name, inclusive and exclusive of nested scopes, summed over calls until `reset`.

    sync: called at every scope boundary before the clock is read (e.g. torch.cuda.synchronize, so that a GPU
    scope's time is its kernels' and not their launch's); None on the CPU, where ops run synchronously."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.sync = sync
        self.total_s: dict[str, float] = defaultdict(float)
        self.self_s: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [name, start, time of the scopes nested in it]

    def reset(self) -> None:
        self.total_s.clear()
        self.self_s.clear()
        self.calls.clear()
        self._stack.clear()

    def enter(self, name: str) -> None:
        if self.sync is not None:
            self.sync()
        self._stack.append([name, time.perf_counter(), 0.0])

    def exit(self) -> None:
        if self.sync is not None:
            self.sync()
        name, start, nested = self._stack.pop()
        dt = time.perf_counter() - start
        self.total_s[name] += dt
        self.self_s[name] += dt - nested
        self.calls[name] += 1
        if self._stack:
            self._stack[-1][2] += dt


class _Scope:
    __slots__ = ("name", "timer", "record")

    def __init__(self, name: str, timer: StepTimer | None, profiling: bool):
        self.name, self.timer = name, timer
        self.record = torch.profiler.record_function(name) if profiling else None

    def __enter__(self):
        if self.record is not None:
            self.record.__enter__()
        if self.timer is not None:
            self.timer.enter(self.name)
        return self

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.exit()
        if self.record is not None:
            self.record.__exit__(*exc)
        return False


def scope(name: str) -> contextlib.AbstractContextManager:
    """A named part of the step: a record_function under a torch profiler, timed under `timing`; else no-op."""
    profiling = _autograd_profiler._is_profiler_enabled
    if _timer is None and not profiling:
        return _NULL
    return _Scope(name, _timer, profiling)


def scoped(name: str):
    """Decorator: the whole call is `scope(name)`."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with scope(name):
                return fn(*args, **kwargs)
        return inner
    return wrap


@contextlib.contextmanager
def timing(timer: StepTimer):
    """Make `timer` collect the scopes entered in this block (this process; the previous timer comes back)."""
    global _timer
    previous, _timer = _timer, timer
    try:
        yield timer
    finally:
        _timer = previous
