"""The evidence `ssddet audit` ranks by, one pass per image: the refiner's box b̃ for every given box, the trained
detector's class probabilities on the given box and on b̃, and the detector's own detections.

Four kinds of box error, each with a score in [0, 1] (higher: more likely), ranked within its kind:

- **misplaced** (`score`, as before): 1 - IoU(given box, b̃). The refiner rebuilds each box from the image alone, so
  the further it moves a box, the more likely the box is off its object.
- **wrong_class**: the detector's RoI head (softmax over background + K classes) run on the given box and on b̃;
  of the two, the view with more foreground probability (the one that sits on the object: a misplaced given box
  shows the RoI head mostly background, b̃ shows it the object). In that view, with p the annotated class's
  probability and q the best other class's, the score is q / (p + q): the probability that the object is of the
  other class given that it is one of the two. It is > 0.5 exactly when another class beats the annotated one.
  Conditioning on the two classes removes the background share, so a box half on its object ranks by its class
  evidence and not by how well it is placed (that is the other kinds' business).
- **spurious** (no object): 1 - max(foreground probability on the given box, on b̃), where the foreground
  probability is 1 - P(background) of the same RoI head. Taking b̃ as well keeps misplaced boxes whose refinement
  finds their object out of this kind; > 0.5 exactly when background is the more likely reading of both boxes.
- **missing** (per image, not an annotation): a detection of the trained detector with score >= `missing_score`
  whose IoU is < 0.5 with every given box, every b̃ and every crowd region of its image, whatever their classes
  (a detection of another class on an annotated object is that annotation's wrong_class evidence, and one on a
  misplaced box's b̃ is its misplaced evidence, not a missing object); duplicates of one object in several classes
  are merged by class-agnostic NMS at IoU 0.5. Score: the detection's score.

Why these are comparable within a kind: each is a probability-like quantity of the same model read the same way on
every box (one softmax, one refiner), not normalised per image, so a 0.8 in one image means what it means in
another; and each has its decision point at 0.5 (IoU 0.5, the better of two classes, background vs object), which
is what `annotation_kind` uses to name the kind of each annotation. The kinds are asked in the order of what they
presuppose: no object (spurious) first, then the object's class (wrong_class: a class on a spurious box is moot),
then its box (misplaced: the refiner rebuilds the box of the annotated class, so on a wrong-class or spurious
annotation b̃ wanders and 1 - IoU is high for the wrong reason).

The detector's probabilities are in-sample (it trained on these annotations, errors included), which makes it
lean towards the given labels: the scores rank, they are not calibrated error probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from .refine import ImageView, image_views, mirror_features, mirror_refine, refine_view

ANNOTATION_KINDS = ("spurious", "wrong_class", "misplaced")  # asked in this order (module docstring)
KINDS = ("misplaced", "wrong_class", "spurious", "missing")
OK = "ok"  # an annotation no score flags
DECISION = 0.5  # every score's decision point
MISSING_IOU = 0.5  # a detection at IoU >= this with a given box, b̃ or crowd region is covered
MISSING_SCORE = 0.5  # default detection score for a missing-object finding


@dataclass
class ImageEvidence:
    """What the audit saw in one image; boxes xyxy in the JSON's pixel frame."""

    refined: np.ndarray  # [M, 4] b̃ of each given box (the given box where the refiner skips it)
    refined_mirror: np.ndarray  # [M, 4] b̃ of each given box computed on the mirror image (mapped back)
    confidence: np.ndarray  # [M] the refiner's confidence in b̃ (`refiner_confidence`; 0 where skipped)
    probs_given: np.ndarray  # [M, K + 1] RoI-head softmax on the given box (column 0: background)
    probs_refined: np.ndarray  # [M, K + 1] the same on b̃
    det_boxes: np.ndarray  # [D, 4] the detector's detections (its own score threshold, NMS and cap)
    det_scores: np.ndarray  # [D]
    det_labels: np.ndarray  # [D] in 1..K


def refiner_confidence(bags: dict, top_k: int) -> torch.Tensor:
    """Tensor[M] in [0, 1]: mean of the top-k scores the refiner's final merge weighs (stage-II class
    probability x SISD spatial confidence; without SISD the class probability; a one-stage refiner: the
    stage-I score)."""
    from ..models.ssddet.sisd import spatial_confidence

    if "cls2" in bags:
        s = bags["cls2"].float()
        if "sisd" in bags:
            s = s * spatial_confidence(bags["sisd"])
    else:
        s = bags["q1"].float()
    return s.topk(min(int(top_k), s.shape[1]), dim=1).values.mean(dim=1)


def roi_class_probs(detector, view: ImageView, boxes: torch.Tensor) -> torch.Tensor:
    """Tensor[N, K + 1]: the detector's RoI-head class softmax (column 0: background) on `boxes` (resized frame)
    taken as proposals."""
    heads = detector.roi_heads
    if len(boxes) == 0:
        return boxes.new_zeros((0, heads.box_predictor.cls_score.out_features))
    x = heads.box_head(heads.box_roi_pool(view.features, [boxes.float()], view.images.image_sizes))
    logits, _ = heads.box_predictor(x)
    return logits.float().softmax(dim=-1)


def detect(detector, view: ImageView) -> dict:
    """The detector's detections on the view (resized frame): {boxes, scores, labels}."""
    proposals, _ = detector.rpn(view.images, view.features)
    dets, _ = detector.roi_heads(view.features, proposals, view.images.image_sizes)
    return dets[0]


