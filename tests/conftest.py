"""Shared fixtures (helper functions are in helpers.py): a tiny COCO dataset (a few small JPEGs with boxes)
written into tmp_path, and one torch thread for training tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import tiny_coco_dict, write_coco


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember whether each phase passed, for `_drop_tmp_path_of_passed_tests`."""
    outcome = yield
    report = outcome.get_result()
    item.stash.setdefault(_PASSED, {})[report.when] = report.passed


_PASSED = pytest.StashKey[dict]()


@pytest.fixture(autouse=True)
def _drop_tmp_path_of_passed_tests(request):
    """Delete a passed test's tmp_path when it ends. Training tests write ~80 MB checkpoints; kept until the
    session ends (pytest's default) the suite held ~12 GB at its peak and a CI machine ran out of disk."""
    yield
    path = request.node.funcargs.get("tmp_path")
    phases = request.node.stash.get(_PASSED, {})
    if path is not None and phases.get("call") and phases.get("setup", True):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tiny_coco(tmp_path) -> tuple[Path, Path, dict]:
    """-> (dataset dir, annotations.json path, the COCO dict written). Splits: 3 train (one without boxes),
    1 val, 1 test; categories 3, 7, 42; one crowd box in image 2."""
    coco = tiny_coco_dict()
    root = tmp_path / "tiny"
    path = write_coco(root, coco)
    return root, path, coco


@pytest.fixture()
def one_torch_thread():
    """Run a test's torch ops on one thread (training tests are tiny; thread start-up dominates)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
