"""OA-MIL (Liu et al., ECCV 2022) as a torchvision ``RoIHeads`` subclass (method.md section 2).

Shapes: ``R`` sampled RoIs in the batch, ``P`` positive RoIs (= bag instances), ``B`` bags (one per noisy GT
box that has at least one positive RoI), ``M`` GT boxes in the batch, ``K`` foreground classes.

Per training iteration (nothing persists between iterations):

1. Sample RoIs exactly as torchvision does (the parent's ``select_training_samples`` already returns the
   matched GT index of every sampled RoI) and run the box head once.
2. Bags: positive RoIs grouped by (image, matched GT index).
3. Instance selector = the detector's own classifier: decode each positive's class-specific regression for
   its GT class, re-pool that box through the same ``box_roi_pool``/``box_head``/``box_predictor``, and score
   it with the softmax probability of the GT class. Bag score = max; S = class-balanced mean over the whole
   batch; ``loss_oamil = 1 - S`` (the total weighs it by lambda); OA-IE adds N more selector rounds
   (``refine`` or ``random``).
4. OA-IS: per bag, b_ref = phi * b_best + (1 - phi) * b_noisy with phi = min(s*^gamma, theta) (s* detached),
   used only as the regression target of that bag's positives. Labels and sampling stay on the noisy boxes.

No parameters are added: the state_dict keys equal plain ``RoIHeads``'. With ``box_coder="xyxy"`` the
predictor learns corner deltas, so inference must keep ``XYXYBoxCoder`` (see ``rcnn_head``); the default
"xywh" model is a drop-in torchvision ``FasterRCNN``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads

from ..config import OAMILConfig
from ..data.boxes import aligned_iou
from .rcnn_head import make_box_coder, rcnn_losses

# progress is a float fraction of the schedule; absorb rounding so "epoch 1 of 12" starts exactly at 1/12
_PROGRESS_EPS = 1e-9


# ----------------------------------------------------------------------------------------------------------
# Pure helpers (unit-tested on hand values)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Bags:
    """Positive RoIs grouped by GT box.

    roi_idx Tensor[P]: index of each positive into the concatenated sampled RoIs (image order).
    bag Tensor[P]: bag index in [0, B) of each positive.
    gt_idx Tensor[B]: global GT index (into the concatenation of all images' GT boxes) of each bag.
    per_image list[int]: positives per image (to split instance boxes for RoIAlign).
    """

    roi_idx: Tensor
    bag: Tensor
    gt_idx: Tensor
    per_image: list[int]

    @property
    def num(self) -> int:
        return int(self.gt_idx.numel())


def group_bags(labels: list[Tensor], matched_idxs: list[Tensor], num_gt: list[int]) -> Bags:
    """Bags from the sampler's assignment: labels/matched_idxs list[Tensor[R_i]], num_gt list[int] (M_i).

    A positive (label > 0) belongs to the bag of its matched GT; the GT index is made global by the offset of
    its image, so equal boxes in different images (or duplicate boxes) never merge, unlike the official
    coordinate-sum grouping.
    """
    offsets = torch.tensor([0] + num_gt[:-1]).cumsum(0).tolist()
    pos_masks = [lab > 0 for lab in labels]
    keys = torch.cat([m[p] + off for m, p, off in zip(matched_idxs, pos_masks, offsets)])
    gt_idx, bag = torch.unique(keys, sorted=True, return_inverse=True)
    roi_idx = torch.where(torch.cat(pos_masks))[0]
    per_image = torch.stack([p.sum() for p in pos_masks]).tolist() if pos_masks else []
    return Bags(roi_idx, bag, gt_idx, per_image)


def bag_best(scores: Tensor, bag: Tensor, num_bags: int) -> Tensor:
    """Index Tensor[B] of each bag's highest-scoring instance (first on ties); scores, bag Tensor[P]."""
    s = scores.detach()
    best = s.new_full((num_bags,), float("-inf")).scatter_reduce(0, bag, s, "amax")
    pos = torch.arange(s.numel(), device=s.device)
    cand = torch.where(s == best[bag], pos, s.numel())
    return torch.full((num_bags,), s.numel(), device=s.device).scatter_reduce(0, bag, cand, "amin")


def class_balanced_score(bag_scores: Tensor, bag_labels: Tensor) -> Tensor:
    """S: mean bag score per class present, then mean over those classes. Tensor[B], Tensor[B] -> Tensor[]."""
    classes, inv = torch.unique(bag_labels, return_inverse=True)
    sums = bag_scores.new_zeros(classes.numel()).index_add(0, inv, bag_scores)
    counts = torch.bincount(inv, minlength=classes.numel()).to(bag_scores.dtype)
    return (sums / counts).mean()


def refine_boxes(
    s_star: Tensor, b_best: Tensor, b_noisy: Tensor, gamma: float, theta: float
) -> tuple[Tensor, Tensor]:
    """OA-IS blend: s_star Tensor[B], b_best/b_noisy Tensor[B,4] -> (b_ref Tensor[B,4], phi Tensor[B]).

    phi = min(s*^gamma, theta) with s* detached; b_best is clamped at >= 0 only (official: no upper clamp).
    """
    phi = s_star.detach().pow(gamma).clamp(max=theta)
    b_best = b_best.detach().clamp(min=0.0)
    return phi[:, None] * b_best + (1.0 - phi[:, None]) * b_noisy, phi


def oamil_loss(round_scores: list[Tensor], oaie_type: str, coef: float) -> Tensor:
    """The unweighted OA-MIL loss from the N+1 batch scores S_0..S_N (Tensor[] each), method.md 2.3/2.5; the
    total weighs it by lambda (`oamil.oamil_lambda`, in `methods.loss_weights`).

    One round: 1-S_0. refine: (1-S_0) + coef*(1-mean(S_1..S_N)). random: 1-mean(S_0..S_N).
    """
    if len(round_scores) == 1:
        return 1.0 - round_scores[0]
    if oaie_type == "refine":
        rest = torch.stack(round_scores[1:]).mean()
        return (1.0 - round_scores[0]) + coef * (1.0 - rest)
    if oaie_type == "random":
        return 1.0 - torch.stack(round_scores).mean()
    raise ValueError(f"unknown oaie_type {oaie_type!r}; expected 'refine' or 'random'")


# ----------------------------------------------------------------------------------------------------------
# The RoI head
# ----------------------------------------------------------------------------------------------------------
class OAMILRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` + OA-MIL training. Eval path = parent's, unchanged.

    Set ``progress`` (fraction of training done, [0, 1]) every iteration: OA-IS runs when
    ``cfg.oais and progress >= cfg.oais_start``, OA-IE when ``cfg.oaie and progress >= cfg.oaie_start``.
    After a training forward, ``last_stats`` holds floats: ``oamil_score`` (S_0), ``phi_mean``, ``num_bags``,
    ``num_rounds`` and, when every target has ``"true_boxes"`` (Tensor[M_i,4], clean boxes row-aligned with
    ``"boxes"`` and in the same resized frame), ``iou_noisy``/``iou_refined`` (mean over bags).
    Masks/keypoints are not supported.
    """

    def __init__(self, *args, cfg: OAMILConfig | None = None, **kwargs) -> None:
        """Same arguments as ``RoIHeads`` plus ``cfg``; prefer ``from_roi_heads``."""
        super().__init__(*args, **kwargs)
        self.cfg = cfg if cfg is not None else OAMILConfig()
        if self.has_mask() or self.has_keypoint():
            raise ValueError("OAMILRoIHeads supports box heads only (no mask/keypoint heads)")
        if self.cfg.box_coder == "xyxy":
            self.box_coder = make_box_coder("xyxy")
        elif self.cfg.box_coder != "xywh":
            make_box_coder(self.cfg.box_coder)  # raises with the list of valid names
        self.progress: float = 0.0
        self.last_stats: dict[str, float] = {}

    @classmethod
    def from_roi_heads(cls, roi_heads: RoIHeads, cfg: OAMILConfig) -> OAMILRoIHeads:
        """Wrap an existing head: same submodules (shared, not copied), same sampling and test settings."""
        new = cls(
            roi_heads.box_roi_pool, roi_heads.box_head, roi_heads.box_predictor,
            roi_heads.proposal_matcher.high_threshold, roi_heads.proposal_matcher.low_threshold,
            roi_heads.fg_bg_sampler.batch_size_per_image, roi_heads.fg_bg_sampler.positive_fraction,
            roi_heads.box_coder.weights, roi_heads.score_thresh, roi_heads.nms_thresh,
            roi_heads.detections_per_img,
            mask_roi_pool=roi_heads.mask_roi_pool, mask_head=roi_heads.mask_head,
            mask_predictor=roi_heads.mask_predictor, keypoint_roi_pool=roi_heads.keypoint_roi_pool,
            keypoint_head=roi_heads.keypoint_head, keypoint_predictor=roi_heads.keypoint_predictor,
            cfg=cfg,
        )
        # keep any customised matcher/sampler objects, so sampling is identical to the wrapped head
        new.proposal_matcher = roi_heads.proposal_matcher
        new.fg_bg_sampler = roi_heads.fg_bg_sampler
        new.box_similarity = roi_heads.box_similarity
        if cfg.box_coder == "xywh":
            new.box_coder = roi_heads.box_coder
        return new.train(roi_heads.training)

    def to_roi_heads(self) -> RoIHeads:
        """Plain ``RoIHeads`` sharing the submodules, for deployment; keeps ``box_coder`` (xyxy stays)."""
        plain = RoIHeads(
            self.box_roi_pool, self.box_head, self.box_predictor,
            self.proposal_matcher.high_threshold, self.proposal_matcher.low_threshold,
            self.fg_bg_sampler.batch_size_per_image, self.fg_bg_sampler.positive_fraction,
            None, self.score_thresh, self.nms_thresh, self.detections_per_img,
        )
        plain.proposal_matcher, plain.fg_bg_sampler = self.proposal_matcher, self.fg_bg_sampler
        plain.box_coder = self.box_coder
        return plain.train(self.training)

    # --- gates ---------------------------------------------------------------------------------------------
    @property
    def oais_active(self) -> bool:
        return bool(self.cfg.oais) and self.progress >= self.cfg.oais_start - _PROGRESS_EPS

    @property
    def oaie_active(self) -> bool:
        on = bool(self.cfg.oaie) and self.cfg.oaie_num > 0
        return on and self.progress >= self.cfg.oaie_start - _PROGRESS_EPS

    # --- forward -------------------------------------------------------------------------------------------
    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Eval: parent's forward. Train: ([], unweighted losses loss_classifier, loss_box_reg, loss_oamil)."""
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        _check_target_types(targets)
        proposals, matched_idxs, labels, reg_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self._head(features, proposals, image_shapes)
        rois, labels_cat, reg_targets = torch.cat(proposals), torch.cat(labels), torch.cat(reg_targets)
        bags = group_bags(labels, matched_idxs, [len(t["boxes"]) for t in targets])
        loss_oamil, reg_targets = self._oamil(
            features, image_shapes, targets, rois, labels_cat, bags, class_logits, box_regression, reg_targets
        )
        # the official corner coder comes with its L1 loss; torchvision's coder with its smooth L1
        loss_cls, loss_box = rcnn_losses(
            class_logits, box_regression, labels_cat, reg_targets, "l1" if self.cfg.box_coder == "xyxy" else "smooth_l1"
        )
        return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box, "loss_oamil": loss_oamil}

    def _head(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Pool + head + predictor: list[Tensor[N_i,4]] -> (logits Tensor[N,K+1], deltas Tensor[N,4(K+1)])."""
        x = self.box_head(self.box_roi_pool(features, boxes, image_shapes))
        return self.box_predictor(x)

    def _oamil(
        self, features, image_shapes, targets, rois, labels, bags: Bags, class_logits, box_regression,
        reg_targets,
    ) -> tuple[Tensor, Tensor]:
        """OA-MIL loss Tensor[] and the (OA-IS-updated) regression targets Tensor[R,4].

        rois Tensor[R,4], labels Tensor[R], class_logits Tensor[R,K+1], box_regression Tensor[R,4(K+1)].
        """
        # zero but connected to the graph, so DDP/AMP see the same loss structure every step
        zero = (class_logits.sum() + box_regression.sum()) * 0.0
        self.last_stats = {"oamil_score": 0.0, "phi_mean": 0.0, "num_bags": float(bags.num),
                           "num_rounds": 0.0}
        if bags.num == 0 or self.cfg.oamil_lambda <= 0:  # official: lambda == 0 switches OA-MIL off entirely
            return zero, reg_targets
        pos_labels = labels[bags.roi_idx]
        gt_boxes = torch.cat([t["boxes"] for t in targets]).to(rois.dtype)
        bag_labels = torch.cat([t["labels"] for t in targets])[bags.gt_idx]
        deltas0 = _class_deltas(box_regression[bags.roi_idx], pos_labels)
        num_rounds = self.cfg.oaie_num + 1 if self.oaie_active else 1
        boxes, scores = self._selector_rounds(
            features, image_shapes, rois[bags.roi_idx], deltas0, pos_labels, bags.per_image, num_rounds
        )
        best = [bag_best(s, bags.bag, bags.num) for s in scores]
        round_s = [class_balanced_score(s[b], bag_labels) for s, b in zip(scores, best)]
        loss = oamil_loss(round_s, self.cfg.oaie_type, self.cfg.oaie_coef)
        b_noisy = gt_boxes[bags.gt_idx]
        b_ref, phi = b_noisy, torch.zeros_like(b_noisy[:, 0])
        if self.oais_active:  # b_best from round 0 only
            b_ref, phi = refine_boxes(scores[0][best[0]], boxes[0][best[0]], b_noisy,
                                      self.cfg.oais_gamma, self.cfg.oais_theta)
            enc = self.box_coder.encode_single(b_ref[bags.bag], rois[bags.roi_idx])
            reg_targets[bags.roi_idx] = enc.to(reg_targets.dtype)  # parent targets are bf16 under autocast
        self._record_stats(targets, bags, round_s[0], phi, b_noisy, b_ref, num_rounds)
        return loss, reg_targets

    def _selector_rounds(
        self, features, image_shapes, pos_rois: Tensor, deltas: Tensor, pos_labels: Tensor,
        per_image: list[int], num_rounds: int,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Instance boxes and GT-class scores for each selector round: list of Tensor[P,4] and Tensor[P].

        pos_rois Tensor[P,4], deltas Tensor[P,4] (round-0 deltas for the GT class), pos_labels Tensor[P].
        Round r>0 decodes the deltas predicted on round r-1's boxes against those boxes ("refine") or against
        the original RoIs ("random"). Boxes are detached (RoIAlign passes no gradient to coordinates anyway)
        and, as in the official code, neither clipped nor validity-checked before re-pooling.
        """
        all_boxes, all_scores = [], []
        ref = pos_rois
        for r in range(num_rounds):
            base = pos_rois if (r == 0 or self.cfg.oaie_type == "random") else ref
            # fp32 decode: under autocast fp16 coordinates would lose ~1 px at 1000+ px
            ref = self.box_coder.decode_single(deltas.detach().float(), base.float())
            logits, regression = self._head(features, list(ref.split(per_image)), image_shapes)
            # fp32 softmax: the score enters 1 - S directly, keep it exact under autocast
            probs = F.softmax(logits.float(), dim=-1)
            all_scores.append(probs[torch.arange(len(pos_labels), device=probs.device), pos_labels])
            all_boxes.append(ref)
            deltas = _class_deltas(regression, pos_labels)
        return all_boxes, all_scores

    def _record_stats(self, targets, bags: Bags, s0: Tensor, phi: Tensor, b_noisy: Tensor, b_ref: Tensor,
                      num_rounds: int) -> None:
        """Fill ``last_stats`` with one host sync; IoUs only when every target carries ``true_boxes``."""
        vals = {"oamil_score": s0.detach(), "phi_mean": phi.mean()}
        if all("true_boxes" in t for t in targets):
            clean = torch.cat([t["true_boxes"] for t in targets]).to(b_noisy)[bags.gt_idx]
            vals["iou_noisy"] = aligned_iou(b_noisy, clean).mean()
            vals["iou_refined"] = aligned_iou(b_ref.detach(), clean).mean()
        floats = torch.stack([v.float() for v in vals.values()]).tolist()
        self.last_stats.update(dict(zip(vals, floats)), num_rounds=float(num_rounds))


def _class_deltas(box_regression: Tensor, labels: Tensor) -> Tensor:
    """box_regression Tensor[N,4(K+1)], labels Tensor[N] -> the deltas for each row's label, Tensor[N,4]."""
    reg = box_regression.reshape(box_regression.shape[0], -1, 4)
    return reg[torch.arange(reg.shape[0], device=reg.device), labels]


def _check_target_types(targets: list[dict[str, Tensor]] | None) -> None:
    """The parent's training-time target checks (float boxes, int64 labels)."""
    if targets is None:
        raise ValueError("targets should not be None in training")
    for t in targets:
        if not t["boxes"].is_floating_point():
            raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}")
        if t["labels"].dtype != torch.int64:
            raise TypeError(f"target labels must be int64, got {t['labels'].dtype}")
