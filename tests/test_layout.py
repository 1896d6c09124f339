"""The package layout the README promises: its "Where things live" table names every module, imports point one
way (data -> models -> engine -> tools/cli), and no module is over 400 lines."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "ssddet"
# import layers: a module may import its own layer and the ones below it
LAYERS = {"errors": 0, "config": 0, "__init__": 0, "data": 1, "models": 2, "engine": 3, "config_overrides": 3,
          "tools": 4, "api": 4, "cli": 4}


def _modules() -> list[Path]:
    """Modules with code (package __init__ files that only re-export or are empty do not count)."""
    return sorted(p for p in PKG.rglob("*.py") if re.search(r"^(def|class) ", p.read_text(), re.M))


def _layer(rel: Path) -> int:
    return LAYERS[rel.parts[0].removesuffix(".py")]


def _readme_table() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Where things live\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        for path in re.findall(r"`([\w/{},.]+\.py)`", row.split(" | ")[0]):
            brace = re.fullmatch(r"(.*)\{(.+)\}(.*)", path)
            names |= {f"{brace[1]}{n}{brace[3]}" for n in brace[2].split(",")} if brace else {path}
    return names


def test_readme_table_matches_the_tree():
    tree = {p.relative_to(PKG).as_posix() for p in _modules()}
    table = _readme_table()
    assert not tree - table, f"modules missing from README's 'Where things live': {sorted(tree - table)}"
    assert not table - tree, f"README's 'Where things live' names modules that do not exist: {sorted(table - tree)}"


def _imported(path: Path) -> set[str]:
    """Top-level ssddet sub-packages/modules a module imports (lazy imports inside functions included)."""
    rel_pkg = path.relative_to(PKG).parent.parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = rel_pkg[: len(rel_pkg) - (node.level - 1)]
                parts = [*base, *(node.module.split(".") if node.module else [])]
                names = [parts[0]] if parts else [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == "ssddet":
                parts = node.module.split(".")[1:]
                names = [parts[0]] if parts else [a.name for a in node.names]
            else:
                continue
            out |= {n if n in LAYERS else "__init__" for n in names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ssddet.")}
    return out


def test_imports_point_one_way():
    wrong = []
    for path in _modules():
        rel = path.relative_to(PKG)
        for name in _imported(path):
            if LAYERS[name] > _layer(rel):
                wrong.append(f"{rel} imports {name}")
    assert not wrong, wrong


def test_no_module_over_400_lines():
    long = {p.relative_to(PKG).as_posix(): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
