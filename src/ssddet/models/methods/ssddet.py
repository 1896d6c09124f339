"""SSD-Det training (method.md section 3): the refiner rebuilds the noisy boxes each iteration and the RPN and
box head train on the refined boxes b̃ (detached). The refiner is training-only: `.detector` stays a plain
torchvision FasterRCNN, so inference costs exactly a Faster R-CNN."""
from __future__ import annotations

import torch
from torchvision.models.detection import FasterRCNN
from torchvision.ops import MultiScaleRoIAlign

from ...config import SSDDetConfig
from ...data.boxes import aligned_iou, box_area_nonneg
from ..profiling import scope, scoped
from ..roi_align import FastGradMultiScaleRoIAlign
from ..ssddet import SSDDetRefiner
from ..ssddet.bank import BoxBank, from_unit, to_unit
from ..ssddet.mirror import mirror_gap_terms, mirror_merged
from .base import DetectionMethod, weighted_total

DETECTOR_TERMS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


class SSDDetMethod(DetectionMethod):
    def __init__(self, detector: FasterRCNN, cfg: SSDDetConfig, num_classes: int, box_loss: str = "smooth_l1",
                 loss_weights: dict[str, float] | None = None):
        super().__init__(detector, box_loss, loss_weights)
        self.cfg = cfg
        self.refiner = SSDDetRefiner(cfg, num_classes, _refiner_pool(detector.roi_heads.box_roi_pool, cfg),
                                     in_channels=detector.backbone.out_channels)
        self.bank = BoxBank()
        # the R-CNN ignore band's lower edge as configured (model.box_bg_iou_thresh); see `sampling_band`
        self.band = float(detector.roi_heads.proposal_matcher.low_threshold)
        self.progress = 0.0  # of the last forward, for `total_loss`
        self.unannotated_score = float(cfg.unannotated_score)
        if cfg.det_reset > 0:  # saved with the model, so a resumed run does not reset twice
            self.register_buffer("heads_reset", torch.zeros((), dtype=torch.bool))

    def forward(self, images, targets, progress: float = 0.0):
        self.progress = progress
        if self.training and 0 < self.cfg.det_reset <= progress and not bool(self.heads_reset):
            reset_heads(self.detector)
            self.heads_reset.fill_(True)
        return super().forward(images, targets, progress)

    def det_ramp(self, progress: float) -> float:
        """Scale of the detector's losses: 0 -> 1 over `det_ramp` of training (0: always 1)."""
        return 1.0 if self.cfg.det_ramp <= 0 else min(1.0, progress / self.cfg.det_ramp)

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted total, the detector's terms scaled by `det_ramp` (the refiner's are not: it must learn
        from the start, and its boxes are what the detector waits for)."""
        r = self.det_ramp(self.progress)
        if r >= 1.0:
            return super().total_loss(losses)
        weights = {k: self.loss_weights.get(k, 1.0) * (r if k in DETECTOR_TERMS else 1.0) for k in losses}
        return weighted_total(losses, weights)

    def blend(self, progress: float) -> float:
        """Weight of the refined box in the detector's target: ramps 0 -> 1 over the warm-up, because a refiner
        trained from scratch first produces boxes worse than the noisy ones."""
        if self.cfg.warmup_frac <= 0:
            return 1.0
        return min(1.0, progress / self.cfg.warmup_frac)

    @scoped("bank")
    def _with_bank(self, targets, refined, selected, sizes, smooth: bool = False, merged=None) -> list:
        """Objects refined now update the bank (of every DDP process: the bank is one logical bank, see
        ssddet/bank.py), averaged with their banked box if `smooth` (`target_momentum`); the others take their
        banked box (else stay noisy). `merged` (Tensor[S, 4], the selected objects' b̃ before the keep step,
        image-major) goes into the bank's merged table, the keep step's second view at the next visit."""
        out, new_ids, new_boxes, new_merged = [], [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, 4)], []
        parts = merged.split([int(s.sum()) for s in selected]) if merged is not None else [None] * len(targets)
        for t, r, sel, size, mg in zip(targets, refined, selected, sizes, parts):
            if not self.training or "ann_ids" not in t or len(r) == 0:
                out.append(r)
                continue
            flipped = bool(t.get("flipped", False))
            ids = t["ann_ids"].cpu()
            r = r.clone()
            if smooth:
                r[sel] = self._smoothed(ids[sel.cpu()], r[sel], size, flipped)
            new_ids.append(ids[sel.cpu()])
            new_boxes.append(to_unit(r[sel], size, flipped).detach().float().cpu())
            if mg is not None:
                new_merged.append(to_unit(mg.float(), size, flipped).cpu())
            banked, found = self.bank.lookup(ids[~sel.cpu()])
            rest = r[~sel].clone()
            if found.any():
                rest[found.to(r.device)] = from_unit(banked[found].to(r), size, flipped)
            r[~sel] = rest
            out.append(r)
        if self.training:  # a collective under DDP: called once per step on every process
            mg = torch.cat([torch.zeros(0, 4)] + new_merged) if merged is not None else None
            self.bank.update_all_ranks(torch.cat(new_ids), torch.cat(new_boxes), mg)
        return out

    def _smoothed(self, ids, boxes, size, flipped: bool):
        """`target_momentum`: Tensor[S, 4] refined now -> m * banked + (1 - m) * refined, per object that has a
        banked box (the others as refined). Averaged in the bank's unflipped frame, so the two flips' boxes mix."""
        banked, found = self.bank.lookup(ids)
        if not found.any():
            return boxes
        m = float(self.cfg.target_momentum)
        f = found.to(boxes.device)  # `boxes` is the caller's indexed copy: written in place
        boxes[f] = m * from_unit(banked[found].to(boxes), size, flipped) + (1.0 - m) * boxes[f]
        return boxes

    @scoped("bank")
    def banked_boxes(self, targets, sizes) -> list:
        """Per image Tensor[B_i, 4] in its (resized, flipped) frame: the bank's boxes of its annotations that
        have one, which the refiner's negatives must avoid as well as the noisy boxes."""
        out = []
        for t, size in zip(targets, sizes):
            empty = t["boxes"].new_zeros((0, 4))
            if not self.training or not self.cfg.bank or "ann_ids" not in t or len(self.bank) == 0:
                out.append(empty)
                continue
            banked, found = self.bank.lookup(t["ann_ids"].cpu())
            out.append(from_unit(banked[found].to(empty), size, bool(t.get("flipped", False))))
        return out

    @property
    def second_view(self) -> bool:
        """Whether the keep step asks for each object's b̃ of its previous visit (`keep_history`, `trust_self` with
        `self_view="previous"`)."""
        return bool(self.cfg.keep_history or (self.cfg.trust_self and self.cfg.self_view == "previous"))

    @scoped("bank")
    def previous_merged(self, targets, sizes) -> list | None:
        """Per image Tensor[M_i, 4] in its (resized, flipped) frame: each object's b̃ of its last visit from the
        bank's merged table, NaN rows where there is none; None unless `keep_history` or `trust_self` trains with
        the bank."""
        if not (self.training and self.cfg.bank and self.second_view):
            return None
        out = []
        for t, size in zip(targets, sizes):
            prev = t["boxes"].new_full((len(t["boxes"]), 4), float("nan"))
            if "ann_ids" in t and len(prev):
                banked, found = self.bank.lookup(t["ann_ids"].cpu(), merged=True)
                if found.any():
                    f = found.to(prev.device)
                    prev[f] = from_unit(banked[found].to(prev), size, bool(t.get("flipped", False)))
            out.append(prev)
        return out

    @scoped("ssddet.targets")
    def refine_targets(self, features, images, targets, progress: float):
        noisy = [t["boxes"] for t in targets]
        true = [t["true_boxes"] for t in targets] if all("true_boxes" in t for t in targets) else None
        if self.cfg.detach_features:
            features = {k: v.detach() for k, v in features.items()}
        avoid, priority = self.banked_boxes(targets, images.image_sizes), self.priority(targets)
        with scope("refiner"):
            out = self.refiner(features, images.image_sizes, noisy, [t["labels"] for t in targets], true,
                               progress=progress, avoid=avoid, priority=priority,
                               previous=self.previous_merged(targets, images.image_sizes))
        if self.refiner.keep is not None and self.refiner.keep.measures_mirror(progress):
            self._observe_mirror(images, noisy, [t["labels"] for t in targets], out)
        refined = out.refined
        if self.cfg.bank:
            # no average while the refiner trusts the given boxes: they are the targets (but the few it moves
            # below trusted_keep_iou, keep.py), exact, and an average would drag them back (sampling_band)
            smooth = self.cfg.target_momentum > 0 and not self.trusts_given(progress)
            refined = self._with_bank(targets, refined, out.selected, images.image_sizes, smooth,
                                      out.bags.get("merged") if self.second_view else None)
        # A training decision, taken here (after the keep step has updated its trust, before the R-CNN samples):
        # the statistics below only report it.
        band = self.sampling_band(progress)
        a = self.blend(progress)
        det_targets = [{**t, "boxes": a * r + (1 - a) * n} for t, r, n in zip(targets, refined, noisy)]
        stats = {**out.stats, "refine_blend": a, "bank_size": float(len(self.bank)), "ignore_band": float(band)}
        if true is not None:
            boxes, clean = torch.cat([t["boxes"] for t in det_targets]), torch.cat(true)
            if len(boxes):
                # what the detector actually trains on (refined, banked or noisy, blended)
                stats["iou_det_target"] = float(aligned_iou(boxes, clean).mean())
            stats.update(iou_by_size(out.refined, true, out.selected, [t.get("resize", 1.0) for t in targets]))
        return det_targets, out.losses, stats

    def _observe_mirror(self, images, noisy, labels, out) -> None:
        """`self_view="mirror"`: the refiner's b̃ of this step's refined objects again on the mirror image, their
        gaps IoU(b*, b̃) - IoU(b̃, b̃ mirrored) into the keep step's window (it decides from the next step on)."""
        merged = out.bags.get("merged")
        if merged is None or not len(merged):
            return
        given = [n[s] for n, s in zip(noisy, out.selected)]
        mirrored = mirror_merged(self.detector.backbone, self.refiner, images.tensors, images.image_sizes, given,
                                 [lb[s] for lb, s in zip(labels, out.selected)])
        self.refiner.keep.observe_mirror(*mirror_gap_terms(torch.cat(given), merged, mirrored))

    def sampling_band(self, progress: float) -> bool:
        """Set the R-CNN's ignore band for this step; True if proposals in [model.box_bg_iou_thresh, 0.5) are
        ignored. The band is for targets the refiner is still moving (docs/method.md §3.2): while it trusts the
        given boxes (keeps all but those it moves below trusted_keep_iou, keep.py), they are the targets, as exact
        as the dataset's, and the R-CNN samples as vanilla Faster R-CNN does."""
        matcher = self.detector.roi_heads.proposal_matcher
        lifted = self.trusts_given(progress) or progress >= self.cfg.band_until  # or late by choice (`band_until`)
        matcher.low_threshold = matcher.high_threshold if lifted else self.band
        return matcher.low_threshold < matcher.high_threshold

    def trusts_given(self, progress: float) -> bool:
        """True while the refiner trusts the given boxes (keep.py: it keeps all but those it moves below
        trusted_keep_iou; docs/method.md 3.1 step 8)."""
        keep = self.refiner.keep
        return bool(self.cfg.keep_given and keep is not None and keep.trusted(progress))

    @scoped("bank")
    def priority(self, targets) -> list | None:
        """Per image Tensor[M_i] for the refiner's cap (`selection="oldest"`): minus the bank step of each
        object's last refinement, so never-refined objects come first, then the longest-unrefined ones."""
        if not (self.training and self.cfg.bank and self.cfg.selection == "oldest"):
            return None
        if not all("ann_ids" in t for t in targets):
            return None
        return [-self.bank.last_refined(t["ann_ids"].cpu()).float() for t in targets]

    def param_groups(self, lr: float, train=None) -> list[dict]:
        """The refiner's heads start from random weights however the backbone starts, and their losses carry
        weights of 0.25 (docs/method.md §3.2), tuned for ~90k COCO iterations. `refiner_lr_mult` lets them
        learn within a short schedule without raising the detector's LR. `train` (TrainConfig): the refiner's
        first decay comes after `refiner_decay_epochs` at the latest (`refiner_lr_steps`)."""
        refiner = [p for p in self.refiner.parameters() if p.requires_grad]
        ids = {id(p) for p in refiner}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        det = {"params": rest, "lr": lr}
        if self.cfg.det_lr_steps is not None:  # the detector decays later than the refiner (method.md 3.2)
            det["lr_steps"] = [float(s) for s in self.cfg.det_lr_steps]
        ref = {"params": refiner, "lr": lr * self.cfg.refiner_lr_mult}
        if train is not None:
            ref["lr_steps"] = refiner_lr_steps(train.lr_steps, train.epochs, self.cfg.refiner_decay_epochs)
        return [det, ref]


