"""`ssddet` command line. Each command lives in its `tools/` module as `add_<name>_parser(sub)` (its options)
and `cmd_<name>(args)` (its handler); this module only registers them and turns user errors (and a full disk)
into exit code 2."""
from __future__ import annotations

import argparse
import errno
import logging
import sys

from ._version import __version__
from .errors import TrainingError, UserError
from .tools.audit import add_audit_parser, cmd_audit
from .tools.check import add_check_parser, cmd_check
from .tools.data import add_data_parser, cmd_data
from .tools.eval import add_eval_parser, cmd_eval
from .tools.export import add_export_parser, cmd_export
from .tools.noise import add_noise_parser, cmd_noise
from .tools.outputs import check_outputs
from .tools.plot import add_plot_parser, cmd_plot
from .tools.predict import add_predict_parser, cmd_predict
from .tools.refine import add_refine_parser, cmd_refine
from .tools.show import add_show_parser, cmd_show
from .tools.train import add_train_parser, cmd_train

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # no space left / disk quota exceeded
# a path the user named that cannot be read or written (their `filename` says which)
BAD_PATH = (errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENOENT)

# command -> (adds its sub-parser, runs it), in --help order
COMMANDS = {
    "train": (add_train_parser, cmd_train),
    "eval": (add_eval_parser, cmd_eval),
    "noise": (add_noise_parser, cmd_noise),
    "data": (add_data_parser, cmd_data),
    "check": (add_check_parser, cmd_check),
    "refine": (add_refine_parser, cmd_refine),
    "predict": (add_predict_parser, cmd_predict),
    "show": (add_show_parser, cmd_show),
    "plot": (add_plot_parser, cmd_plot),
    "audit": (add_audit_parser, cmd_audit),
    "export": (add_export_parser, cmd_export),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssddet", description="Object detection with inaccurate boxes: "
                                "SSD-Det, OA-MIL and Faster R-CNN on torchvision.")
    p.add_argument("--version", action="version", version=f"ssddet {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        check_outputs(args)
        return COMMANDS[args.cmd][1](args)
    except (UserError, TrainingError, FileExistsError) as e:
        print(f"ssddet {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_FULL and not (e.errno in BAD_PATH and e.filename):
            raise
        # a full disk or quota while writing any output (log.jsonl, metrics, exports): checkpoints say so
        # themselves (engine/checkpoint.py atomic_save), this catches every other write; and a path that turned
        # out unwritable after `check_outputs` (a read-only mount, permissions changed meanwhile)
        print(f"ssddet {args.cmd}: error: {e.filename or 'writing output'}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
