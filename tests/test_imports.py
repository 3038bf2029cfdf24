"""The import graph of medqwen_cli, read from the source with `ast`, has no cycle.

Every import counts: at the top of a module, inside a function, under `TYPE_CHECKING`. An edge
goes to the module imported (`from medqwen_cli.presets import nano` -> `medqwen_cli.presets.nano`,
`from medqwen_cli.presets import PRESETS` -> `medqwen_cli.presets`); the import of a package that
Python makes before a submodule is not an edge, only the imports written down.

Base resolution is layered modeling -> presets -> base_files, and nothing below imports back.

One cycle is known and left, outside base resolution: the package root `medqwen_cli/__init__.py`
lazily exports `load_merged` (medqwen_cli -> merge -> merge.export -> ...), and bundle.manifest,
bundle.store and merge.export import `__version__` from the root. Moving `__version__` into a
module of its own would break it; until then `test_no_import_cycle_below_the_package_root` leaves
out imports of the root package (the whole graph is checked for base resolution).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import medqwen_cli

PACKAGE = Path(medqwen_cli.__file__).parent
ROOT = "medqwen_cli"
BASE_RESOLUTION = ("medqwen_cli.modeling", "medqwen_cli.presets", "medqwen_cli.base_files")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the medqwen_cli modules it imports anywhere in its source."""
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}

    def known(name: str) -> str:  # the module itself, or the package holding the name
        while name not in paths:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges |= {known(a.name) for a in node.names if a.name.split(".")[0] == ROOT}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package, up level - 1
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join([*up, node.module] if node.module else up)
                else:
                    source = node.module or ""
                if source.split(".")[0] == ROOT:
                    edges |= {known(f"{source}.{a.name}") for a in node.names}
        graph[name] = edges - {name}
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest import cycle from `start` back to it, or None (breadth-first)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for imported in sorted(graph[module]):
            if imported == start:
                path = [module]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if imported not in came_from:
                came_from[imported] = module
                queue.append(imported)
    return None


def cycles(graph: dict[str, set[str]], starts: list[str]) -> list[str]:
    found = (cycle_through(graph, s) for s in starts)
    return sorted({" -> ".join(c) for c in found if c})


def test_the_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    assert "medqwen_cli.presets.align" in graph["medqwen_cli.presets.nano"]  # inside build_nano
    assert "medqwen_cli.modeling" in graph["medqwen_cli.loading"]  # top level
    assert "medqwen_cli.base_files" in graph["medqwen_cli.modeling"]


def test_base_resolution_is_in_no_import_cycle() -> None:
    graph = import_graph()
    starts = [m for m in graph if m.startswith(BASE_RESOLUTION)]
    assert len(starts) >= 5, starts  # modeling, base_files, presets and its modules
    found = cycles(graph, starts)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_import_cycle_below_the_package_root() -> None:
    graph = {name: edges - {ROOT} for name, edges in import_graph().items()}
    found = cycles(graph, sorted(graph))
    assert not found, "import cycles:\n" + "\n".join(found)


def test_presets_never_import_the_resolver() -> None:
    """presets and base_files reach neither modeling nor anything that imports it back."""
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for imported in graph[todo.pop()] - seen:
                seen.add(imported)
                todo.append(imported)
        return seen

    for preset in (m for m in graph if m.startswith("medqwen_cli.presets")):
        assert "medqwen_cli.modeling" not in reach(preset), preset
    below = reach("medqwen_cli.base_files")
    assert not {m for m in below if m.startswith(BASE_RESOLUTION[:2])}, sorted(below)
