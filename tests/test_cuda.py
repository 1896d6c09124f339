"""CUDA paths (skipped without a GPU; `benchmarks/gpu_check.py` runs them): AMP steps in bf16 and fp16 (GradScaler
for fp16 only, gradients unscaled before the clipping, the steps it skips logged as such), the refiner's fp32 losses
under CUDA autocast (torch refuses binary_cross_entropy there), and --resume on CUDA."""
from __future__ import annotations

import pytest
import torch
from helpers import assert_same_state, crash_after_first_epoch, step_grad_norms, train_args, write_shapes_coco

from ssddet.cli import main
from ssddet.engine import train as train_mod

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_coco(tmp_path_factory.mktemp("cuda") / "data", n_train=4, n_val=2)


@pytest.mark.parametrize("method", ["vanilla", "ssddet"])
def test_amp_steps_on_cuda(method, shapes, tmp_path, monkeypatch):
    """2 epochs of 2 steps in fp32, bf16 and fp16. fp16's GradScaler starts at 2^16 and skips the steps whose
    gradients overflow there (inf norm, amp_skipped=1): accepted; any other non-finite value fails."""
    monkeypatch.setattr(train_mod, "LOG_EVERY", 1)
    norms = {}
    for name, amp in (("fp32", []), ("bf16", ["--amp"]), ("fp16", ["--amp", "--amp-dtype", "fp16"])):
        out = tmp_path / name
        assert main(train_args(shapes, out, method, 2, 2, "--device", "cuda", "--noise", "0.3", *amp)) == 0
        ck = torch.load(out / "checkpoint.pt", weights_only=True)
        assert bool(ck["scaler"]) == (name == "fp16")  # a GradScaler for fp16 only
        norms[name] = step_grad_norms(out)  # None: a step fp16's GradScaler skipped (fp32/bf16 have no scaler)
    # An fp16 norm measured before unscaling would be >= 1000x. Compared at the first step fp16 applied: the same
    # weights for bf16 (step 1); for fp16 the skipped steps left its weights at the start, fp32's moved a little.
    for name in ("bf16", "fp16"):
        i = next((i for i, n in enumerate(norms[name]) if n is not None), None)
        assert i is not None, f"{name}: the GradScaler skipped every step: {norms}"
        assert 0.5 < norms[name][i] / norms["fp32"][i] < 2.0, (name, i, norms)


def test_resume_on_cuda(shapes, tmp_path, monkeypatch):
    """Crash after epoch 1, --resume: the CPU RNG states come back to the CPU, the CUDA ones to the GPU; the
    weights end (nearly: CUDA's atomic-add kernels are not bit-reproducible) where an uninterrupted run ends."""
    extra = ("--device", "cuda", "--noise", "0.3", "--set", "train.deterministic=true")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(train_args(shapes, straight, "ssddet", 2, 2, *extra)) == 0
    with monkeypatch.context() as m:
        crash_after_first_epoch(m, KeyboardInterrupt)
        assert main(train_args(shapes, resumed, "ssddet", 2, 2, *extra)) == 130
    assert main(train_args(shapes, resumed, "ssddet", 2, 2, *extra, "--resume")) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"]) == (2, 4)
    assert a["method"]["bank._extra_state"]["ids"].tolist() == b["method"]["bank._extra_state"]["ids"].tolist()
    try:
        assert_same_state(a["method"], b["method"])
    except AssertionError:
        for k, v in a["method"].items():
            if torch.is_tensor(v) and v.is_floating_point():
                torch.testing.assert_close(v, b["method"][k], rtol=1e-3, atol=1e-4, msg=k)


def test_pinned_batches_keep_their_unreadable_images(tmp_path):
    """DataLoader(pin_memory=True) (every CUDA run) rebuilds batches: a Batch pins itself and keeps `bad`."""
    from helpers import tiny_coco_dict, write_coco
    from torch.utils.data import DataLoader

    from ssddet.data.coco import load_coco
    from ssddet.data.dataset import CocoDetection, collate

    ann = write_coco(tmp_path / "d", tiny_coco_dict())
    (tmp_path / "d/images/a.jpg").write_bytes(b"not a jpeg")
    loader = DataLoader(CocoDetection(load_coco(ann).records[:2]), batch_size=2, num_workers=1, collate_fn=collate,
                        pin_memory=True)
    batches = list(loader)
    assert len(batches) == 1
    images, targets = batches[0]
    assert [e.image_id for e in batches[0].bad] == [1] and len(images) == 1 and images[0].is_pinned()
    assert targets[0]["boxes"].is_pinned()
