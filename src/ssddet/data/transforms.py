"""Training-time augmentation. Only horizontal flip (as both papers): it must flip every box field."""
from __future__ import annotations

import torch

BOX_KEYS = ("boxes", "true_boxes")


def hflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Tensor[M, 4] xyxy in an image `width` wide -> the same boxes in its mirror image (an involution)."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """image: Tensor[3, H, W]; boxes xyxy in pixels -> mirrored image and boxes (x -> W - x)."""
    width = image.shape[-1]
    target = dict(target)
    for key in BOX_KEYS:
        if key in target:
            target[key] = hflip_boxes(target[key], width)
    target["flipped"] = not target.get("flipped", False)
    return image.flip(-1), target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if self.p > 0 and torch.rand(1).item() < self.p:
            return hflip(image, target)
        return image, target