def refiner_lr_steps(lr_steps: list, epochs: int, decay_epochs: float) -> list[float]:
    """The refiner's multistep decay points (fractions of training): `lr_steps` with its first point moved to
    `decay_epochs` / `epochs` when that is earlier (`decay_epochs` <= 0: `lr_steps` as given).

    Why: held at the high LR for long, the refiner drifts back towards the noisy boxes it regresses to (BCCD
    40 %, 12 epochs: refined IoU 0.64 after epoch 6, 0.56-0.58 after; docs/benchmarks.md), so its first decay is
    tied to how often it has seen each object, not to the length of the schedule."""
    steps = sorted(float(s) for s in lr_steps)
    if decay_epochs > 0 and steps and epochs > 0:
        steps[0] = min(steps[0], decay_epochs / epochs)
    return steps


def reset_heads(detector: FasterRCNN, seed: int = 0) -> None:
    """Re-initialise the RPN head, box head and box predictor in place (the optimizer keeps the same
    parameters), as torchvision builds them: RPNHead's convs N(0, 0.01) with zero bias, PyTorch's defaults
    elsewhere. A fixed seed, so every DDP process draws the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in detector.rpn.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=0.01)
                torch.nn.init.zeros_(m.bias)
        for head in (detector.roi_heads.box_head, detector.roi_heads.box_predictor):
            for m in head.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                    m.reset_parameters()


SIZE_BINS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


def iou_by_size(refined: list, true: list, selected: list, resize: list[float]) -> dict[str, float]:
    """Mean IoU with the clean box of the objects refined in this call, per COCO size bin of the clean box's area
    in the source image: {"iou_refined_small": ..., ...}; a bin with no object is left out."""
    iou, area = [], []
    for r, c, sel, f in zip(refined, true, selected, resize):
        c = c.to(r)[sel]
        iou.append(aligned_iou(r[sel], c))
        area.append(box_area_nonneg(c) / float(f) ** 2)
    iou, area = torch.cat(iou), torch.cat(area)
    out = {}
    for name, lo, hi in SIZE_BINS:
        m = (area >= lo) & (area < hi)
        if m.any():
            out[f"iou_refined_{name}"] = float(iou[m].mean())
    return out


def _refiner_pool(pool: MultiScaleRoIAlign, cfg: SSDDetConfig) -> MultiScaleRoIAlign:
    """The detector's pooler, or a copy with fewer samples per bin: RoIAlign is a large part of the refiner's
    cost, and it pools ~10x the detector's RoIs."""
    if cfg.pool_sampling_ratio == pool.sampling_ratio:
        return pool
    return FastGradMultiScaleRoIAlign(pool.featmap_names, pool.output_size, cfg.pool_sampling_ratio)