def refine_image(method, view: ImageView) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (b̃ Tensor[M, 4] resized frame, confidence Tensor[M]) of every given box of the view."""
    refined, conf = view.boxes.clone().float(), view.boxes.new_zeros(len(view.boxes))
    for part, res in refine_view(method, view):
        sel = res.selected[0]
        refined[part] = res.refined[0].float()
        if sel.any():
            conf[part][sel] = refiner_confidence(res.bags, method.refiner.cfg.top_k).to(conf)
    return refined, conf


def refine_mirror(method, view: ImageView, chunk: int = 32) -> torch.Tensor:
    """b̃ Tensor[M, 4] (resized frame) of every given box of the view, computed on its mirror image: a second
    look by the same refiner, whose disagreement with the first is its own noise (`audit.box_quality`)."""
    if len(view.boxes) == 0:
        return view.boxes.clone().float()
    feats, size = mirror_features(method, view.image), view.images.image_sizes[0]
    return torch.cat([mirror_refine(method, feats, size, view.boxes[s:s + chunk], view.labels[s:s + chunk]).float()
                      for s in range(0, len(view.boxes), chunk)])


@torch.no_grad()
def gather_evidence(method, records, device, bad=None) -> dict:
    """-> {image id: ImageEvidence} of every readable record, images without annotations too (they may miss
    objects). b̃ is the merged box itself, without the keep-the-box step (which would hand back the given box)."""
    method.refiner.cfg.keep_given = False
    out = {}
    for view in image_views(method, records, device, bad, empty=True, desc="audit"):
        refined, conf = refine_image(method, view)
        dets = detect(method.detector, view)
        out[view.rec.image_id] = ImageEvidence(
            refined=_np(refined * view.back), refined_mirror=_np(refine_mirror(method, view) * view.back),
            confidence=_np(conf),
            probs_given=_np(roi_class_probs(method.detector, view, view.boxes)),
            probs_refined=_np(roi_class_probs(method.detector, view,
                                              clip_boxes_to_image(refined, view.images.image_sizes[0]))),
            det_boxes=_np(dets["boxes"] * view.back), det_scores=_np(dets["scores"]),
            det_labels=dets["labels"].cpu().numpy().astype(np.int64))
    return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float64)


def wrong_class_score(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """probs Tensor[N, K + 1] (column 0 background), labels Int64[N] in 1..K -> (q / (p + q) Tensor[N], the best
    other class Int64[N]): p the annotated class's probability, q the best other class's. With one class there is
    no other: score 0, the annotated class."""
    probs, labels = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.int64)
    if probs.shape[1] <= 2 or len(labels) == 0:
        return probs.new_zeros(len(labels)), labels.clone()
    own = probs.gather(1, labels[:, None]).squeeze(1)
    others = probs.clone()
    others[:, 0] = -1.0
    others.scatter_(1, labels[:, None], -1.0)
    best, other = others.max(dim=1)
    return best / (own + best).clamp_min(1e-12), other


def class_view(probs_given: torch.Tensor, probs_refined: torch.Tensor) -> torch.Tensor:
    """Per box, the row of the two RoI softmaxes (given box, b̃) with the more foreground probability."""
    pg, pr = torch.as_tensor(probs_given, dtype=torch.float64), torch.as_tensor(probs_refined, dtype=torch.float64)
    return torch.where((pg[:, :1] <= pr[:, :1]), pg, pr)


def spurious_score(probs_given: torch.Tensor, probs_refined: torch.Tensor) -> torch.Tensor:
    """Tensor[N]: 1 - max(foreground probability on the given box, on b̃) = the smaller background probability."""
    pg, pr = torch.as_tensor(probs_given, dtype=torch.float64), torch.as_tensor(probs_refined, dtype=torch.float64)
    return torch.minimum(pg[:, 0], pr[:, 0])


def annotation_kind(misplaced: float, wrong_class: float, spurious: float) -> str:
    """The first kind in ANNOTATION_KINDS order whose score passes DECISION, else OK."""
    scores = {"spurious": spurious, "wrong_class": wrong_class, "misplaced": misplaced}
    return next((k for k in ANNOTATION_KINDS if scores[k] > DECISION), OK)


def missing_objects(det_boxes, det_scores, covered, min_score: float = MISSING_SCORE,
                    iou: float = MISSING_IOU) -> np.ndarray:
    """Indices (best first) of the detections (xyxy [D, 4], scores [D]) with score >= min_score whose IoU is < `iou`
    with every box of `covered` ([C, 4]: the image's given boxes, b̃ and crowd regions, any class), one per object:
    class-agnostic NMS at `iou` among them."""
    boxes = torch.as_tensor(np.asarray(det_boxes, np.float64).reshape(-1, 4))
    scores = torch.as_tensor(np.asarray(det_scores, np.float64).reshape(-1))
    cov = torch.as_tensor(np.asarray(covered, np.float64).reshape(-1, 4))
    keep = scores >= min_score
    if len(cov) and len(boxes):
        keep &= box_iou(boxes, cov).max(dim=1).values < iou
    idx = keep.nonzero().flatten()
    kept = batched_nms(boxes[idx].float(), scores[idx].float(), torch.zeros(len(idx), dtype=torch.int64), iou)
    return idx[kept].numpy()
