"""Random negative boxes for the stage-II MIL background term (method.md 3.1 step 5).

Shapes: n negatives per image, Q boxes a negative must not overlap (the image's B2 proposals and every
annotated box of the image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou


def random_negatives(image_size: Sequence[int], n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw `n` uniform random boxes over an enlarged image, as the released code does.

    x1 ~ U(-0.2W, W), y1 ~ U(-0.2H, H), x2 = x1 + U(0,1)*(1.2W - x1), y2 = y1 + U(0,1)*(1.2H - y1), drawn in
    the order x1, y1, x2, y2 (n draws each) so that a seeded generator gives a reproducible stream. Boxes may
    reach 1.2*W and are not clipped (the code does not clip them).

    Args:
        image_size: (h, w) of the resized image before padding.
        n: number of boxes.
        generator: torch.Generator; the boxes are drawn on its device (CPU for the default generator) and
            returned there. None uses the global RNG.

    Returns:
        Tensor[n, 4] xyxy float32.
    """
    h, w = float(image_size[0]), float(image_size[1])
    dev = generator.device if generator is not None else torch.device("cpu")

    def u() -> Tensor:
        return torch.rand(n, generator=generator, device=dev)

    x1 = -0.2 * w + u() * (1.2 * w)
    y1 = -0.2 * h + u() * (1.2 * h)
    x2 = x1 + u() * (1.2 * w - x1)
    y2 = y1 + u() * (1.2 * h - y1)
    return torch.stack([x1, y1, x2, y2], dim=1)


def select_negatives(negs: Tensor, avoid: Tensor, thresh: float = 0.3) -> Tensor:
    """Keep a negative iff its IoU is below `thresh` with EVERY box to avoid.

    Args:
        negs: Tensor[n, 4] xyxy.
        avoid: Tensor[Q, 4] xyxy: the image's bag proposals and annotated boxes (Q may be 0: then every
            negative is kept). An empty box to avoid overlaps nothing (IoU 0).
        thresh: IoU threshold (0.3 in the code).

    Returns:
        Bool[n].
    """
    if avoid.numel() == 0:
        return torch.ones(negs.shape[0], dtype=torch.bool, device=negs.device)
    # torchvision's pairwise IoU: none of these boxes is inverted (negatives are drawn with x2 >= x1, bag
    # proposals and annotated boxes have positive sides), where it would differ from `aligned_iou`
    return (box_iou(negs, avoid.to(negs.device)) < thresh).all(dim=1)  # [n, Q] -> Bool[n]


def draw_negatives(image_sizes: Sequence[Sequence[int]], bags: Sequence[Tensor], annotated: Sequence[Tensor],
                   extra: Sequence[Tensor] | None, n: int, thresh: float,
                   generator: torch.Generator | None = None) -> list[Tensor]:
    """The negatives of a batch: per image, `n` random boxes kept where their IoU is below `thresh` with every
    B2 proposal of its refined objects (bags[i] Tensor[M_i, P, 4]), ALL its annotated boxes (annotated[i]
    Tensor[M_all, 4], noisy) and its `extra` boxes (the bank's refined boxes of its objects, Tensor[A_i, 4]).

    The released code refines every object, so B2 alone covers the image's objects; with a per-image cap
    (max_objects_per_image) the objects not refined this iteration would otherwise be trained as background.

    Returns:
        per image Tensor[Q_i, 4] on the bags' device.
    """
    out = []
    for i, bag in enumerate(bags):
        cand = random_negatives(image_sizes[i], n, generator).to(bag.device)
        avoid = [bag.reshape(-1, 4), annotated[i].detach().to(bag)] + ([extra[i].to(bag)] if extra is not None else [])
        out.append(cand[select_negatives(cand, torch.cat(avoid), thresh)])
    return out
