"""Keep the box (method.md 3.1 step 8): the given box b* against the merged box b̃, per object.

Shapes: M objects; candidates Tensor[M, 2, 4] = (b*, b̃) xyxy.

Without this step a correct box survives the refiner only if the whole bag collapses onto it, so exact boxes come
back moved by the refiner's own error. Two arms keep b*: the refiner's scores prefer it (ties included), or b̃ is
within `keep_iou` of it, i.e. the proposed move is no larger than what the refiner does to exact boxes.

One threshold cannot serve every dataset: the refiner moves exact boxes by its own error, about as far as it moves a
mildly noisy box. What tells them apart is the *shape* of the agreements IoU(b*, b̃) of recent boxes
(`agreement_modes`): where some given boxes are exact, the refiner meets them in a narrow mode of its own (mean
0.80-0.83 on BCCD with 0 %, 20 % or 50 % of the boxes exact), well above what it gives boxes that are all a little
off (highest mode 0.63 at 20 % noise on every box, 0.56-0.57 at 40 %). While the highest mode of the last
`trust_window` agreements (after the warm-up) is at least `trust_mode`, the given boxes are trusted box by box: each
b* is kept where IoU(b*, b̃) >= `trusted_keep_iou` and replaced below it, so a dataset of mostly right boxes keeps
its right boxes and still has its wrong ones corrected (docs/method.md 3.1 step 8). The older rule, the running mean
of all agreements against `trust_agreement`, stays as an option (0: off). Both have hysteresis: trust ends only
below the threshold minus `trust_margin`.

Two options ask the refiner about its own noise instead, with a second view b̃' of each object (its b̃ of the
previous visit, from the bank; at export, on the mirror image): `history_arm` keeps b* box by box where
IoU(b*, b̃) >= IoU(b̃, b̃') - delta (`keep_history`), and `trust_self` trusts the given boxes while the running
mean of IoU(b*, b̃) - IoU(b̃, b̃') is >= -`trust_self_delta` (`self_gap`). Shapes: previous Tensor[M, 4], NaN rows
where an object has no second view. With `self_view="mirror"` the training method measures b̃' on the mirror
image instead, every few steps (`observe_mirror`): the previous visit carries the refiner's drift between visits,
which a refiner still learning makes look like agreement with any box.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...data.boxes import aligned_iou

# IoU-arm thresholds whose outcome is logged beside the one in use (with clean boxes: `iou_keep_tXX`, the mean IoU
# with the clean box had b* been kept wherever IoU(b*, b̃) >= 0.XX, and `keep_tXX`, the share kept), so one run
# shows what every threshold would have given at its noise level (docs/method.md 3.1 step 8)
PROBE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# With clean boxes the same statistics also come apart for the objects whose given box is exact (IoU with the
# clean box >= EXACT_IOU: `_exact`) and for the others (`_noised`), so a run on partly noised boxes shows what each
# rule does to the right boxes and to the wrong ones (statistics only; the decision never sees the clean boxes)
EXACT_IOU = 0.99
# The mode rule decides only once the window holds this many agreements (a mixture of a few boxes says nothing)
MIN_MODE_COUNT = 256
# A per-box arm the refiner could use without the dataset's trust: keep b* where SISD's own IoU estimate of it is
# at least 0.XX (`iou_keep_sXX`, `keep_sXX`, and per group `iou_keep_sXX_G`). On BCCD's final refiners it
# separates exact from noised given boxes (docs/method.md 3.1 step 8); logged to choose a threshold on data.
SISD_PROBE_THRESHOLDS = (0.7, 0.75, 0.8)
SELF_VIEWS = ("previous", "mirror")  # trust_self's second view of each object (config `self_view`)


@torch.no_grad()
def keep_the_box(cand: Tensor, cls: Tensor, iou: Tensor | None, keep_iou: float,
                 clean: Tensor | None = None, trusted_iou: float | None = None,
                 agree: Tensor | None = None, keep_sisd: float = 0.0,
                 keep_also: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Choose b* or b̃ for every object.

    Args:
        cand: Tensor[M, 2, 4], (b*, b̃).
        cls: Tensor[M, 2] stage-II class scores sigma(cls1) of the GT class.
        iou: Tensor[M, 2] SISD's IoU estimates (IoU units), or None without SISD (then 1).
        keep_iou: b* is also kept where IoU(b*, b̃) >= keep_iou (<= 0: that arm is off).
        clean: optional Tensor[M, 4] clean boxes: adds what other rules would have given (statistics only).
        trusted_iou: None, or the dataset's boxes are trusted and b* is kept exactly where IoU(b*, b̃) >=
            trusted_iou (<= 0: every b*), whatever the scores say.
        agree: Tensor[M] IoU(b*, b̃) if the caller has it already.
        keep_sisd: untrusted, b* is also kept where SISD's IoU estimate of it is >= keep_sisd (<= 0 or without
            SISD: that arm is off).
        keep_also: optional Bool[M], more b* to keep whatever the other arms say (`history_arm`).

    Returns:
        (Tensor[M, 4] the kept boxes, stats: keep_rate, iou_given_merged and with `clean` iou_merged,
        iou_keep_oracle, iou_keep_cls, iou_keep_sisd and per PROBE_THRESHOLDS iou_keep_tXX, keep_tXX as 0-dim
        Tensors).
    """
    u = iou.clamp(0, 1) if iou is not None else torch.ones_like(cls)
    score = cls * u
    agree = aligned_iou(cand[:, 0], cand[:, 1]) if agree is None else agree
    keep = score[:, 0] >= score[:, 1]
    if keep_iou > 0:
        keep |= agree >= keep_iou
    if keep_sisd > 0 and iou is not None:
        keep |= u[:, 0] >= keep_sisd
    if trusted_iou is not None:
        keep = agree >= trusted_iou if trusted_iou > 0 else torch.ones_like(keep)
    if keep_also is not None:
        keep |= keep_also
    stats = {"keep_rate": keep.float().mean(), "iou_given_merged": agree.mean()}
    if clean is not None:
        ar = torch.arange(cand.shape[0], device=cand.device)
        q = aligned_iou(cand, clean[:, None])  # [M, 2]
        stats.update(iou_merged=q[:, 1].mean(), iou_keep_oracle=q.max(dim=1).values.mean(),
                     iou_keep_cls=q[ar, (cls[:, 0] < cls[:, 1]).long()].mean(),
                     iou_keep_sisd=q[ar, (u[:, 0] < u[:, 1]).long()].mean())
        sisd_given = u[:, 0] if iou is not None else None
        for tag, signal, thresholds in _probe_arms(agree, sisd_given):
            for t in thresholds:
                stats[f"iou_keep_{tag}{round(t * 100)}"] = _arm_iou(q, signal >= t)
                stats[f"keep_{tag}{round(t * 100)}"] = (signal >= t).float().mean()
        stats.update(_by_exactness(q, keep, agree, sisd_given))
    return torch.where(keep[:, None], cand[:, 0], cand[:, 1]), stats


