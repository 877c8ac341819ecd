"""The shape of the code: dependencies run one way between packages, no import cycles, no hidden imports.

Rule (docs/development.md, "Development"): ``core`` imports nothing of ours; ``pipeline``, ``detectors`` and
``synth`` import ``core``; ``reports`` imports ``core`` and ``detectors``; ``cli`` may import
everything. Every import statement counts, including those inside functions, and a module loaded by
name (``importlib.import_module``) is only allowed in the CLI's lazy command registry.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: package -> the packages of ours it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "pipeline": {"core"},
    "detectors": {"core"},
    "synth": {"core"},
    "reports": {"core", "detectors"},
    "cli": {"core", "pipeline", "detectors", "reports", "synth"},
}
#: The one module allowed to import by name (the CLI's lazy command registry, cli -> cli only).
NAME_IMPORTS_ALLOWED = {"ztaudit.cli.main"}


def packages() -> dict[str, Path]:
    """``ztaudit.<pkg>`` -> folder, from pyproject's package-dir (the source of truth)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {name: ROOT / folder for name, folder in cfg["tool"]["setuptools"]["package-dir"].items()}


def modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in packages().items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            name = ".".join([pkg, *[p for p in rel if p != "__init__"]])
            out[name] = path
    return out


def imports(name: str, source: str, known: set[str], *, is_pkg: bool = False) -> Iterator[tuple[str, int]]:
    """(our module imported, line) for every import in ``source`` (the text of module ``name``),
    each imported name resolved to the longest known module (``from ztaudit import core, pipeline``
    imports both packages; ``from ztaudit.core.config import Config`` imports ``ztaudit.core.config``)."""
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                yield t, node.lineno


def loads_by_name(source: str) -> list[int]:
    """Lines that load a module by name: ``importlib.import_module``, ``import_module`` imported from
    importlib, ``__import__``, or ``importlib.util`` loaders."""
    tree = ast.parse(source)
    aliases = {"__import__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("importlib", "importlib.util"):
            aliases |= {a.asname or a.name for a in node.names}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("import_module", "__import__", "spec_from_file_location"):
            lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id in aliases and isinstance(node.ctx, ast.Load):
            lines.append(node.lineno)
    return sorted(set(lines))


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {t for t, _ in imports(m, p.read_text(), known, is_pkg=p.name == "__init__.py")}
            for m, p in mods.items()}


def package_of(module: str) -> str:
    return module.split(".")[1]


def rule_violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in edges.items():
        for dst in targets:
            a, b = package_of(src), package_of(dst)
            if a != b and b not in ALLOWED[a]:
                out.append(f"{src} -> {dst} ({a} may not import {b})")
    return sorted(out)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_package_is_in_the_rule() -> None:
    assert {package_of(p + ".x") for p in packages()} == set(ALLOWED)


def test_dependencies_run_one_way() -> None:
    assert rule_violations(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_no_modules_loaded_by_name() -> None:
    """Dependencies are import statements a reader (and this test) can see, not strings."""
    offenders = [f"{name}:{line}" for name, path in modules().items() if name not in NAME_IMPORTS_ALLOWED
                 for line in loads_by_name(path.read_text())]
    assert offenders == []


def test_the_checks_catch_what_they_are_for() -> None:
    """The parser sees every imported name, the rule and cycle checks fail on a planted edge, and
    every way of loading a module by name is found (so these tests can fail at all)."""
    known = set(modules())
    planted = "from ztaudit import core, pipeline\nfrom ztaudit.core import timeutil, window\n"
    got = {t for t, _ in imports("ztaudit.core.errors", planted, known)}
    assert {"ztaudit.core", "ztaudit.pipeline", "ztaudit.core.timeutil", "ztaudit.core.window"} <= got
    edges = graph()
    bad = {k: set(v) for k, v in edges.items()}
    bad["ztaudit.core.config"].add("ztaudit.pipeline.ingest")
    assert rule_violations(bad) == ["ztaudit.core.config -> ztaudit.pipeline.ingest (core may not import pipeline)"]
    assert any("ztaudit.core.config" in c for c in cycles(bad))
    second_name_cycle = {k: set(v) for k, v in edges.items()}
    for t, _ in imports("ztaudit.core.errors", "from ztaudit.core import window, timeutil\n", known):
        second_name_cycle["ztaudit.core.errors"].add(t)
    assert any("ztaudit.core.errors" in c for c in cycles(second_name_cycle))
    for text in ("import importlib\nimportlib.import_module('x')\n",
                 "from importlib import import_module\nimport_module('x')\n",
                 "from importlib import import_module as load\nload('x')\n",
                 "__import__('x')\n"):
        assert loads_by_name(text), text
