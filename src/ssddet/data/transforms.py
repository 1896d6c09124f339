"""Training-time augmentation. Only horizontal flip (as both papers): it must flip every box field."""
from __future__ import annotations

import torch

BOX_KEYS = ("boxes", "true_boxes")


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """image: Tensor[3, H, W]; boxes xyxy in pixels -> mirrored image and boxes (x -> W - x)."""
    width = image.shape[-1]
    target = dict(target)
    for key in BOX_KEYS:
        if key in target:
            b = target[key].clone()
            b[:, [0, 2]] = width - target[key][:, [2, 0]]
            target[key] = b
    target["flipped"] = not target.get("flipped", False)
    return image.flip(-1), target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if self.p > 0 and torch.rand(1).item() < self.p:
            return hflip(image, target)
        return image, target
