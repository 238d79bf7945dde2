"""The shape that lets imagegen grow: no import circles (imports inside functions included), no family names compared
outside imagegen/families/, small files and functions, and CLI options that are the field table's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "imagegen"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every imagegen module this one imports, anywhere in it (function bodies included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_counting_imports_inside_functions():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert sum(len(edges) for edges in graph.values()) > 100  # the scan sees the imports at all
    assert _cycles(graph) == []


def _family_comparisons(path: Path, names: set[str]) -> list[str]:
    def named(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(named(e) for e in node.elts)
        return False

    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare) and any(named(x) for x in (node.left, *node.comparators)):
            hits.append(f"{path}:{node.lineno}")
        elif isinstance(node, ast.match_case) and named(getattr(node.pattern, "value", None)):
            hits.append(f"{path}:{node.pattern.lineno}")
    return hits


def test_no_module_outside_families_compares_against_a_family_name():
    from imagegen.families import FAMILIES

    names = set(FAMILIES)
    assert {"sdxl", "sd3", "flux"} <= names
    hits = [hit for path in PACKAGE.rglob("*.py") if "families" not in path.relative_to(PACKAGE).parts
            for hit in _family_comparisons(path, names)]
    assert hits == []


def test_the_family_scan_finds_a_comparison(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('def f(family):\n    return family == "flux" or family in ("sd3", "x")\n')
    assert len(_family_comparisons(sample, {"flux", "sd3"})) == 2


def test_files_and_functions_stay_small():
    long_files, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 410:
            long_files.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 62:
                long_functions.append(f"{path.name}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long_files == [] and long_functions == []


@pytest.mark.parametrize("command", ["txt2img", "img2img", "inpaint", "edit", "batch", "compare", "reproduce"])
def test_cli_options_are_the_field_tables(command):
    """Every option a generating command takes for a request field is made from that field's one declaration."""
    import typer

    from imagegen.adapters import ADAPTERS
    from imagegen.cli import app
    from imagegen.modes import MODES
    from imagegen.request import FIELDS, LINE_FIELDS

    click = typer.main.get_command(app).commands[command]
    by_name = {p.name: p for p in click.params}
    callback = next(c.callback for c in app.registered_commands if c.callback.__name__ == command)
    for name in callback.fields:
        assert tuple(by_name[name].opts + by_name[name].secondary_opts) == FIELDS[name].options, name
        assert by_name[name].multiple == FIELDS[name].repeat, name
    # A single-mode command takes every line field but those of other modes; batch takes them all.
    refused = set(MODES[command].refuses) if command in MODES else {"strength", "lora_scale"} if command == "compare" else set()
    refused |= {f.name for a in ADAPTERS if a.fields and a.fields[0].name in refused for f in a.fields}
    if command in (*MODES, "batch"):  # every field a prompt-file line may set is a flag too
        assert set(LINE_FIELDS) - {"prompt"} - refused <= set(callback.fields)
        assert not refused & set(callback.fields)
    if command != "reproduce":  # every adapter's options, on every generating command (but another mode's)
        assert {f.name for a in ADAPTERS for f in a.fields} - refused <= set(callback.fields)
