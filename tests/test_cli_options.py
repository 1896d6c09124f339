"""One name for one thing across commands (docs/cli.md, "Names shared by every command"): every command that
reads a dataset takes `--data`, `--ann` and `--images`, every command that writes takes `--out`, and the
earlier spellings of renamed options still parse, to the same destination, hidden from --help."""
from __future__ import annotations

import argparse

import pytest

from ssddet.cli import build_parser

# command -> arguments it needs besides the ones under test
DATASET_COMMANDS = {"train": [], "eval": ["--checkpoint", "m.pt"], "noise": [], "check": [],
                    "refine": ["--checkpoint", "c.pt", "--out", "r.json"], "show": ["--out", "o"],
                    "audit": ["--checkpoint", "c.pt", "--out", "a.csv"]}
WRITING_COMMANDS = {"train": [], "refine": ["--checkpoint", "c.pt"], "noise": ["--ann", "a.json"],
                    "predict": ["--checkpoint", "m.pt", "img.jpg"], "show": ["--ann", "a.json"], "plot": ["run"],
                    "audit": ["--checkpoint", "c.pt", "--ann", "a.json"], "export": ["--checkpoint", "m.pt"],
                    "data synth": [], "data voc2coco": ["--voc-root", "v"], "data yolo2coco": ["--yaml", "y"]}


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("cmd", DATASET_COMMANDS)
def test_every_dataset_command_takes_ann_data_and_images(cmd):
    extra = DATASET_COMMANDS[cmd]
    assert _parse(cmd, *extra, "--ann", "noisy.json", "--images", "imgs").ann == "noisy.json"
    ns = _parse(cmd, *extra, "--data", "ds", "--images", "imgs")
    assert ns.data == "ds" and ns.images == "imgs"


@pytest.mark.parametrize("cmd", WRITING_COMMANDS)
def test_every_writing_command_takes_out(cmd):
    assert _parse(*cmd.split(), *WRITING_COMMANDS[cmd], "--out", "somewhere").out == "somewhere"


@pytest.mark.parametrize("argv, dest, value", [
    (["refine", "--checkpoint", "c.pt", "--out", "r.json", "--train-ann", "noisy.json"], "ann", "noisy.json"),
    (["train", "--output", "runs/x"], "out", "runs/x"),
    (["noise", "--ann", "a.json", "--level", "0.2"], "noise", 0.2),
    (["noise", "--ann", "a.json", "--seed", "7"], "noise_seed", 7),
])
def test_old_spellings_parse_to_the_new_option(argv, dest, value, capsys):
    assert getattr(_parse(*argv), dest) == value
    old = next(a for a in argv if a in ("--train-ann", "--output", "--level", "--seed"))
    with pytest.raises(SystemExit):
        _parse(argv[0], "--help")
    assert old not in capsys.readouterr().out.split()  # hidden from --help


def test_new_spellings_win_their_defaults():
    """A hidden alias does not override the option's default when it is not given."""
    ns = _parse("noise", "--ann", "a.json")
    assert (ns.noise, ns.noise_seed) == (0.4, 45)
    assert _parse("refine", "--checkpoint", "c.pt", "--out", "r.json").ann is None


@pytest.mark.parametrize("args, problem", [
    (["eval", "--data", "d", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["eval", "--data", "d", "--workers", "-1"], "argument --workers: must be >= 0, got -1"),
    (["show", "--data", "d", "--out", "o", "--n", "x"], "argument --n: expected a whole number >= 1, got 'x'"),
    (["predict", "--checkpoint", "m.pt", "--out", "o", "--score", "nan", "i.jpg"],
     "argument --score: a score threshold must be in [0, 1], got nan"),
])
def test_counts_and_thresholds_are_checked_by_the_parser(args, problem, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(args)
    assert e.value.code == 2 and problem in capsys.readouterr().err
