"""The walls of ``convzoo.data``: its import graph, read from the source of every module (imports
inside functions and under ``TYPE_CHECKING`` included), has no cycle, imports nothing from a
higher layer of convzoo, and each room imports only the rooms below it (docs/architecture.md):

    base        images, dataset, prepare, caches, sampler, progress   (data/'s own)
    sources     cifar, digits, folders, download              -> base
    packs       reader, writer, remote                        -> base, sources
    transforms  preprocess, policies, ..., augment, stage     -> base
    loading     registry, loaders, pipeline                   -> everything above
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "src" / "convzoo" / "data"

# convzoo's layers above the data layer: data may import none of them.
HIGHER = ("convzoo.train", "convzoo.training", "convzoo.api", "convzoo.export", "convzoo.cli",
          "convzoo.models.weights", "convzoo.inference", "convzoo.evaluate", "convzoo.bench",
          "convzoo.sweeps", "convzoo.checkpoint", "convzoo.runtime", "convzoo.predictor")

# room -> the rooms it may import (its own included); "base" is data/'s own modules.
ROOMS = {
    "base": {"base"},
    "sources": {"base", "sources"},
    "packs": {"base", "sources", "packs"},
    "transforms": {"base", "transforms"},
    "loading": {"base", "sources", "packs", "transforms", "loading"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(DATA.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in its body: ``import a.b`` -> a.b, ``from a import
    b`` -> a.b when a.b is a module of data/, else a (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return found


FILES = sorted(DATA.rglob("*.py"))
MODULES = {module_name(f): f for f in FILES}


def room_of(module: str) -> str:
    parts = module.split(".")  # convzoo.data[.room][.module]
    return parts[2] if len(parts) > 2 and (DATA / parts[2]).is_dir() else "base"


def data_graph() -> dict[str, set[str]]:
    """module -> the modules of data/ it imports (a package counts as its __init__)."""
    return {m: {i for i in imports_of(f) if i in MODULES and i != m} for m, f in MODULES.items()}


def test_the_walk_sees_every_kind_of_import() -> None:
    """The reader finds imports at the top, inside functions and under TYPE_CHECKING, and
    resolves `from package import module` to the module (else the other tests prove nothing)."""
    graph = data_graph()
    assert "convzoo.data.images" in graph["convzoo.data.dataset"]  # top level
    assert "convzoo.data.packs.remote" in graph["convzoo.data.packs.reader"]  # in a function
    assert "convzoo.data.packs.reader" in graph["convzoo.data.loading.registry"]  # from . import
    assert len(MODULES) > 20


def test_no_import_cycle_inside_data() -> None:
    graph = data_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_data_imports_nothing_from_a_higher_layer() -> None:
    wrong = sorted(f"{m} imports {i}" for m, f in MODULES.items() for i in imports_of(f)
                   if any(i == h or i.startswith(h + ".") for h in HIGHER))
    assert not wrong, wrong


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_imports_only_the_rooms_below_it(room: str) -> None:
    graph = data_graph()
    wrong = sorted(f"{m} imports {i}" for m in graph if room_of(m) == room for i in graph[m]
                   if room_of(i) not in ROOMS[room])
    assert not wrong, wrong


def test_package_inits_import_nothing() -> None:
    """No re-exports: importing one module of a room never runs the rest of it (an __init__
    that imported its modules would also put them on every importer's path)."""
    inits = [f for f in FILES if f.name == "__init__.py"]
    assert len(inits) == 5
    wrong = [str(f) for f in inits if imports_of(f)]
    assert not wrong, wrong
