"""What the documentation promises: every relative link (and its #anchor) of README.md, CHANGELOG.md and docs/*.md
resolves, the README stays a short front page, every command option and every config field (with its default) is
on the command-line page, and no source, test or benchmark file names an absolute path of a development
machine."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest

from ssddet.cli import build_parser
from ssddet.config import PAPER_REFINER, Config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = _slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto:


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, broken


def test_readme_is_a_short_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "](docs/images/bccd_show.png)" in text
    head = text.split("<!-- sweep:begin -->", 1)[1].split("<!-- sweep:end -->", 1)[0]
    assert head.count("\n|") >= 4, "the generated headline table"
    assert "Reproduce:" in head
    assert "```bash\npython3 -m venv .venv && . .venv/bin/activate && pip install -e \".[dev]\"" in text
    assert "@inproceedings{wu2023ssddet" in text and "@inproceedings{liu2022oamil" in text
    for page in ("cli", "results", "gpus", "benchmarks", "method", "development"):
        assert f"(docs/{page}.md)" in text, page
    assert (ROOT / "CHANGELOG.md").is_file() and len(list((ROOT / "docs").glob("*.md"))) >= 5


def _subparsers(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subparsers(sub, f"{prefix}{name} ")


def test_every_command_option_is_documented():
    text = (ROOT / "docs" / "cli.md").read_text() + (ROOT / "docs" / "results.md").read_text()
    missing = []
    for cmd, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            for opt in action.option_strings:
                if opt not in ("-h", "--help") and f"`{opt}" not in text and f"{opt} " not in text:
                    missing.append(f"{cmd} {opt}")
    assert not missing, f"options missing from docs/cli.md or docs/results.md: {missing}"


def _documented_fields() -> dict[str, str]:
    """`section.key` -> the default written beside it in docs/cli.md's configuration tables."""
    section = (ROOT / "docs" / "cli.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(\w+\.\w+)` \| `([^`]*)` \|", section, flags=re.M))


def test_every_config_field_is_documented_with_its_default():
    documented = _documented_fields()
    cfg = Config().to_dict()
    fields = {f"{s}.{k}": v for s, sub in cfg.items() for k, v in sub.items()}
    assert sorted(documented) == sorted(fields), "docs/cli.md's configuration tables vs config.py"
    for name, value in fields.items():
        shown = json.loads(documented[name])
        if isinstance(value, list):
            assert shown == pytest.approx(value, abs=1e-3), name
        elif isinstance(value, float):
            assert shown == pytest.approx(value, abs=1e-3), name
        else:
            assert shown == value, name


def test_the_paper_preset_is_documented_field_by_field():
    text = (ROOT / "docs" / "cli.md").read_text()
    rows = dict(re.findall(r"^\| `ssddet\.(\w+)` \|[^\n]*\bcost \[([^\]]+)\]", text, flags=re.M))
    assert sorted(rows) == sorted(PAPER_REFINER), "the fields marked 'cost [...]' are the --refiner paper ones"
    for key, shown in rows.items():
        want = PAPER_REFINER[key]
        assert shown.strip("`") == ("all" if key == "max_objects_per_image" and want == 0 else
                                   json.dumps(want).strip('"') if not isinstance(want, float) else f"{want:g}"), key


def test_no_absolute_machine_path():
    home = re.compile(r"(?<![\w.])/(?:work|home|Users|root|mnt|scratch)/\w")
    found = []
    for folder in ("src", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".sh", ".md", ".toml", ".cfg", ".yaml") or "results" in path.parts:
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
                if home.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, found


def test_config_sections_are_the_documented_ones():
    sections = {f.name for f in dataclasses.fields(Config)}
    text = (ROOT / "docs" / "cli.md").read_text()
    assert all(f"### `{s}`" in text for s in sections), sections
