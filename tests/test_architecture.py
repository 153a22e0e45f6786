"""docs/architecture.md against the code: the package graph it draws is the one the imports make.

The graph is read from the source (every import, module level or inside a function), one node per
package: `trainer` for the commands at the top of trainer/, `trainer.<package>` for each folder,
`serving` and `effnet_common`. `import trainer` and `from trainer import __version__` name the
package's __init__ (the version and TF_USE_LEGACY_KERAS), not the commands, and are left out.
"""
from __future__ import annotations

import ast
import pathlib
import re
from typing import Dict, Iterator, Set, Tuple

from tests.testing.presets import REPO

TRAINER = REPO / "trainer"
PRODUCT = ("trainer", "serving", "effnet_common")
DOC = REPO / "docs" / "architecture.md"


def _package(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "trainer":
        return parts[0]
    if len(parts) > 1 and (TRAINER / parts[1]).is_dir():
        return "trainer." + parts[1]
    return "trainer"


def _modules() -> Iterator[Tuple[str, pathlib.Path]]:
    for root in PRODUCT:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(path: pathlib.Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if node.module == "trainer" and alias.name == "__version__":
                    continue
                yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name != "trainer")


def code_graph() -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {}
    for module, path in _modules():
        source = _package(module)
        graph.setdefault(source, set())
        for name in _imports(path):
            if name.split(".")[0] in PRODUCT and _package(name) != source:
                graph[source].add(_package(name))
    return graph


def doc_graph() -> Dict[str, Set[str]]:
    text = DOC.read_text()
    block = re.search(r"## Package graph.*?```\n(.*?)```", text, re.S)
    assert block, f"{DOC}: no '## Package graph' section with a fenced block"
    graph = {}
    for line in block.group(1).splitlines():
        source, _, targets = line.partition(" -> ")
        graph[source.strip()] = {t.strip() for t in targets.split(",") if t.strip() and t.strip() != "(none)"}
    return graph


def test_the_documented_package_graph_is_the_code_s():
    code, doc = code_graph(), doc_graph()
    lines = [f"{p} -> {', '.join(sorted(code[p])) or '(none)'}" for p in sorted(code)]
    assert doc == code, "docs/architecture.md's package graph differs from the code; the code's:\n" + "\n".join(lines)


def test_arrows_point_down():
    """The package graph has no cycle: each package can be placed below everything that imports it."""
    graph, placed = code_graph(), []
    while len(placed) < len(graph):
        free = [p for p in graph if p not in placed and graph[p] <= set(placed)]
        assert free, f"import cycle among {sorted(set(graph) - set(placed))}"
        placed += sorted(free)


def test_the_top_of_trainer_holds_only_commands():
    """Every module beside trainer/__init__.py, commands.py and api.py (the commands for Python
    users: functions over the commands' flags, no `main`) is a command: `run_main` and flags."""
    for path in sorted(TRAINER.glob("*.py")):
        if path.name in ("__init__.py", "commands.py", "api.py"):
            continue
        names = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert {"run_main", "main"} <= names, f"{path.relative_to(REPO)} is not a command; move it into a package"


def test_no_private_name_crosses_a_module():
    found = []
    for module, path in _modules():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in PRODUCT:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{module}: from {node.module} import {alias.name}")
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{module}: {node.value.id}.{node.attr}")
    assert not found, found