def _probe_arms(agree: Tensor, sisd_given: Tensor | None) -> list[tuple[str, Tensor, tuple[float, ...]]]:
    """The probed keep arms: (tag, Tensor[M] signal, thresholds): "t" the IoU arm on IoU(b*, b̃), and with SISD
    "s" its estimate of b*."""
    return [("t", agree, PROBE_THRESHOLDS)] + ([("s", sisd_given, SISD_PROBE_THRESHOLDS)] if sisd_given is not None
                                                else [])


def _arm_iou(q: Tensor, keep: Tensor, m: Tensor | None = None) -> Tensor:
    """Mean IoU with the clean box (q: Tensor[M, 2] of b*, b̃) had b* been kept where Bool[M] `keep`, over the
    objects of mask `m` (all if None)."""
    r = torch.where(keep, q[:, 0], q[:, 1])
    return (r if m is None else r[m]).mean()


def _by_exactness(q: Tensor, keep: Tensor, agree: Tensor, sisd_given: Tensor | None = None) -> dict[str, Tensor]:
    """Statistics of the exact given boxes and of the others apart. q: Tensor[M, 2] IoU of (b*, b̃) with the clean
    box; keep: Bool[M] the decision; agree: Tensor[M] IoU(b*, b̃); sisd_given: Tensor[M] SISD's IoU estimate of b*
    (or None). -> iou_keep_G, keep_rate_G and, per PROBE_THRESHOLDS, iou_keep_tXX_G (with sisd_given also
    sisd_given_G and per SISD_PROBE_THRESHOLDS iou_keep_sXX_G) for G in (exact, noised), a group without objects
    left out."""
    exact = q[:, 0] >= EXACT_IOU
    out = {}
    for name, m in (("exact", exact), ("noised", ~exact)):
        if not m.any():
            continue
        out[f"iou_keep_{name}"] = _arm_iou(q, keep, m)
        out[f"keep_rate_{name}"] = keep[m].float().mean()
        for tag, signal, thresholds in _probe_arms(agree, sisd_given):
            for t in thresholds:
                out[f"iou_keep_{tag}{round(t * 100)}_{name}"] = _arm_iou(q, signal >= t, m)
        if sisd_given is not None:
            out[f"sisd_given_{name}"] = sisd_given[m].mean()
    return out


