"""The package layout docs/development.md promises: its layout table names every module; imports point one way
through the layers (the bottom modules, data, models and viz, engine, api, tools, cli and the package root, each
on its own layer); there is no import circle anywhere under src/; nothing imports the package root; the command
modules in tools/ reach the work only through the API; and no module is over 400 lines.

The import graph is read from the source (AST), lazy imports inside functions included, module by module."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "ssddet"
# import layers: a module may import modules of its own layer and of the layers below
LAYERS = {"_version": 0, "errors": 0, "config": 0, "data": 1, "models": 2, "viz": 2, "engine": 3,
          "config_overrides": 3, "api": 4, "tools": 5, "cli": 6, "__init__": 7}
# what the command modules may import: the API, the light modules that define options, and each other
TOOLS_MAY_IMPORT = {"api", "config", "config_overrides", "errors", "_version", "tools"}


def _module(path: Path) -> str:
    """src/ssddet/engine/refine.py -> "engine/refine"; a package's __init__.py -> "pkg/__init__"."""
    return path.relative_to(PKG).with_suffix("").as_posix()


def _resolve(parts: list[str]) -> str | None:
    """A dotted module path below the package -> its module name, None if it is not a module of the package."""
    base = PKG.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return "/".join(parts)
    if (base / "__init__.py").is_file():
        return "/".join([*parts, "__init__"])
    return None


def _imports(path: Path) -> set[str]:
    """The package modules `path` imports (every import statement, also inside functions)."""
    package = list(path.relative_to(PKG).parent.parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "ssddet":
                parts = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from .pkg import submodule` imports the submodule
                sub = _resolve([*parts, alias.name])
                out.add(sub or _resolve(parts))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ssddet":
                    out.add(_resolve(alias.name.split(".")[1:]))
    out.discard(None)
    return out


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _layer(module: str) -> int:
    return LAYERS[module.split("/")[0]]


def test_every_package_is_on_a_layer():
    assert {_module(p).split("/")[0] for p in PKG.rglob("*.py")} <= set(LAYERS)


def test_imports_point_one_way():
    wrong = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})" for m, targets in _graph().items()
             for t in targets if _layer(t) > _layer(m)]
    assert not wrong, wrong


def test_no_import_circle():
    """Tarjan's strongly connected components of the module graph: every one must be a single module that does
    not import itself."""
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_nothing_imports_the_package_root():
    """`ssddet/__init__.py` re-exports the API; a module that imported it (e.g. for __version__, which is in
    _version.py) would load the whole API and sit below the top."""
    importers = [m for m, targets in _graph().items() if "__init__" in targets]
    assert not importers, importers


def test_commands_reach_the_work_through_the_api():
    wrong = [f"{m} imports {t}" for m, targets in _graph().items() if m.startswith("tools/")
             for t in targets if t.split("/")[0] not in TOOLS_MAY_IMPORT]
    assert not wrong, wrong


def test_api_does_not_know_the_command_line():
    assert not [t for t in _graph()["api"] if t.split("/")[0] in ("tools", "cli")]


def _layout_table() -> set[str]:
    text = (ROOT / "docs" / "development.md").read_text()
    section = text.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        for path in re.findall(r"`([\w/{},.]+\.py)`", row.split(" | ")[0]):
            brace = re.fullmatch(r"(.*)\{(.+)\}(.*)", path)
            names |= {f"{brace[1]}{n}{brace[3]}" for n in brace[2].split(",")} if brace else {path}
    return names


def test_layout_table_matches_the_tree():
    """Every module is in docs/development.md's table (package __init__ files without code, which are empty or
    only re-export, do not count), and the table names no module that does not exist."""
    tree = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
            if p.name != "__init__.py" or re.search(r"^(def|class) ", p.read_text(), re.M)}
    table = _layout_table()
    assert not tree - table, f"modules missing from docs/development.md's layout table: {sorted(tree - table)}"
    assert not table - tree, f"the layout table names modules that do not exist: {sorted(table - tree)}"


def test_no_module_over_400_lines():
    long = {p.relative_to(PKG).as_posix(): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
