"""`ssddet train`: the command's options and handler. The flags that set one config field each are the table in
`config_overrides.train_flags`; the handler resolves them with `ssddet.train_config` (the one path to a run's
config, also behind `ssddet.train`) and trains with `ssddet.train`."""
from __future__ import annotations

import argparse
import json
import shlex

from ..config import Config
from ..config_overrides import flag_fields, get_field, train_flags
from .options import add_hidden_alias


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    # defaults are written into the help texts: the config-field flags' argparse default is SUPPRESS
    defaults, groups = Config(), {}
    for flag, field, opts in train_flags():
        opts = dict(opts)
        title = opts.pop("group", None)
        if title and title not in groups:
            groups[title] = p.add_argument_group(title)
        v = get_field(defaults, field)
        if v is not None and "(default:" not in opts["help"]:
            opts["help"] += f" (default: {v})".replace("%", "%%")
        (groups[title] if title else p).add_argument(flag, default=argparse.SUPPRESS, **opts)


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a detector (SSD-Det by default)")
    _add_train_flags(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: a new runs/<method>-<date>-<time>, also "
                   "with --config)")
    add_hidden_alias(p, "--output", "out")
    p.add_argument("--config", metavar="JSON", help="a config.json (e.g. from a run directory) to start from; "
                   "options given on the command line override it")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                   help="override any config field, e.g. --set ssddet.top_k=5 --set ssddet.sampler=small "
                        "(value parsed as JSON when possible)")
    p.add_argument("--refiner", choices=("fast", "paper"), help="SSD-Det refiner cost settings: the defaults, or "
                   "the released code's (all objects, P=125, 500 negatives, 1024-wide trunks; many times slower, "
                   "docs/benchmarks.md) (default: the --config file's, else fast)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt, with "
                   "the settings in its config.json")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as JSON and exit without training")


def cmd_train(a) -> int:
    from ..api import format_metrics, train, train_config

    cfg = train_config(a.config, resume=a.resume, sets=a.set, refiner=a.refiner, out=a.out, **flag_fields(a))
    if a.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    metrics = train(cfg, resume=a.resume, command=shlex.join(["ssddet", *a.argv]))
    if metrics:
        print(f"final val: {format_metrics(metrics)}\nrun directory: {cfg.train.output}")
    return 0