def self_agreement(cand: Tensor, previous: Tensor) -> tuple[Tensor, Tensor]:
    """(Bool[M] objects with a second view, Tensor[M] IoU(b̃, second view)) of cand Tensor[M, 2, 4] (b*, b̃) and
    previous Tensor[M, 4] (NaN rows: none)."""
    return torch.isfinite(previous).all(dim=1), aligned_iou(cand[:, 1], torch.nan_to_num(previous))


@torch.no_grad()
def history_arm(cand: Tensor, previous: Tensor, agree: Tensor, delta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The per-box test against the refiner's own noise: b* is kept where IoU(b*, b̃) >= IoU(b̃, b̃ of the
    object's previous visit) - delta, i.e. where the refiner moves b* no further than its own answer moves
    between two looks at the object (another flip, another bag, an epoch more training). Objects without a
    previous visit (NaN rows of `previous`: Tensor[M, 4]) are not kept by this arm.

    -> (Bool[M] kept by this arm, stats: `self_agreement` (mean over objects with a previous visit, 0 if none)
    and `keep_history` (the share of all objects this arm keeps)).
    """
    known, self_agree = self_agreement(cand, previous)
    keep = known & (agree >= self_agree - delta)
    mean = self_agree[known].mean() if known.any() else agree.new_zeros(())
    return keep, {"self_agreement": mean, "keep_history": keep.float().mean()}


@torch.no_grad()
def agreement_modes(a: Tensor, iters: int = 50) -> tuple[Tensor, Tensor, Tensor]:
    """A two-Gaussian mixture of the agreements Tensor[N] by EM, started at the quartiles (float64).

    Returns:
        (weights, means, SDs), each Tensor[2] sorted by mean (index 1: the highest mode).
    """
    a = a.double().flatten()
    mu = torch.quantile(a, torch.tensor([0.25, 0.75], dtype=a.dtype))
    sd = torch.full((2,), float(a.std()) + 1e-3, dtype=a.dtype)
    w = torch.full((2,), 0.5, dtype=a.dtype)
    for _ in range(iters):
        logp = torch.log(w) - torch.log(sd) - (a[:, None] - mu) ** 2 / (2 * sd ** 2)  # [N, 2]
        r = torch.softmax(logp, dim=1)
        n = r.sum(0).clamp_min(1e-9)
        w, mu = n / len(a), (r * a[:, None]).sum(0) / n
        sd = ((r * (a[:, None] - mu) ** 2).sum(0) / n).sqrt() + 1e-3
    order = torch.argsort(mu)
    return w[order], mu[order], sd[order]


class KeepTheBox(nn.Module):
    """Step 8 with a memory of the dataset, in buffers saved with the model: `recent` (Tensor[W], the last W =
    cfg.trust_window agreements IoU(b*, b̃), NaN where unfilled; `recent_pos` the next slot), `mode` (the highest
    mode of `agreement_modes` over them, refitted every training step once MIN_MODE_COUNT are in) and `agreement`
    (their running mean, momentum `momentum` per step). Trust begins when `mode` reaches cfg.trust_mode (> 0) or
    `agreement` reaches cfg.trust_agreement (> 0), and ends when the rule that holds it falls below its threshold
    minus cfg.trust_margin (`trust_on`, a buffer: no step-by-step flipping at the threshold); while trusted, each
    b* is kept where IoU(b*, b̃) >= cfg.trusted_keep_iou. During the warm-up (cfg.warmup_frac of the schedule,
    while the refiner is still worse than any box) the steps only feed the running mean. In eval mode (`ssddet refine`,
    `audit`) the state of the end of training decides (`set_from` sets it from other boxes). Under DDP every
    process starts each step from rank 0's buffers (DistributedDataParallel broadcasts buffers at every forward)
    and folds in its own batch."""

    def __init__(self, cfg, momentum: float = 0.98):
        super().__init__()
        if cfg.self_view not in SELF_VIEWS:
            raise ValueError(f"ssddet.self_view must be one of {', '.join(SELF_VIEWS)}, got {cfg.self_view!r}")
        self.cfg, self.momentum = cfg, float(momentum)  # cfg: SSDDetConfig (keep_iou, trust_*, warmup_frac)
        self.register_buffer("agreement", torch.tensor(float("nan")))
        self.register_buffer("trust_on", torch.tensor(0.0))
        self.register_buffer("mode", torch.tensor(float("nan")))
        self.register_buffer("recent", torch.full((max(int(cfg.trust_window), 1),), float("nan")))
        self.register_buffer("recent_pos", torch.tensor(0, dtype=torch.int64))
        # running mean of mean(IoU(b*, b̃) - IoU(b̃, previous b̃)) over objects seen before (`trust_self`)
        self.register_buffer("self_gap", torch.tensor(float("nan")))
        # self_view="mirror": the last MIN_MODE_COUNT objects' gaps (NaN: unfilled), the next slot, and the
        # training steps counted for its cadence
        self.register_buffer("mirror_gaps", torch.full((MIN_MODE_COUNT,), float("nan")))
        self.register_buffer("mirror_pos", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("mirror_step", torch.tensor(0, dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the step had a memory: nothing known yet; before the hysteresis: the
        # threshold alone decides, as it did; before the mode rule: no window yet
        state_dict.setdefault(prefix + "agreement", torch.tensor(float("nan")))
        state_dict.setdefault(prefix + "trust_on", torch.tensor(0.0))
        state_dict.setdefault(prefix + "mode", torch.tensor(float("nan")))
        state_dict.setdefault(prefix + "recent", torch.full_like(self.recent, float("nan")))
        state_dict.setdefault(prefix + "recent_pos", torch.tensor(0, dtype=torch.int64))
        state_dict.setdefault(prefix + "self_gap", torch.tensor(float("nan")))
        state_dict.setdefault(prefix + "mirror_gaps", torch.full_like(self.mirror_gaps, float("nan")))
        for name in ("mirror_pos", "mirror_step"):
            state_dict.setdefault(prefix + name, torch.tensor(0, dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def update(self, agree: Tensor, progress: float | None = None) -> None:
        """Fold one step's Tensor[M] IoU(b*, b̃) into the running mean and, after the warm-up, into the window: a
        refiner still learning barely moves any box (BCCD, 40 % noise: the first epoch's mean agreement 0.66, the
        second's 0.56), so the warm-up's agreements would make a mode of exact boxes where there is none."""
        if agree.numel() == 0:
            return
        m, a = self.agreement, agree.float().mean().to(self.agreement)
        self.agreement.copy_(a if torch.isnan(m) else self.momentum * m + (1 - self.momentum) * a)
        if progress is not None and progress < float(self.cfg.warmup_frac):
            return
        _push(self.recent, self.recent_pos, agree)
        if float(self.cfg.trust_mode) > 0:
            self.mode.fill_(self._fit_mode(self.recent))

    @torch.no_grad()
    def _update_gap(self, agree: Tensor, known: Tensor, self_agree: Tensor) -> None:
        """Fold this step's mean IoU(b*, b̃) - IoU(b̃, b̃') over the objects with a second view into `self_gap`."""
        if known.any():
            m, g = self.self_gap, (agree - self_agree)[known].float().mean().to(self.self_gap)
            self.self_gap.copy_(g if torch.isnan(m) else self.momentum * m + (1 - self.momentum) * g)

    def measures_mirror(self, progress: float | None) -> bool:
        """Count a training step; True on the steps that measure the mirror view (`self_view="mirror"` under
        `trust_self` with the keep step on: every `self_view_every`-th step after the warm-up)."""
        cfg = self.cfg
        if not (self.training and cfg.keep_given and cfg.trust_self and cfg.self_view == "mirror"):
            return False
        self.mirror_step += 1
        warm = progress is not None and progress < float(cfg.warmup_frac)
        return not warm and (int(self.mirror_step) - 1) % max(int(cfg.self_view_every), 1) == 0

    @torch.no_grad()
    def observe_mirror(self, agree: Tensor, self_agree: Tensor) -> None:
        """Fold Tensor[M] IoU(b*, b̃) and Tensor[M] IoU(b̃, b̃ of the mirror image) into the window of the last
        MIN_MODE_COUNT gaps; `self_gap` becomes the window's mean once it is full (NaN before: a few objects' gaps
        say nothing). A window, not a running mean: measured every few steps, a running mean would lag the refiner
        by hundreds of steps."""
        _push(self.mirror_gaps, self.mirror_pos, agree - self_agree)
        gaps = self.mirror_gaps[torch.isfinite(self.mirror_gaps)]
        self.self_gap.fill_(float(gaps.mean()) if gaps.numel() >= MIN_MODE_COUNT else float("nan"))

    @staticmethod
    def _fit_mode(values: Tensor) -> float:
        """The highest mode's mean of the finite `values` (NaN below MIN_MODE_COUNT of them)."""
        v = values[torch.isfinite(values)]
        return float(agreement_modes(v.cpu())[1][1]) if v.numel() >= MIN_MODE_COUNT else float("nan")

    @torch.no_grad()
    def set_from(self, agree: Tensor) -> None:
        """The memory of other boxes (Tensor[N] IoU(b*, b̃) of every box of a file), no trust carried over."""
        self.agreement.fill_(float(agree.float().mean()) if agree.numel() else float("nan"))
        self.mode.fill_(self._fit_mode(agree.float()))
        self.recent.fill_(float("nan"))
        self.recent_pos.zero_()
        self.trust_on.fill_(0.0)
        self.self_gap.fill_(float("nan"))  # needs a second view of those boxes
        self.mirror_gaps.fill_(float("nan"))
        self.mirror_pos.zero_()

    def _passes(self, value: Tensor, thresh: float, on: bool | None = None) -> bool:
        """Whether a rule's value passes its threshold (on: > 0, unless `on` says), minus the margin while trusted
        (hysteresis)."""
        if not (thresh > 0 if on is None else on) or math.isnan(float(value)):
            return False
        return float(value) >= thresh - (float(self.cfg.trust_margin) if float(self.trust_on) > 0 else 0.0)

    def trusted(self, progress: float | None) -> bool:
        """Whether the given boxes are trusted now (training: after the warm-up). A pure query: `forward`
        records the answer in `trust_on`, so asking again within the step gives the same answer."""
        if self.training and progress is not None and progress < float(self.cfg.warmup_frac):
            return False
        return (self._passes(self.mode, float(self.cfg.trust_mode))
                or self._passes(self.agreement, float(self.cfg.trust_agreement))
                or self._passes(self.self_gap, -float(self.cfg.trust_self_delta), on=bool(self.cfg.trust_self)))

    @torch.no_grad()
    def forward(self, cand: Tensor, cls: Tensor, iou: Tensor | None, clean: Tensor | None = None,
                progress: float | None = None, previous: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """`keep_the_box` on Tensor[M, 2, 4] (b*, b̃) with the dataset's trust and, with cfg.keep_history and
        `previous` (Tensor[M, 4], each object's b̃ of its last visit), the per-box `history_arm`; stats add
        `agreement`, `agreement_mode` and `given_trusted` (and the arm's)."""
        agree = aligned_iou(cand[:, 0], cand[:, 1])
        if self.training:
            self.update(agree, progress)
            # after the warm-up only: while the refiner still learns fast its answer drifts between visits, and
            # a low self-agreement would pass for moves within its noise
            if (previous is not None and self.cfg.self_view == "previous"
                    and (progress is None or progress >= float(self.cfg.warmup_frac))):
                self._update_gap(agree, *self_agreement(cand, previous.to(cand)))
        trusted = self.trusted(progress)
        if self.training:
            self.trust_on.fill_(float(trusted))
        also, arm = (history_arm(cand, previous.to(cand), agree, float(self.cfg.keep_history_delta))
                     if self.cfg.keep_history and previous is not None else (None, {}))
        box, stats = keep_the_box(cand, cls, iou, float(self.cfg.keep_iou), clean, agree=agree,
                                  trusted_iou=float(self.cfg.trusted_keep_iou) if trusted else None,
                                  keep_sisd=float(self.cfg.keep_sisd), keep_also=also)
        stats.update(arm)
        # the mode is NaN until the window holds MIN_MODE_COUNT agreements: logged as 0 ("not yet known")
        stats.update(agreement=self.agreement.clone(), agreement_mode=torch.nan_to_num(self.mode.clone(), nan=0.0),
                     given_trusted=torch.tensor(float(trusted)),
                     **({"self_gap": torch.nan_to_num(self.self_gap.clone(), nan=0.0)}
                        if previous is not None or self.cfg.trust_self else {}))
        return box, stats


def _push(window: Tensor, pos: Tensor, values: Tensor) -> None:
    """Write Tensor[n] `values` into the ring buffer `window` Tensor[W] from slot `pos` (a 0-dim buffer, advanced),
    the last W of them if n > W."""
    w = window.numel()
    vals = values.detach().float().flatten()[-w:].to(window)
    idx = (int(pos) + torch.arange(len(vals))) % w
    window[idx.to(window.device)] = vals
    pos.fill_((int(pos) + len(vals)) % w)
