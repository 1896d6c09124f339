"""The run's SGD (engine/accel.py build_sgd): the fused CPU kernel makes the update foreach SGD makes."""
import copy

import torch

from ssddet.config import TrainConfig
from ssddet.engine.accel import build_sgd


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64)) for n in (7, 300, 1)]


def _run(opt, params, steps=5):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        params[2].grad = None  # a parameter without gradient this step (an unused head) is left alone
        opt.step()
    return [p.detach().clone() for p in params]


def test_fused_cpu_sgd_equals_foreach_update_per_group():
    cfg = TrainConfig()
    a, b = _params(0), _params(0)
    fused = build_sgd([{"params": a[:2]}, {"params": a[2:], "lr": 0.5}], 0.1, cfg, torch.device("cpu"))
    assert fused.defaults["fused"] is True
    ref = torch.optim.SGD([{"params": b[:2]}, {"params": b[2:], "lr": 0.5}], lr=0.1, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, foreach=True)
    got, want = _run(fused, a), _run(ref, b)
    assert not torch.equal(got[0], _params(0)[0])  # it moved
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[2], _params(0)[2])


def test_a_foreach_checkpoint_resumes_into_the_fused_optimizer():
    cfg = TrainConfig()
    a, b = _params(0), _params(0)
    old = torch.optim.SGD(a, lr=0.1, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    _run(old, a, steps=2)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    new = build_sgd([{"params": b}], 0.1, cfg, torch.device("cpu"))
    new.load_state_dict(copy.deepcopy(old.state_dict()))  # a loaded state shares its tensors
    for x, y in zip(_run(new, b, steps=3), _run(old, a, steps=3)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
