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


@pytest.mark.parametrize("argv_of, problem", [
    (lambda f, d: ["refine", "--checkpoint", "missing.pt", "--out", str(f / "x.json")], "is a file, not a folder"),
    (lambda f, d: ["train", "--out", str(f)], "is a file; expected a folder"),
    (lambda f, d: ["noise", "--data", "missing", "--out", str(d)], "is a folder; expected a file name"),
    (lambda f, d: ["audit", "--checkpoint", "missing.pt", "--data", "missing", "--out", str(d / "a.csv"),
                   "--html", str(d)],
     "--html"),
    (lambda f, d: ["eval", "--checkpoint", "missing.pt", "--save-results", str(f / "r.json")], "--save-results"),
])
def test_an_unwritable_output_fails_in_one_line_before_the_work(tmp_path, capsys, argv_of, problem):
    """The output is checked before anything is read: the error names the output, not the missing inputs."""
    from ssddet.cli import main

    a_file, a_dir = tmp_path / "file.txt", tmp_path / "dir"
    a_file.write_text("x")
    a_dir.mkdir()
    assert main(argv_of(a_file, a_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and "\n" not in err and "missing" not in err


def test_a_write_refused_during_the_work_is_one_line(monkeypatch, capsys):
    """What the pre-flight check cannot see (a read-only mount, a file locked meanwhile) still ends in one line."""
    from ssddet import cli

    def refused(args):
        raise PermissionError(13, "Permission denied", "locked/x.json")

    monkeypatch.setitem(cli.COMMANDS, "plot", (cli.COMMANDS["plot"][0], refused))
    assert cli.main(["plot", "run"]) == 2
    assert capsys.readouterr().err.strip() == "ssddet plot: error: locked/x.json: Permission denied"


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root may write anywhere")
def test_a_read_only_folder_is_refused(tmp_path, capsys):
    from ssddet.cli import main

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["refine", "--checkpoint", "missing.pt", "--out", str(ro / "x.json")]) == 2
    finally:
        ro.chmod(0o700)
    assert "permission denied" in capsys.readouterr().err
