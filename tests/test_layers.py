"""The layers of convzoo: every module's imports, read from its source (at the top, inside
functions and under ``TYPE_CHECKING``), point only to its own layer or the layers below it in the
table of docs/architecture.md; an import inside a function is one of the few listed here with
its reason; using a trained model (the API, export, the CLI's eval and predict) imports nothing
from the training package; and the import graph has no cycle."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "convzoo"
DOC = ROOT / "docs" / "architecture.md"

# The imports that stay inside a function, (importer, imported) -> why. Each costs the importer
# nothing until the function runs; the figures are import times measured on top of what the
# importer already imports (2-core machine, loaded). Anything else goes at the top of the module.
TORCH = "imports torch (5.8 s): kept out of --help, --version, recipes and config"
LAZY = {
    # `import convzoo` (which the CLI does for __version__) imports none of the public API's
    # modules until one of its names is used.
    ("convzoo", "convzoo.training.loop"): "convzoo.train: imports torch (5.8 s)",
    ("convzoo", "convzoo.api"): "convzoo.load / Classifier: imports torch (5.8 s)",
    ("convzoo", "convzoo.sweeps"): "convzoo.sweep: imports torch (5.8 s)",
    ("convzoo", "convzoo.models"): "convzoo.create_model / list_models: imports torch",
    ("convzoo", "convzoo.models.registry"): "convzoo.register_model: imports torch (5.8 s)",
    ("convzoo", "convzoo.training.results"): "convzoo.TrainResult: imports torch (5.8 s)",
    # The CLI imports what a command runs inside that command.
    ("convzoo.cli", "convzoo.runconfig"): TORCH,
    ("convzoo.cli", "convzoo.training.loop"): TORCH,
    ("convzoo.cli", "convzoo.sweeps"): TORCH,
    ("convzoo.cli", "convzoo.api"): TORCH,
    ("convzoo.cli", "convzoo.models"): TORCH,
    ("convzoo.cli", "convzoo.models.info"): TORCH,
    ("convzoo.cli", "convzoo.data.packs.writer"): TORCH,
    ("convzoo.cli", "convzoo.data.caches"): TORCH,
    ("convzoo.cli", "convzoo.bench"): TORCH,
    ("convzoo.cli", "convzoo.export"): TORCH,
    ("convzoo.cli", "convzoo.push"): TORCH,
    ("convzoo.cli", "convzoo.training.rundir"): TORCH,
    ("convzoo.cli", "convzoo.report"): "imports matplotlib (2.1 s): only plot and recipes --run",
    # load() and predict() need neither the data pipeline nor the report's plotting.
    ("convzoo.api", "convzoo.data.loading.pipeline"): "evaluate only: scikit-learn (2.7 s)",
    ("convzoo.api", "convzoo.eval_report"): "a report only: matplotlib, scikit-learn (3.9 s)",
    ("convzoo.api", "convzoo.trackers"): "a report only: matplotlib through report.py",
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    lazy: bool  # inside a function (runs when the function does)
    typing_only: bool  # under `if TYPE_CHECKING:` (never runs)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> list[Import]:
    """Every convzoo module `path` imports: ``import a.b`` -> a.b; ``from a import b`` -> a.b
    when that is a module, else a; relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[Import] = []

    def add(target: str, lazy: bool, typing_only: bool, line: int) -> None:
        if target == "convzoo" or target.startswith("convzoo."):
            found.append(Import(name, target, lazy, typing_only, line))

    def walk(node: ast.AST, lazy: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                               ast.Lambda))
            typed = typing_only or (isinstance(child, ast.If)
                                    and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, lazy, typing_only, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    add(sub if sub in MODULES else base, lazy, typing_only, child.lineno)
            walk(child, inner, typed)

    walk(ast.parse(path.read_text(), str(path)), False, False)
    return found


IMPORTS = [i for p in MODULES.values() for i in imports_of(p)]


def declared_layers() -> list[tuple[str, list[str]]]:
    """The layer table of docs/architecture.md, bottom first: the indented block whose first
    line starts with ``layer``; each row a layer name, then its modules (``data.*``: the package
    and everything in it; ``__init__``: the package ``convzoo`` itself); an indented line
    continues the row above."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    layer "))
    rows: list[tuple[str, list[str]]] = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        words = line.replace(",", " ").split()
        if line.startswith("     "):  # a continuation
            rows[-1][1].extend(words)
        else:
            rows.append((words[0], words[1:]))
    return rows


def layer_of() -> dict[str, int]:
    """module -> its layer's index (0 = the bottom)."""
    rows = declared_layers()
    out: dict[str, int] = {}
    for module in MODULES:
        short = module.removeprefix("convzoo.") if module != "convzoo" else "__init__"
        for index, (_, patterns) in enumerate(rows):
            if any(short == p or (p.endswith(".*") and (short == p[:-2]
                                                        or short.startswith(p[:-1])))
                   for p in patterns):
                out[module] = index
                break
    return out


def graph(lazy: bool) -> dict[str, set[str]]:
    """module -> the modules it imports when it is imported (lazy: and when its functions run);
    imports under TYPE_CHECKING never run."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if not i.typing_only and (lazy or not i.lazy) and i.imported != i.importer:
            edges[i.importer].add(i.imported)
    return edges


def reached(start: set[str]) -> set[str]:
    """Every module that importing `start` and running its functions can import. The package
    ``convzoo`` is imported by every module's import; its lazy names (``convzoo.train``...) are
    followed only by whoever asks for one, so not from here."""
    edges, seen, todo = graph(lazy=True), set(), list(start)
    edges["convzoo"] = set(graph(lazy=False)["convzoo"])
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += edges[m]
    return seen


def cycle_in(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)) is not None:
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def test_the_reader_sees_every_kind_of_import() -> None:
    """Top-level, in-function and relative imports, `from package import module` resolved to
    the module (else the tests below prove nothing)."""
    seen = {(i.importer, i.imported, i.lazy) for i in IMPORTS}
    assert ("convzoo.saved", "convzoo.models.weights", False) in seen
    assert ("convzoo.cli", "convzoo.api", True) in seen
    assert ("convzoo.cli", "convzoo.config", False) in seen  # from convzoo import config as C
    assert ("convzoo.data.loading.registry", "convzoo.data.packs.reader", False) in seen
    assert len(MODULES) > 60


def test_every_module_has_one_layer_in_the_table() -> None:
    rows, layers = declared_layers(), layer_of()
    assert len(rows) >= 8, rows
    assert not sorted(set(MODULES) - set(layers)), "add these modules to docs/architecture.md"
    named = [p for _, patterns in rows for p in patterns]
    assert len(named) == len(set(named)), "a module is in two layers"
    stale = [p for p in named if not p.endswith(".*") and p != "__init__"
             and f"convzoo.{p}" not in MODULES]
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    layers, rows = layer_of(), declared_layers()
    wrong = [f"{i.importer} ({rows[layers[i.importer]][0]}) imports {i.imported} "
             f"({rows[layers[i.imported]][0]}), line {i.line}"
             for i in IMPORTS if layers[i.imported] > layers[i.importer]]
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_are_the_listed_ones() -> None:
    """An import inside a function hides a dependency from the top of the module; each one left
    is in LAZY with its measured reason, and LAZY lists none that is gone."""
    lazy = {(i.importer, i.imported) for i in IMPORTS if i.lazy}
    assert not sorted(lazy - set(LAZY)), "move these to the top of the module, or list them " \
        "in LAZY with the measured reason"
    assert not sorted(set(LAZY) - lazy), "LAZY lists imports that are no longer there"


@pytest.mark.parametrize("lazy", [False, True], ids=["top-level", "with-functions"])
def test_the_import_graph_has_no_cycle(lazy: bool) -> None:
    cycle = cycle_in(graph(lazy))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def cli_path(*commands: str) -> set[str]:
    """What the CLI imports at its top and inside `commands` and `main`."""
    tree = ast.parse(MODULES["convzoo.cli"].read_text())
    spans = [(f.lineno, f.end_lineno or f.lineno) for f in tree.body
             if isinstance(f, ast.FunctionDef) and f.name in ("main", *commands)]
    assert len(spans) == len(commands) + 1, commands
    return {i.imported for i in IMPORTS if i.importer == "convzoo.cli"
            and (not i.lazy or any(a <= i.line <= b for a, b in spans))}


@pytest.mark.parametrize("start", ["api", "export", "eval", "predict"])
def test_using_a_model_imports_nothing_from_training(start: str) -> None:
    """convzoo.load, convzoo export and convzoo eval / predict need no training code."""
    if start in ("eval", "predict"):
        roots = cli_path(f"cmd_{start}", *(["write_predictions"] if start == "predict" else []))
        assert "convzoo.api" in roots
    else:
        roots = {f"convzoo.{start}"}
    found = sorted(m for m in reached(roots) if m.startswith("convzoo.training"))
    assert not found, f"{start} reaches {found}"
