"""SSD-Det box refiner: turns noisy GT boxes into per-iteration pseudo boxes (method.md 3.0-3.5).

Shapes: N images, M objects in the batch (image-major: the objects of image 0 first), P proposals per bag,
K foreground classes, C FPN channels (256), R RoI resolution (7), D trunk width (1024), Q negatives kept.
 Data flow of one call (the released code's path; method.md 5 items 1-4):

    b* (noisy)  --sampler-->  B0 [M,P,4] + validity v0
    B0  --RoIAlign, shared trunk, reg_ori (SPSD-I, target b*)-->  B1 (detached)          [pool 1: M*P RoIs]
    B1  --RoIAlign, shared trunk-->  F1  --cls0/ins0 (stage-I MIL)-->  b̂, omega          [pool 2: M*P RoIs]
    F1  --reg0 (SPSD-II, target b̂, omega-weighted)-->  B2 (detached, all valid)
    B2 + negatives  --RoIAlign, shared trunk-->  cls1/ins1 (stage-II MIL + negatives)    [pool 3: M*P + Q
    RoIs] B2 feats  --SISD trunk + ORE + iou-->  U  ->  b̃ = top-k of sigma(cls)*U'           [SISD trunk: M*P
    RoIs]

Only boxes are detached here; every loss trains the features it is given (method.md 3.5). The training wrapper
detaches those features by default (`detach_features`), so the backbone/FPN then learn from the detector only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ...config import SSDDetConfig
from ...data.boxes import aligned_iou, box_wh, clip_boxes
from .merge import topk_merge
from .mil import negative_loss, stage1_bag_scores, stage1_loss, stage2_bag_scores, stage2_loss
from .negatives import random_negatives, select_negatives
from .sampler import PRESETS, bag_validity, neighbourhood_bag
from .sisd import SISDHead, sisd_loss, sisd_targets, spatial_confidence
from .spsd import SPSDRegressor
from .trunk import build_trunk

LOSS_NAMES = ("loss_spsd1", "loss_mil1", "loss_spsd2", "loss_mil2", "loss_neg", "loss_sisd")
CLS_PRIOR = 0.01  # fc_cls bias init: log(p / (1 - p)) = -4.595 (mmdet bias_prob)
# smallest pseudo-box side (px) passed on (the data loader drops GT boxes under 0.5 px; method.md 1)
MIN_BOX_SIZE = 1.0

# sampler_state buffer values
_UNDECIDED, _LARGE, _SMALL = -1, 0, 1
AUTO_WINDOW = 100  # sampler="auto" with auto_iters=0: iterations whose median SPSD-I correction decides


@dataclass
class RefinerOutput:
    """What one refiner call returns.

    refined: per image Tensor[M_i, 4] xyxy, the final pseudo boxes b̃ (detached). Objects the refiner skipped
        (over the per-image cap, or degenerate input boxes) keep their noisy box, and so does an object whose
        pseudo box comes out degenerate (side < 1 px or non-finite; counted in stats["num_fallback"]).
    stage1: per image Tensor[M_i, 4], the stage-I boxes b̂ (detached; noisy box for skipped objects).
    losses: the six LOSS_NAMES, each an unweighted scalar (the training method weighs them by w_spsd1 ...,
        `methods.loss_weights`). Terms that a switch turns off are graph-connected zeros, so the keys never
        change.
    stats: floats for logging only (never part of a loss).
    """

    refined: list[Tensor]
    stage1: list[Tensor]
    losses: dict[str, Tensor]
    stats: dict[str, float] = field(default_factory=dict)
    selected: list[Tensor] = field(default_factory=list)  # per image Bool[M_i]: refined in this call
    # detached intermediates of the refined objects, for diagnostics (benchmarks/refiner_diagnostics.py):
    # "gt" [M, 4] input boxes, "bag0"/"bag1"/"bag2" [M, P, 4], "valid0" Bool[M, P], "q1" [M, P] stage-I
    # GT-class scores, "cls2" [M, P] stage-II GT-class sigmoid scores, "sisd" [M, P] raw SISD predictions U
    bags: dict[str, Tensor] = field(default_factory=dict)
    negatives: list[Tensor] = field(default_factory=list)  # per image Tensor[Q_i, 4], the kept negatives


class SSDDetRefiner(nn.Module):
    """The SSD-Det refiner as a pure module: FPN features + noisy boxes in, pseudo boxes + losses out.

    Args:
        cfg: SSDDetConfig (num_stages, spsd, sisd, ore, top_k, sampler, ... and the loss weights).
        num_classes: K, foreground classes (labels are 1..K, torchvision style).
        box_roi_pool: the detector's MultiScaleRoIAlign (shared, parameter-free); called as
            box_roi_pool(features, list of Tensor[n_i, 4] per image, image_sizes).
        in_channels: C of the pooled features.
        resolution: R of the pooled features (the pooler's output size).

    Modules (created only when the config uses them, so no parameter is ever without gradient):
        trunk: shared TwoMLPHead C*R*R -> D -> D for SPSD-I and both MIL stages.
        reg_ori: SPSD-I regressor (if cfg.spsd). cls0/ins0: D -> K+1 (stage I).
        reg0: SPSD-II regressor (if cfg.spsd and num_stages == 2). cls1/ins1: D -> K (if num_stages == 2).
        sisd: separate trunk + iou head (if cfg.sisd and num_stages == 2).

    Buffers (saved in state_dict): sampler_state (-1 undecided "auto", 0 large, 1 small), auto_iter,
    auto_hist.

    Randomness (object cap subset, negatives) comes from `generator` (forward argument), else `self.generator`
    (set with `manual_seed`), else torch's global RNG.
    """

    def __init__(
        self,
        cfg: SSDDetConfig,
        num_classes: int,
        box_roi_pool: nn.Module,
        in_channels: int = 256,
        resolution: int = 7,
    ) -> None:
        super().__init__()
        if cfg.num_stages not in (1, 2):
            raise ValueError(f"num_stages must be 1 or 2, got {cfg.num_stages}")
        if cfg.sampler not in ("large", "small", "auto"):
            raise ValueError(f"sampler must be large, small or auto, got {cfg.sampler!r}")
        self.cfg = cfg
        self.num_classes = int(num_classes)
        self.box_roi_pool = box_roi_pool
        k, d = self.num_classes, int(cfg.trunk_dim)
        in_features = in_channels * resolution * resolution
        two = cfg.num_stages == 2
        red = int(cfg.trunk_reduce)
        self.trunk = build_trunk(in_channels, resolution, d, red)
        self.reg_ori = SPSDRegressor(d) if cfg.spsd else None
        self.cls0 = nn.Linear(d, k + 1)
        self.ins0 = nn.Linear(d, k + 1)
        self.reg0 = SPSDRegressor(d) if (cfg.spsd and two) else None
        self.cls1 = nn.Linear(d, k) if two else None
        self.ins1 = nn.Linear(d, k) if two else None
        self.sisd = (SISDHead(in_features, d, ore=cfg.ore, trunk=build_trunk(in_channels, resolution, d, red))
                     if (cfg.sisd and two) else None)
        state = {"large": _LARGE, "small": _SMALL, "auto": _UNDECIDED}[cfg.sampler]
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
        bias = -math.log((1 - CLS_PRIOR) / CLS_PRIOR)
        for m in (self.cls0, self.cls1):
            if m is not None:
                nn.init.constant_(m.bias, bias)

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
        if self.cfg.scale_ranges is not None:
            scales = [float(s) for s in self.cfg.scale_ranges]
        if self.cfg.shift_ratio is not None:
            shift = float(self.cfg.shift_ratio)
        return list(scales), float(shift)

    # ------------------------------------------------------------------ helpers
    def _pool_embed(
        self, features: dict[str, Tensor], image_sizes: list[tuple[int, int]], rois: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """One RoIAlign call + one shared-trunk call. rois: per image Tensor[n_i, 4].
        Returns (pooled Tensor[sum n_i, C, R, R], trunk features Tensor[sum n_i, D])."""
        ref = next(iter(features.values()))
        # keep fp32 boxes under autocast (torchvision's roi_align casts itself); outside it the kernel wants
        # the feature dtype
        dtype = torch.float32 if torch.is_autocast_enabled(ref.device.type) else ref.dtype
        pooled = self.box_roi_pool(
            features, [r.to(device=ref.device, dtype=dtype) for r in rois], image_sizes
        )
        return pooled, self.trunk(pooled)

    def _bag_features(
        self,
        features: dict[str, Tensor],
        image_sizes: list[tuple[int, int]],
        bag: Tensor,
        counts: list[int],
        mask: Tensor | None = None,
    ) -> tuple[Tensor, int]:
        """Shared-trunk features of a batch of bags; proposals where `mask` is False are not pooled and get
        zero features (only valid when the caller masks them out of everything downstream).

        Args:
            bag: Tensor[M, P, 4]; counts: objects per image (sum M); mask: optional Bool[M, P].
        Returns:
            (Tensor[M, P, D], number of RoIs pooled).
        """
        m, p = bag.shape[:2]
        per_img = bag.split(counts)
        if mask is None:
            _, f = self._pool_embed(features, image_sizes, [b.reshape(-1, 4) for b in per_img])
            return f.reshape(m, p, -1), m * p
        flat = mask.reshape(-1)
        rois = [b.reshape(-1, 4)[v.reshape(-1)] for b, v in zip(per_img, mask.split(counts))]
        _, f = self._pool_embed(features, image_sizes, rois)
        out = f.new_zeros((m * p, f.shape[-1]))
        out[flat] = f  # image-major order is the same in `rois` and in the flat mask
        return out.reshape(m, p, -1), int(f.shape[0])

    def _zero(self) -> Tensor:
        # a zero that is connected to every parameter, so backward() and DDP work on batches without objects
        # (abs: avoid printing -0.0)
        return (sum(p.sum() for p in self.parameters()) * 0.0).abs()

    def _select(self, boxes: list[Tensor], gen: torch.Generator | None) -> list[Tensor]:
        """Indices of the objects refined in each image: non-degenerate boxes (a zero-size box cannot be
        encoded), at most cfg.max_objects_per_image of them (a random subset; <= 0 means no cap)."""
        cap = int(self.cfg.max_objects_per_image)
        out = []
        for b in boxes:
            ok = (box_wh(b) > 0).all(dim=1)
            idx = ok.nonzero().squeeze(1)
            if 0 < cap < idx.numel():
                dev = gen.device if gen is not None else torch.device("cpu")
                pick = torch.randperm(idx.numel(), generator=gen, device=dev)[:cap].sort().values
                idx = idx[pick.to(idx.device)]
            out.append(idx)
        return out

    def _auto_update(self, b0: Tensor, b1: Tensor, scales: list[float], progress: float | None) -> Tensor | None:
        """`sampler="auto"`: record this iteration's median relative SPSD-I correction of the unshifted
        (scale 1 x 1) proposal, i.e. how far the regressor moves each noisy box, |Δ| / size averaged over the
        4 coordinates, then decide once: "small" if the recorded median is below cfg.auto_thresh, else "large".

        When: with cfg.auto_iters > 0 after that many iterations, over the second half of them (the
        regressor is untrained in the first half); with auto_iters = 0 (default) once training `progress`
        reaches cfg.warmup_frac and at least AUTO_WINDOW/2 readings exist, over the last AUTO_WINDOW
        iterations: a from-scratch regressor only learns to move boxes after a few epochs, so an early
        reading says "small" whatever the noise. Even then the reading is small (BCCD, 40% noise: 0.001-0.005,
        benchmarks/results/bccd.md), so auto_thresh is not a calibrated noise-level test.
        Returns this iteration's median (Tensor scalar) or None."""
        if 1.0 not in scales:
            return None
        i = scales.index(1.0)
        j = (i * len(scales) + i) * 5
        with torch.no_grad():
            ref = b0[:, j].float()
            wh = box_wh(ref).clamp(min=1e-6)
            rel = ((b1[:, j].float() - ref).abs() / wh.repeat(1, 2)).mean(dim=1)
            med = rel.median()
            it, n = int(self.auto_iter), self.auto_hist.numel()
            self.auto_hist[it % n] = med
            self.auto_iter += 1
            by_iters = int(self.cfg.auto_iters) > 0
            if by_iters and it + 1 >= int(self.cfg.auto_iters):
                window = self.auto_hist[n // 2 :]
            elif (not by_iters and progress is not None and progress >= float(self.cfg.warmup_frac)
                  and it + 1 >= n // 2):
                window = self.auto_hist
            else:
                return med
            val = window.nanmedian() if window.numel() else window.new_tensor(float("nan"))
            small = bool(torch.isfinite(val)) and float(val) < float(self.cfg.auto_thresh)
            self.sampler_state.fill_(_SMALL if small else _LARGE)
        return med

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        features: dict[str, Tensor],
        image_sizes: list[tuple[int, int]],
        boxes: list[Tensor],
        labels: list[Tensor],
        true_boxes: list[Tensor] | None = None,
        generator: torch.Generator | None = None,
        progress: float | None = None,
        avoid: list[Tensor] | None = None,
    ) -> RefinerOutput:
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

        Returns:
            RefinerOutput. Negatives are drawn only in training mode (loss_neg is 0 in eval mode).
        """
        cfg = self.cfg
        gen = generator if generator is not None else self.generator
        ref = next(iter(features.values()))
        dev = ref.device
        n_img = len(boxes)
        if len(labels) != n_img or len(image_sizes) != n_img:
            raise ValueError("boxes, labels and image_sizes must have one entry per image")
        if true_boxes is not None:
            if len(true_boxes) != n_img or any(t.shape[0] != b.shape[0] for t, b in zip(true_boxes, boxes)):
                raise ValueError("true_boxes must pair one-to-one with boxes")

        sel = self._select(boxes, gen)
        counts = [int(s.numel()) for s in sel]
        m = sum(counts)
        refined = [b.detach().to(dev, torch.float32).clone() for b in boxes]
        stage1 = [r.clone() for r in refined]
        state = int(self.sampler_state)
        stats: dict[str, Tensor] = {
            "num_objects": torch.tensor(float(m)),
            "num_skipped": torch.tensor(float(sum(b.shape[0] for b in boxes) - m)),
            "sampler_small": torch.tensor(float(state == _SMALL)),
        }
        if m == 0:
            zero = self._zero()
            return RefinerOutput(refined, stage1, {k: zero for k in LOSS_NAMES}, _to_floats(stats),
                                 _selected_masks(boxes, sel))

        with torch.no_grad():
            gt = torch.cat([refined[i][s] for i, s in enumerate(sel)])  # [M, 4] noisy
            lab = torch.cat([labels[i].to(dev)[s] for i, s in enumerate(sel)]).long()  # [M]
            img_of = torch.repeat_interleave(
                torch.arange(n_img, device=dev), torch.tensor(counts, device=dev)
            )
            hw = torch.tensor([[float(h), float(w)] for h, w in image_sizes], device=dev)[img_of]  # [M, 2]
            clean = None
            if true_boxes is not None:
                clean = torch.cat([true_boxes[i].to(dev, torch.float32)[s] for i, s in enumerate(sel)])
        ar = torch.arange(m, device=dev)
        scales, shift = self.sampler_params()
        zero = None
        losses: dict[str, Tensor] = {}
        n_shared, n_sisd = 0, 0

        # ---- step 1: neighbourhood bag B0 around the noisy boxes
        b0 = neighbourhood_bag(gt, scales, shift)  # [M, P, 4]
        v0 = bag_validity(b0, hw, cfg.valid_iof)  # [M, P]
        p = b0.shape[1]

        # SPSD-II needs stage-I features of EVERY B1 proposal (its loss and B2 include the invalid ones), so
        # the stage-I pool may skip invalid proposals only when SPSD-II does not run; the MIL terms mask them
        # anyway.
        skip_invalid_stage1 = self.reg0 is None
        # ---- step 2: SPSD-I moves B0 towards the statistical object extent -> B1
        if self.reg_ori is not None:
            f0, n = self._bag_features(features, image_sizes, b0, counts)  # regress every proposal (code)
            n_shared += n
            d0 = self.reg_ori(f0)  # [M, P, 4]
            losses["loss_spsd1"] = self.reg_ori.loss(d0, b0, gt)
            b1 = self.reg_ori.decode(d0, b0)
            if self.training and state == _UNDECIDED:
                med = self._auto_update(b0, b1, scales, progress)
                if med is not None:
                    stats["auto_rel_corr"] = med
        else:
            b1 = b0

        # ---- step 3: stage-I MIL on B1 (validity mask from B0, as in the code)
        f1, n = self._bag_features(features, image_sizes, b1, counts, v0 if skip_invalid_stage1 else None)
        n_shared += n
        bag1, p_cls0, p_ins0 = stage1_bag_scores(self.cls0(f1), self.ins0(f1), v0)
        losses["loss_mil1"] = stage1_loss(bag1, lab, v0.any(dim=1))
        with torch.no_grad():
            q = (p_cls0 * p_ins0)[ar, :, lab]  # [M, P] GT-class proposal scores
            b_hat, omega = topk_merge(b1, q, cfg.top_k)
            b_hat = clip_boxes(b_hat, hw)  # stage-I box is clipped to the image (method.md 5 item 9)
            b_hat, n_bad = _keep_sane(b_hat, gt)
        b_fin, bag_fin = b_hat, b1
        bags = {"gt": gt, "bag0": b0, "valid0": v0, "bag1": b1.detach(), "q1": q}

        if cfg.num_stages == 2:
            # ---- step 4: B2 = SPSD-II regression of B1 towards b̂ (code path), or a fresh bag around b̂
            if self.reg0 is not None:
                d1 = self.reg0(f1)
                losses["loss_spsd2"] = self.reg0.loss(d1, b1, b_hat, omega)
                b2 = self.reg0.decode(d1, b1)
                v2 = None  # every B2 proposal is valid
            else:
                b2 = neighbourhood_bag(b_hat, scales, shift)
                v2 = bag_validity(b2, hw, cfg.valid_iof)

            # ---- step 5: negatives (IoU < thr with every B2 box and every annotated box of their image)
            b2_img = b2.split(counts)
            negs: list[Tensor] = []
            if self.training and cfg.num_negatives > 0:
                for i in range(n_img):
                    cand = random_negatives(image_sizes[i], int(cfg.num_negatives), gen).to(dev)
                    keep = select_negatives(cand, _negative_avoid(b2_img[i], boxes[i], avoid, i),
                                            cfg.neg_iou_thresh)
                    negs.append(cand[keep])
            else:
                negs = [b2.new_zeros((0, 4)) for _ in range(n_img)]
            rois = [torch.cat([b.reshape(-1, 4), ng]) for b, ng in zip(b2_img, negs)]
            is_neg = torch.cat(
                [
                    torch.cat(
                        [
                            torch.zeros(c * p, dtype=torch.bool, device=dev),
                            torch.ones(ng.shape[0], dtype=torch.bool, device=dev),
                        ]
                    )
                    for c, ng in zip(counts, negs)
                ]
            )
            pooled, f_all = self._pool_embed(features, image_sizes, rois)  # one RoIAlign + trunk call
            n_shared += int(f_all.shape[0])
            f2 = f_all[~is_neg].reshape(m, p, -1)
            bag2, p_cls1, p_ins1 = stage2_bag_scores(self.cls1(f2), self.ins1(f2), v2)
            cls2 = p_cls1[ar, :, lab - 1].detach()  # [M, P] GT-class sigmoid scores: SISD picking + diagnostics
            losses["loss_mil2"] = stage2_loss(bag2, lab, omega)
            n_neg = int(is_neg.sum())
            if n_neg > 0:
                # mean(omega) * sum / M, weighted by w_neg in the total (method.md 3.1 step 5; beta = mean bag score)
                losses["loss_neg"] = negative_loss(self.cls1(f_all[is_neg]), m, omega.mean())
            stats["num_negatives"] = torch.tensor(float(n_neg))

            # ---- step 6-7: SISD re-ranking and the final merge
            if self.sisd is not None:
                u = self.sisd(pooled[~is_neg], m)  # [M, P]
                n_sisd += m * p
                losses["loss_sisd"] = sisd_loss(u, sisd_targets(b2, b_hat))
                with torch.no_grad():
                    # code: sigma(cls) * v * U', no instance term (method.md 5 item 3); not clipped
                    s2 = cls2 * spatial_confidence(u)
                    b_fin, _ = topk_merge(b2, s2, cfg.top_k)
            else:
                with torch.no_grad():
                    s2 = (p_cls1 * p_ins1)[ar, :, lab - 1]
                    b_fin, _ = topk_merge(b2, s2, cfg.top_k)
                    b_fin = clip_boxes(b_fin, hw)
            bag_fin = b2
            bags.update(bag2=b2.detach(), cls2=cls2)
            if self.sisd is not None:
                bags["sisd"] = u.detach()

        if cfg.num_stages == 2:
            b_fin, n_bad2 = _keep_sane(b_fin, gt)
            n_bad = n_bad + n_bad2

        for name in LOSS_NAMES:
            if name not in losses:
                zero = self._zero() if zero is None else zero
                losses[name] = zero

        # ---- outputs: scatter back into the per-image lists (skipped objects keep the noisy box)
        for i, (s, bf, bh) in enumerate(zip(sel, b_fin.split(counts), b_hat.split(counts))):
            refined[i][s] = bf.float()
            stage1[i][s] = bh.float()

        with torch.no_grad():
            stats.update(
                {
                    "bag_size": torch.tensor(float(p)),
                    "num_rois_shared": torch.tensor(float(n_shared)),
                    "num_rois_sisd": torch.tensor(float(n_sisd)),
                    "omega_mean": omega.mean(),
                    "num_fallback": n_bad.float(),
                    "bag_iou_noisy": aligned_iou(bag_fin, gt[:, None]).mean(),
                }
            )
            if clean is not None:
                bag_iou = aligned_iou(bag_fin, clean[:, None])  # [M, P]
                stats.update(
                    {
                        "iou_noisy": aligned_iou(gt, clean).mean(),
                        "iou_stage1": aligned_iou(b_hat, clean).mean(),
                        "iou_refined": aligned_iou(b_fin, clean).mean(),
                        "bag0_iou_mean": aligned_iou(b0, clean[:, None]).mean(),
                        "bag_iou_mean": bag_iou.mean(),
                        "bag_iou_max": bag_iou.max(dim=1).values.mean(),
                        "bag_iou_top10": bag_iou.topk(min(10, p), dim=1).values.mean(),
                    }
                )
        return RefinerOutput(refined, stage1, losses, _to_floats(stats), _selected_masks(boxes, sel), bags,
                             [ng.detach() for ng in negs] if cfg.num_stages == 2 else [])


def _negative_avoid(b2: Tensor, noisy: Tensor, avoid: list[Tensor] | None, i: int) -> Tensor:
    """Tensor[Q, 4]: what the negatives of image i must not overlap: the B2 proposals of its refined objects
    (Tensor[M_i, P, 4]), ALL its annotated boxes (Tensor[M_all, 4], noisy) and its extra `avoid` boxes.

    The released code refines every object, so B2 alone covers the image's objects; with a per-image cap
    (max_objects_per_image) the objects not refined this iteration would otherwise be trained as
    background."""
    parts = [b2.reshape(-1, 4), noisy.detach().to(b2)]
    if avoid is not None:
        parts.append(avoid[i].to(b2))
    return torch.cat(parts)


def _selected_masks(boxes: list[Tensor], sel: list[Tensor]) -> list[Tensor]:
    """Per image Bool[M_i]: True for the objects refined in this call."""
    out = []
    for b, s in zip(boxes, sel):
        m = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
        m[s.to(b.device)] = True
        out.append(m)
    return out


def _keep_sane(boxes: Tensor, fallback: Tensor, min_size: float = MIN_BOX_SIZE) -> tuple[Tensor, Tensor]:
    """Replace non-finite boxes, or boxes with a side under `min_size` px, by `fallback` (the noisy box).

    A degenerate pseudo box (e.g. a stage-I box of an object lying outside the image, clipped to zero width,
    or a collapsed SPSD decode) would encode to log(0) regression targets in the detector and poison the whole
    step with inf/NaN. Returns (boxes Tensor[M, 4], number replaced as a 0-dim Tensor)."""
    bad = ~torch.isfinite(boxes).all(dim=1) | ~(box_wh(boxes) >= min_size).all(dim=1)
    return torch.where(bad[:, None], fallback.to(boxes), boxes), bad.sum()


def _to_floats(stats: dict[str, Tensor]) -> dict[str, float]:
    """Scalar tensors -> floats with one device->host copy per device (not one sync per stat)."""
    by_dev: dict[torch.device, list[str]] = {}
    for k, v in stats.items():
        by_dev.setdefault(v.device, []).append(k)
    out: dict[str, float] = {}
    for keys in by_dev.values():
        out.update(zip(keys, torch.stack([stats[k].detach().float().reshape(()) for k in keys]).tolist()))
    return {k: out[k] for k in stats}
