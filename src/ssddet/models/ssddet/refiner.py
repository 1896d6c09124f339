"""SSD-Det box refiner: turns noisy GT boxes into per-iteration pseudo boxes (method.md 3.0-3.5).

Shapes: N images, M objects in the batch (image-major: the objects of image 0 first), P proposals per bag,
K foreground classes, C FPN channels (256), R RoI resolution (7), D trunk width (1024), Q negatives kept.
Data flow of one call (the released code's path; method.md 5 items 1-4), one method per step of method.md 3.1:

    b* (noisy) --sampler--> B0 [M,P,4] + validity v0                                    _bag_construction
    B0 --RoIAlign, shared trunk, reg_ori (SPSD-I, target b*)--> B1 (detached)  [M*P RoIs]  _spsd1
    B1 --RoIAlign, shared trunk--> F1 --cls0/ins0 (stage-I MIL)--> b̂, omega    [M*P RoIs]  _mil_stage1
    F1 --reg0 (SPSD-II, target b̂, omega-weighted)--> B2 (detached, all valid)              _spsd2
    random boxes clear of every object --> negatives [Q]                                   _negatives
    B2 + negatives --RoIAlign, shared trunk--> cls1/ins1 (stage-II MIL)   [M*P + Q RoIs]  _mil_stage2
    B2 feats --SISD trunk + ORE + iou--> U                                [M*P RoIs]      _sisd
    B2 --top-k of sigma(cls)*U'--> b̃                                                      final_merge
    b*, b̃ --RoIAlign, shared trunk + SISD trunk--> the higher sigma(cls)*U wins  [2M RoIs]  _keep_given

Only boxes are detached here; every loss trains the features it is given (method.md 3.5). The training wrapper
detaches those features by default (`detach_features`), so the backbone/FPN then learn from the detector only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...config import SAMPLERS, SSDDetConfig, resolve_sampler
from ...data.boxes import clip_boxes, replace_degenerate
from ..profiling import scoped
from .keep import KeepTheBox
from .merge import final_merge, topk_merge
from .mil import negative_loss, stage1_bag_scores, stage1_loss, stage2_bag_scores, stage2_loss
from .negatives import draw_negatives
from .refiner_data import (
    Objects,
    RefinerOutput,
    Stage1,
    Stage2,
    box_quality,
    check_inputs,
    fill_losses,
    gather_objects,
    select_objects,
    selected_masks,
    to_floats,
)
from .sampler import PRESETS, auto_window, bag_validity, neighbourhood_bag, unshifted_correction
from .sisd import SISDHead, sisd_loss, sisd_targets
from .spsd import SPSDRegressor
from .trunk import build_trunk, embed, fan_in_init, pool, reduce_maps

__all__ = ["AUTO_WINDOW", "LOSS_NAMES", "MIN_BOX_SIZE", "RefinerOutput", "SSDDetRefiner"]

LOSS_NAMES = ("loss_spsd1", "loss_mil1", "loss_spsd2", "loss_mil2", "loss_neg", "loss_sisd")
CLS_PRIOR = 0.01  # fc_cls bias init: log(p / (1 - p)) = -4.595 (mmdet bias_prob)
# Smallest pseudo-box side (px) passed on; a thinner or non-finite box falls back to the noisy box (the data
# loader drops GT boxes under 0.5 px, method.md 1). A degenerate pseudo box (a stage-I box of an object outside
# the image, clipped to zero width, or a collapsed SPSD decode) would encode to log(0) regression targets in the
# detector and poison the whole step with inf/NaN.
MIN_BOX_SIZE = 1.0

# sampler_state buffer values
_UNDECIDED, _LARGE, _SMALL = -1, 0, 1
AUTO_WINDOW = 100  # sampler="auto" with auto_iters=0: iterations whose median SPSD-I correction decides


class SSDDetRefiner(nn.Module):
    """The SSD-Det refiner as a pure module: FPN features + noisy boxes in, pseudo boxes + losses out.

    Args:
        cfg: SSDDetConfig (num_stages, spsd, sisd, ore, top_k, sampler, ...; its loss weights w_* are applied by
            the training method, `methods.loss_weights`).
        num_classes: K, foreground classes (labels are 1..K, torchvision style).
        box_roi_pool: the detector's MultiScaleRoIAlign (shared, parameter-free); called as
            box_roi_pool(features, list of Tensor[n_i, 4] per image, image_sizes).
        in_channels: C of the pooled features.
        resolution: R of the pooled features (the pooler's output size).

    Modules (created only when the config uses them, so no parameter is ever without gradient):
        trunk: shared TwoMLPHead C*R*R -> D -> D for SPSD-I and both MIL stages.
        reg_ori: SPSD-I regressor (if cfg.spsd). cls0/ins0: D -> K+1 (stage I).
        reg0: SPSD-II regressor (if cfg.spsd and num_stages == 2). cls1/ins1: D -> K (if num_stages == 2).
        sisd: separate trunk + iou head (if cfg.sisd and num_stages == 2). keep: step 8 (if num_stages == 2).

    Buffers (saved in state_dict): sampler_state (-1 undecided "auto", 0 large, 1 small), auto_iter, auto_hist;
    keep.agreement (the running mean IoU(b*, b̃)) and keep.trust_on (the trust's hysteresis state), keep.py.

    Randomness (object cap subset, negatives) comes from `generator` (forward argument), else `self.generator`
    (set with `manual_seed`), else torch's global RNG.
    """

    def __init__(self, cfg: SSDDetConfig, num_classes: int, box_roi_pool: nn.Module, in_channels: int = 256,
                 resolution: int = 7) -> None:
        super().__init__()
        if cfg.num_stages not in (1, 2):
            raise ValueError(f"num_stages must be 1 or 2, got {cfg.num_stages}")
        # "by-noise" is resolved when a run starts (config_overrides.validate); a bare config: the small bag
        if cfg.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {cfg.sampler!r}")
        sampler = resolve_sampler(cfg.sampler, None)
        self.cfg = cfg
        self.num_classes = int(num_classes)
        self.box_roi_pool = box_roi_pool
        k, d = self.num_classes, int(cfg.trunk_dim)
        in_features = in_channels * resolution * resolution
        two = cfg.num_stages == 2
        red, train_red, stride = int(cfg.trunk_reduce), bool(cfg.trunk_reduce_train), int(cfg.trunk_bias_grad_stride)
        train_bias = train_red or bool(cfg.trunk_bias_train)
        trunk_args = (red, train_red, train_bias, stride, cfg.trunk_precision)
        self.trunk = build_trunk(in_channels, resolution, d, *trunk_args)
        self.reg_ori = SPSDRegressor(d) if cfg.spsd else None
        self.cls0 = nn.Linear(d, k + 1)
        self.ins0 = nn.Linear(d, k + 1)
        self.reg0 = SPSDRegressor(d) if (cfg.spsd and two) else None
        self.cls1 = nn.Linear(d, k) if two else None
        self.ins1 = nn.Linear(d, k) if two else None
        self.sisd = (SISDHead(in_features, d, ore=cfg.ore,
                              trunk=build_trunk(in_channels, resolution, d, *trunk_args))
                     if (cfg.sisd and two) else None)
        self.keep = KeepTheBox(cfg) if two else None  # step 8 (used while cfg.keep_given)
        self.reduced = red > 0  # reduce, then pool (trunk.py): channels [0, red) shared trunk, [red, 2 red) SISD
        state = {"large": _LARGE, "small": _SMALL, "auto": _UNDECIDED}[sampler]
        self.register_buffer("sampler_state", torch.tensor(state, dtype=torch.long))
        self.register_buffer("auto_iter", torch.zeros((), dtype=torch.long))
        n_hist = int(cfg.auto_iters) if int(cfg.auto_iters) > 0 else AUTO_WINDOW
        self.register_buffer("auto_hist", torch.full((n_hist,), float("nan")))
        self.generator: torch.Generator | None = None
        self._init_weights()

    # ------------------------------------------------------------------ setup
    def _init_weights(self) -> None:
        # method.md 3.3: every Linear N(0, 0.01) with zero bias; class biases from prior 0.01 (both stages)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        for m in (m for m in (self.cls0, self.cls1) if m is not None):
            nn.init.constant_(m.bias, -math.log((1 - CLS_PRIOR) / CLS_PRIOR))
        if self.cfg.trunk_init == "fan-in":  # the released trunks' activation scale at this width (trunk.py)
            fan_in_init(self._trunks())

    def _trunks(self) -> list[nn.Module]:
        return [self.trunk] + ([self.sisd.trunk] if self.sisd is not None else [])

    def manual_seed(self, seed: int) -> SSDDetRefiner:
        """Use a private CPU generator seeded with `seed` for the cap subset and the negatives."""
        self.generator = torch.Generator().manual_seed(int(seed))
        return self

    def sampler_name(self) -> str:
        """The preset in use now: "small" once chosen (or configured), else "large"."""
        return "small" if int(self.sampler_state) == _SMALL else "large"

    def sampler_params(self) -> tuple[list[float], float]:
        """(scales, shift) in use now: the active preset, overridden by cfg.scale_ranges / cfg.shift_ratio."""
        scales, shift = PRESETS[self.sampler_name()]
        scales = scales if self.cfg.scale_ranges is None else self.cfg.scale_ranges
        shift = shift if self.cfg.shift_ratio is None else self.cfg.shift_ratio
        return [float(s) for s in scales], float(shift)

    # ------------------------------------------------------------------ helpers
    def _maps(self, features: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """What the shared and SISD trunks pool: the FPN maps (SISD reuses the shared pool: None), or with
        reduced trunks each one's own 1x1 conv output (trunk.py: reduce, then pool)."""
        if not self.reduced:
            return features, None
        maps = reduce_maps(features, list(getattr(self.box_roi_pool, "featmap_names", features)), self._trunks())
        return maps[0], (maps[1] if len(maps) > 1 else None)

    def _pool_embed(self, obj: Objects, rois: list[Tensor]) -> tuple[Tensor, Tensor]:
        pooled = pool(self.box_roi_pool, obj.features, obj.image_sizes, rois)
        obj.rois_shared += int(pooled.shape[0])
        return pooled, embed(self.trunk, pooled, self.reduced)

    def _sisd_embed(self, obj: Objects, pooled: Tensor, rois: list[Tensor]) -> Tensor:
        """SISD features Tensor[M, J, D] of M*J RoIs (per image, object-major): `pooled` or SISD's own maps."""
        if obj.sisd_features is not None:
            pooled = pool(self.box_roi_pool, obj.sisd_features, obj.image_sizes, rois)
        g = embed(self.sisd.trunk, pooled, self.reduced)
        obj.rois_sisd += int(g.shape[0])
        return g.reshape(obj.m, -1, g.shape[-1])

    def _bag_features(self, obj: Objects, bag: Tensor, mask: Tensor | None = None) -> Tensor:
        """Shared-trunk features of the bags, Tensor[M, P, D] (bag Tensor[M, P, 4]). With `mask` (Bool[M, P])
        the proposals where it is False are not pooled and get zero features (only valid when the caller masks
        them out of everything downstream)."""
        m, p = bag.shape[:2]
        per_img = bag.split(obj.counts)
        if mask is None:
            _, f = self._pool_embed(obj, [b.reshape(-1, 4) for b in per_img])
            return f.reshape(m, p, -1)
        rois = [b.reshape(-1, 4)[v.reshape(-1)] for b, v in zip(per_img, mask.split(obj.counts))]
        _, f = self._pool_embed(obj, rois)
        out = f.new_zeros((m * p, f.shape[-1]))
        out[mask.reshape(-1)] = f  # image-major order is the same in `rois` and in the flat mask
        return out.reshape(m, p, -1)

    def _auto_update(self, b0: Tensor, b1: Tensor, scales: list[float], progress: float | None) -> Tensor | None:
        """`sampler="auto"`: record this iteration's SPSD-I correction (`sampler.unshifted_correction`) in
        auto_hist and, once `sampler.auto_window` says so, settle on "small" if the median reading of the window
        is below cfg.auto_thresh, else "large". Returns this iteration's reading (Tensor scalar) or None."""
        med = unshifted_correction(b0, b1, scales)
        if med is None:
            return None
        it = int(self.auto_iter)
        self.auto_hist[it % self.auto_hist.numel()] = med
        self.auto_iter += 1
        window = auto_window(self.auto_hist, it + 1, int(self.cfg.auto_iters), float(self.cfg.warmup_frac), progress)
        if window is not None:
            val = window.nanmedian() if window.numel() else window.new_tensor(float("nan"))
            small = bool(torch.isfinite(val)) and float(val) < float(self.cfg.auto_thresh)
            self.sampler_state.fill_(_SMALL if small else _LARGE)
        return med

    # ------------------------------------------------------------------ forward: method.md 3.1, step by step
    def forward(self, features: dict[str, Tensor], image_sizes: list[tuple[int, int]], boxes: list[Tensor],
                labels: list[Tensor], true_boxes: list[Tensor] | None = None,
                generator: torch.Generator | None = None, progress: float | None = None,
                avoid: list[Tensor] | None = None, priority: list[Tensor] | None = None,
                previous: list[Tensor] | None = None, keep_step: bool = True) -> RefinerOutput:
        """Refine the noisy boxes of a batch.

        Args:
            features: FPN outputs {name: Tensor[N, C, H_l, W_l]} (the pooler picks its levels).
            image_sizes: N (h, w) after resize, before padding: validity masks, negatives and clipping use
                them.
            boxes: N x Tensor[M_i, 4] noisy xyxy in resized coordinates.
            labels: N x Int64[M_i] in 1..K.
            true_boxes: optional N x Tensor[M_i, 4] clean boxes, paired one-to-one with `boxes`; logged only.
            generator: optional torch.Generator for the cap subset and the negatives.
            progress: fraction of training done (0..1); the "auto" sampler decides on it.
            avoid: optional N x Tensor[A_i, 4], more boxes of each image that no negative may overlap (the
                bank's last refined boxes of its objects); every box of `boxes` is avoided anyway.
            priority: optional N x Tensor[M_i]; over the cap, the objects of highest priority are refined (the
                training method passes "least recently refined first"); None: a random subset.
            previous: optional N x Tensor[M_i, 4], each object's b̃ of its last visit (NaN rows: none), the
                second view of step 8's `keep_history` arm.
            keep_step: False: step 8 is skipped, b̃ itself is returned (the mirror view, `mirror.py`).

        Returns:
            RefinerOutput. Negatives are drawn only in training mode (loss_neg is 0 in eval mode).
        """
        check_inputs(image_sizes, boxes, labels, true_boxes)
        gen = generator if generator is not None else self.generator
        dev = next(iter(features.values())).device
        noisy = [b.detach().to(dev, torch.float32).clone() for b in boxes]  # skipped objects keep these
        sel = select_objects(boxes, int(self.cfg.max_objects_per_image), gen, priority)
        m = sum(int(s.numel()) for s in sel)
        stats: dict[str, Tensor] = {
            "num_objects": torch.tensor(float(m)),
            "num_skipped": torch.tensor(float(sum(b.shape[0] for b in boxes) - m)),
            "sampler_small": torch.tensor(float(int(self.sampler_state) == _SMALL)),
        }
        if m == 0:
            return RefinerOutput(noisy, [b.clone() for b in noisy], fill_losses(self, {}, LOSS_NAMES),
                                 to_floats(stats), selected_masks(boxes, sel))

        maps, sisd_maps = self._maps(features)
        obj = gather_objects(maps, image_sizes, noisy, labels, true_boxes, sel, *self.sampler_params(), sisd_maps,
                             previous)
        b0, v0 = self._bag_construction(obj)  # step 1
        b1, loss_spsd1 = self._spsd1(obj, b0, progress, stats)  # step 2
        st1 = self._mil_stage1(obj, b1, v0)  # step 3
        losses = {"loss_spsd1": loss_spsd1, "loss_mil1": st1.loss}
        bags = {"gt": obj.gt, "bag0": b0, "valid0": v0, "bag1": b1.detach(), "q1": st1.q}
        b_fin, bag_fin, n_bad, negs = st1.box, b1, st1.num_bad, []
        if self.cfg.num_stages == 2:
            b2, v2, losses["loss_spsd2"] = self._spsd2(obj, st1, b1)  # step 4
            negs = self._negatives(obj, b2, boxes, avoid, gen)  # step 5: negatives ...
            st2 = self._mil_stage2(obj, b2, v2, negs, st1.omega)  # ... and stage-II MIL
            losses.update(loss_mil2=st2.loss, loss_neg=st2.loss_neg)
            stats["num_negatives"] = torch.tensor(float(st2.num_negatives))
            u, ctx, losses["loss_sisd"] = self._sisd(obj, st2.pooled, b2, st1.box)  # step 6 (with ORE)
            merged = final_merge(b2, st2.cls, st2.score, u, self.cfg.top_k, obj.hw)  # step 7
            b_til, n_bad2 = replace_degenerate(merged, obj.gt, MIN_BOX_SIZE)
            keep = self.cfg.keep_given and keep_step
            b_fin = self._keep_given(obj, b_til, ctx, stats, progress) if keep else b_til  # step 8
            n_bad, bag_fin = n_bad + n_bad2, b2
            # merged: b̃ before step 8, the bank's second view of the object at its next visit (`keep_history`)
            bags.update(bag2=b2.detach(), cls2=st2.cls, merged=b_til.detach(),
                        **({"sisd": u.detach()} if u is not None else {}))

        refined, stage1 = noisy, [b.clone() for b in noisy]
        for i, (s, bf, bh) in enumerate(zip(sel, b_fin.split(obj.counts), st1.box.split(obj.counts))):
            refined[i][s] = bf.float()
            stage1[i][s] = bh.float()
        with torch.no_grad():
            stats.update(bag_size=torch.tensor(float(b0.shape[1])),
                         num_rois_shared=torch.tensor(float(obj.rois_shared)),
                         num_rois_sisd=torch.tensor(float(obj.rois_sisd)), omega_mean=st1.omega.mean(),
                         num_fallback=n_bad.float(), **box_quality(obj.gt, bag_fin, obj.clean, b0, st1.box, b_fin))
        return RefinerOutput(refined, stage1, fill_losses(self, losses, LOSS_NAMES), to_floats(stats),
                             selected_masks(boxes, sel), bags, [ng.detach() for ng in negs])

    @scoped("refiner.bags")
    def _bag_construction(self, obj: Objects) -> tuple[Tensor, Tensor]:
        """Step 1: neighbourhood bag B0 Tensor[M, P, 4] around the noisy boxes and its validity Bool[M, P]."""
        b0 = neighbourhood_bag(obj.gt, obj.scales, obj.shift)
        return b0, bag_validity(b0, obj.hw, self.cfg.valid_iof)

    @scoped("refiner.spsd")
    def _spsd1(self, obj: Objects, b0: Tensor, progress: float | None,
               stats: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Step 2, SPSD-I: regress every B0 proposal (invalid ones too, as the code) towards its noisy box; the
        decoded boxes are B1 Tensor[M, P, 4] (B0 itself without SPSD). -> (B1, loss_spsd1 or None). Under
        sampler="auto" it also records the correction the sampler decides on (stats["auto_rel_corr"])."""
        if self.reg_ori is None:
            return b0, None
        d0 = self.reg_ori(self._bag_features(obj, b0))  # [M, P, 4]
        b1 = self.reg_ori.decode(d0, b0)
        if self.training and int(self.sampler_state) == _UNDECIDED:
            med = self._auto_update(b0, b1, obj.scales, progress)
            if med is not None:
                stats["auto_rel_corr"] = med
        return b1, self.reg_ori.loss(d0, b0, obj.gt)

    @scoped("refiner.mil")
    def _mil_stage1(self, obj: Objects, b1: Tensor, v0: Tensor) -> Stage1:
        """Step 3, stage-I MIL on B1 (validity from B0, as the code) and its top-k merge into b̂ (clipped to the
        image, method.md 5 item 9; a degenerate b̂ falls back to the noisy box) with weight omega."""
        # SPSD-II needs stage-I features of EVERY B1 proposal (its loss and B2 include the invalid ones), so the
        # pool may skip invalid proposals only when SPSD-II does not run; the MIL terms mask them anyway.
        f1 = self._bag_features(obj, b1, v0 if self.reg0 is None else None)
        bag1, p_cls0, p_ins0 = stage1_bag_scores(self.cls0(f1), self.ins0(f1), v0)
        loss = stage1_loss(bag1, obj.labels, v0.any(dim=1))
        with torch.no_grad():
            q = (p_cls0 * p_ins0)[torch.arange(obj.m, device=b1.device), :, obj.labels]  # [M, P] GT class
            b_hat, omega = topk_merge(b1, q, self.cfg.top_k)
            b_hat, n_bad = replace_degenerate(clip_boxes(b_hat, obj.hw), obj.gt, MIN_BOX_SIZE)
        return Stage1(f1, b_hat, omega, q, loss, n_bad)

    @scoped("refiner.spsd")
    def _spsd2(self, obj: Objects, st1: Stage1, b1: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Step 4: B2 = SPSD-II regression of B1 towards b̂, omega-weighted (the code's path; every B2 proposal is
        valid), or without SPSD a fresh neighbourhood bag around b̂. -> (B2 [M, P, 4], validity Bool[M, P] or
        None, loss_spsd2 or None)."""
        if self.reg0 is None:
            b2 = neighbourhood_bag(st1.box, obj.scales, obj.shift)
            return b2, bag_validity(b2, obj.hw, self.cfg.valid_iof), None
        d1 = self.reg0(st1.feats)
        return self.reg0.decode(d1, b1), None, self.reg0.loss(d1, b1, st1.box, st1.omega)

    @scoped("refiner.negatives")
    def _negatives(self, obj: Objects, b2: Tensor, boxes: list[Tensor], avoid: list[Tensor] | None,
                   gen: torch.Generator | None) -> list[Tensor]:
        """Step 5, the negatives: per image Tensor[Q_i, 4], random boxes clear of every B2 box, every annotated
        box of the image and its `avoid` boxes (training mode only)."""
        if not self.training or self.cfg.num_negatives <= 0:
            return [b2.new_zeros((0, 4)) for _ in boxes]
        return draw_negatives(obj.image_sizes, b2.split(obj.counts), boxes, avoid, int(self.cfg.num_negatives),
                              self.cfg.neg_iou_thresh, gen)

    @scoped("refiner.mil")
    def _mil_stage2(self, obj: Objects, b2: Tensor, v2: Tensor | None, negs: list[Tensor],
                    omega: Tensor) -> Stage2:
        """Step 5, stage-II MIL: B2 and the negatives in one RoIAlign + trunk call; the bag loss is
        omega-weighted, the negatives' loss is scaled by mean(omega) (method.md 3.1 step 5)."""
        m, p, dev = obj.m, b2.shape[1], b2.device
        rois = [torch.cat([b.reshape(-1, 4), ng]) for b, ng in zip(b2.split(obj.counts), negs)]
        is_neg = torch.cat([torch.cat([torch.zeros(c * p, dtype=torch.bool, device=dev),
                                       torch.ones(ng.shape[0], dtype=torch.bool, device=dev)])
                            for c, ng in zip(obj.counts, negs)])
        pooled, f_all = self._pool_embed(obj, rois)
        f2 = f_all[~is_neg].reshape(m, p, -1)
        bag2, p_cls1, p_ins1 = stage2_bag_scores(self.cls1(f2), self.ins1(f2), v2)
        with torch.no_grad():
            ar, col = torch.arange(m, device=dev), obj.labels - 1
            cls, score = p_cls1[ar, :, col], (p_cls1 * p_ins1)[ar, :, col]  # [M, P] of the GT class
        n_neg = int(is_neg.sum())
        loss_neg = negative_loss(self.cls1(f_all[is_neg]), m, omega.mean()) if n_neg > 0 else None
        return Stage2(pooled[~is_neg], cls, score, stage2_loss(bag2, obj.labels, omega), loss_neg, n_neg)

    @scoped("refiner.sisd")
    def _sisd(self, obj: Objects, pooled: Tensor, b2: Tensor,
              b_hat: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Step 6, SISD (its own trunk; ORE inside `SISDHead`): predicted IoU U Tensor[M, P] of every B2 proposal
        with b̂, trained towards the true IoU. -> (U, ORE context Tensor[M, 1, D] (detached) or None,
        loss_sisd), (None, None, None) without SISD."""
        if self.sisd is None:
            return None, None, None
        g = self._sisd_embed(obj, pooled, [b.reshape(-1, 4) for b in b2.split(obj.counts)])
        u = self.sisd.predict(g, ctx := self.sisd.context(g))
        return u, (ctx.detach() if ctx is not None else None), sisd_loss(u, sisd_targets(b2, b_hat))

    @scoped("refiner.keep")
    @torch.no_grad()
    def _keep_given(self, obj: Objects, b_fin: Tensor, ctx: Tensor | None, stats: dict[str, Tensor],
                    progress: float | None) -> Tensor:
        """Step 8, keep the box (`keep.py`): b* and b̃ pooled (2M RoIs) and scored like the bag's proposals,
        sigma(cls1) x IoU from SISD with the bag's ORE context; the dataset's trust. -> Tensor[M, 4]."""
        m, ar = obj.m, torch.arange(obj.m, device=b_fin.device)
        cand = torch.stack([obj.gt, b_fin.to(obj.gt)], dim=1)  # [M, 2, 4]: b*, b̃
        rois = [c.reshape(-1, 4) for c in cand.split(obj.counts)]
        pooled, f = self._pool_embed(obj, rois)
        cls = self.cls1(f).float().sigmoid().reshape(m, 2, -1)[ar, :, obj.labels - 1]  # [M, 2]
        iou = self.sisd.predict(self._sisd_embed(obj, pooled, rois), ctx).float() * 0.5 + 0.5 if self.sisd else None
        box, keep_stats = self.keep(cand, cls, iou, obj.clean, progress, obj.previous)
        stats.update(keep_stats)
        return box.to(b_fin)
