"""Pre-flight check of a command's output paths: a path the command cannot write fails in one line before the
work (training, refining, predicting), not in a traceback after it."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

DIR_OUTPUTS = {"train", "predict", "show", "data synth"}  # commands whose --out is a folder
FILE_OPTIONS = {"html": "--html", "save_results": "--save-results"}  # further output files, by argparse dest


def check_outputs(args) -> None:
    """Raise UserError if an output of the parsed command line cannot be written (argparse Namespace with
    `cmd`, and `data_cmd` for `ssddet data`)."""
    command = f"{args.cmd} {args.data_cmd}" if getattr(args, "data_cmd", None) else args.cmd
    if getattr(args, "out", None):
        check_writable(args.out, "--out", folder=command in DIR_OUTPUTS)
    for dest, option in FILE_OPTIONS.items():
        if getattr(args, dest, None):
            check_writable(getattr(args, dest), option, folder=False)


def check_writable(path: str | os.PathLike, option: str, folder: bool) -> None:
    """`path` (a file, or a folder if `folder`) can be created or overwritten: the path itself if it exists,
    else its nearest existing ancestor, which must be a writable folder (missing folders are created)."""
    p = Path(path)
    if p.exists():
        if folder != p.is_dir():
            kind = "a folder" if p.is_dir() else "a file"
            raise UserError(f"{option} {p}: is {kind}; expected {'a folder' if folder else 'a file name'}")
        if not os.access(p, os.W_OK | (os.X_OK if folder else 0)):
            raise UserError(f"{option} {p}: permission denied")
        return
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{option} {p}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{option} {p}: cannot create it in {ancestor} (permission denied)")
