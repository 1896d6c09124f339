"""Options several commands share, so that one name means one thing in every command (docs/cli.md): the dataset
(`--data`, `--ann`, `--images`), what to do with an image file that cannot be decoded (`--on-bad-image`) and the
hidden earlier spellings of renamed options."""
from __future__ import annotations

import argparse

from ..config import ON_BAD_IMAGE


def _int_at_least(low: int):
    """An argparse type of whole numbers >= `low`, with a message that says so."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got '{s}'") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    return parse


positive_int = _int_at_least(1)  # batch sizes, image counts
non_negative_int = _int_at_least(0)  # worker counts (0: load in the main process)


def score_threshold(s: str) -> float:
    """argparse type of a detection score threshold: a number in [0, 1]."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a score in [0, 1], got '{s}'") from None
    if not 0.0 <= v <= 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"a score threshold must be in [0, 1], got {s}")
    return v


DATA_HELP = "dataset directory: DIR/annotations.json, with the images under DIR"
IMAGES_HELP = "image root that file_name is relative to (default: the JSON's folder, or --data)"


def add_dataset_options(p: argparse.ArgumentParser, ann_help: str, required: bool = False) -> None:
    """`--ann JSON` or `--data DIR` (one of them when `required`), and `--images DIR`."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--ann", metavar="JSON", help=ann_help)
    g.add_argument("--data", metavar="DIR", help=DATA_HELP)
    p.add_argument("--images", metavar="DIR", help=IMAGES_HELP)


def add_on_bad_image_option(p: argparse.ArgumentParser, skipped: str) -> None:
    """--on-bad-image of the commands that read a dataset's images besides `ssddet train` (whose flag sets
    data.on_bad_image, config_overrides.train_flags); `skipped` says what skipping means for the command."""
    p.add_argument("--on-bad-image", choices=ON_BAD_IMAGE, default="skip", help="an image file that cannot be "
                   f"decoded: skip it with a counted warning ({skipped}), or stop with a one-line error "
                   "(default: %(default)s)")


def add_hidden_alias(p: argparse.ArgumentParser, old: str, dest: str, **kw) -> None:
    """An earlier spelling of an option: still accepted, left out of --help. Add it after the option it aliases
    (whose default then stands)."""
    p.add_argument(old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)
