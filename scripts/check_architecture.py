#!/usr/bin/env python
"""Architecture checks over the ``avret`` package (standard library only: ``ast``).

Reports, one violation per line:

1. **cycles**: import cycles between avret modules, counting only module-level imports
   (``import avret.x``, ``from avret.x import y``, ``from . import y``, ``from .x import y``);
   imports inside functions or classes and under ``if TYPE_CHECKING:`` do not count. An import of
   ``avret.a.b`` also runs ``avret/a/__init__.py``, so it counts as an import of ``avret.a`` too.
2. **private imports**: a private name (one leading underscore, not a dunder) imported from another
   avret module (``from avret.a import _helper``), at any level, functions included.
3. **layering**: ``avret/eval/`` imports nothing from ``avret.models``, ``avret.train``,
   ``avret.distill``, ``avret.index`` or ``avret.sentiment`` (anywhere, functions included);
   ``avret/models/`` does not import ``avret.eval``, ``avret.distill``, ``avret.train`` or
   ``avret.index`` at module level; ``avret/index/`` (the store, building, the Searcher) imports
   nothing from ``avret.train``, ``avret.distill``, ``avret.serve``, ``avret.sentiment`` or
   ``avret.eval``, and ``avret/serve/`` nothing from the training side or ``avret.eval``.
4. **back-arrows**: the stages of :data:`STAGES` form the pipeline, and a module may import only
   from its own stage or an earlier one, counting every import: module level, inside functions and
   type-only (``if TYPE_CHECKING:``) alike (``avret/__init__.py``, the lazy front door, is exempt).
5. **the command line**: the library never imports the command-line package (``cli/``, installed
   as ``avret_cli``), and ``cli/`` itself is checked for cycles and private imports from ``avret``.

``python scripts/check_architecture.py [PACKAGE_DIR]`` prints the violations and exits 1 if there
are any, 0 if none. ``PACKAGE_DIR`` defaults to the ``avret`` folder next to ``scripts/`` (and then
``cli/`` beside it is checked too); its folder name is the package name.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

#: (package folder, forbidden import prefixes, module level only?)
LAYER_RULES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("eval", ("models", "train", "distill", "index", "sentiment"), False),
    ("models", ("eval", "distill", "train", "index"), True),
    ("index", ("train", "distill", "serve", "sentiment", "eval"), False),
    ("serve", ("train", "distill", "sentiment", "eval"), False),
)


#: The pipeline, first to last: a module imports only from its own stage or an earlier one.
#: (models precede features: the encoders use THE CLIP loader; eval precedes train: training
#: selects epochs on the evaluator's validation metric.)
STAGES: tuple[str, ...] = ("errors", "utils", "io", "data", "models", "features", "losses", "eval", "train",
                           "distill", "index", "serve", "sentiment", "experiment", "api")
#: Names the command-line package may be imported under.
CLI_PACKAGES = ("cli", "avret_cli")


@dataclass(frozen=True)
class Import:
    """One imported module (and, for ``from M import name``, the name) seen in a source file."""

    module: str  # absolute dotted module name, e.g. "avret.eval.retrieval"
    name: str | None  # the imported name for ``from module import name``, else None
    line: int
    top_level: bool  # executed when the module is imported (not in a function / TYPE_CHECKING)


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of ``path`` inside the package folder ``root`` (named after the package)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name -> file."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    """Absolute module of a (possibly relative) ``from ... import``."""
    if not node.level:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def file_imports(path: Path, current: str, is_package: bool) -> list[Import]:
    """The imports of one file, marking those executed at import time (``top_level``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[Import] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.Import):
            out.extend(Import(alias.name, None, node.lineno, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, current, is_package)
            out.extend(Import(mod, alias.name, node.lineno, top) for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.iter_child_nodes(node):
                visit(child, False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, top)
        else:
            # class bodies, try/except, module-level if/with/for run at import time
            for child in ast.iter_child_nodes(node):
                visit(child, top)

    visit(tree, True)
    return out


def _targets(imp: Import, modules: dict[str, Path]) -> list[str]:
    """The package module an import depends on: ``pkg.sub`` for ``from pkg import sub`` when that is
    a module, else the module named. Parent packages, which Python also initialises, are left out:
    every submodule would otherwise form a cycle with a package ``__init__`` that re-exports it."""
    if imp.name is not None and f"{imp.module}.{imp.name}" in modules:
        return [f"{imp.module}.{imp.name}"]
    return [imp.module] if imp.module in modules else []


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, list[Import]]]:
    """Module-level import graph between package modules, and every file's imports."""
    modules = package_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    imports: dict[str, list[Import]] = {}
    for mod, path in modules.items():
        imports[mod] = file_imports(path, mod, path.name == "__init__.py")
        for imp in imports[mod]:
            if imp.top_level:
                graph[mod].update(t for t in _targets(imp, modules) if t != mod)
    return graph, imports


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative cycle per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan; recursion depth at most the number of modules
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in sorted(components):
        members = set(comp)
        start = comp[0]
        # shortest path back to start inside the component (BFS)
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(prev[path[-1]])
        cycles.append(path[::-1] + [start])
    return cycles


def check(root: Path) -> list[str]:
    """Every violation under the package folder ``root``, one human-readable line each."""
    root = Path(root).resolve()
    pkg = root.name
    modules = package_modules(root)
    graph, imports = import_graph(root)
    rel = {m: p.relative_to(root.parent).as_posix() for m, p in modules.items()}
    out: list[str] = []

    for cycle in find_cycles(graph):
        out.append(f"cycle: {' -> '.join(cycle)}")

    for mod in sorted(imports):
        for imp in imports[mod]:
            if not (imp.module == pkg or imp.module.startswith(pkg + ".")):
                continue
            name = imp.name
            if name and name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                if imp.module != mod:
                    out.append(f"private import: {rel[mod]}:{imp.line}: {name} from {imp.module}")

    def stage(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == pkg and parts[1] in STAGES else None

    for mod in sorted(imports):
        here = stage(mod)
        for imp in imports[mod]:
            if imp.module.split(".")[0] in CLI_PACKAGES:
                out.append(f"cli import: {rel[mod]}:{imp.line}: the library imports {imp.module}")
                continue
            if here is None:
                continue
            target = next(iter(_targets(imp, modules)), imp.module)
            there = stage(target)
            if there is not None and STAGES.index(there) > STAGES.index(here):
                kind = "module level" if imp.top_level else "in a function or type-only"
                out.append(f"back-arrow: {rel[mod]}:{imp.line}: {here} imports {target} ({there}, a later stage; "
                           f"{kind})")

    for layer, forbidden, top_only in LAYER_RULES:
        prefix = f"{pkg}.{layer}"
        for mod in sorted(imports):
            if not (mod == prefix or mod.startswith(prefix + ".")):
                continue
            for imp in imports[mod]:
                if top_only and not imp.top_level:
                    continue
                targets = [imp.module] + ([f"{imp.module}.{imp.name}"] if imp.name else [])
                for bad in forbidden:
                    bad_mod = f"{pkg}.{bad}"
                    if any(t == bad_mod or t.startswith(bad_mod + ".") for t in targets):
                        where = "" if top_only else (" (module level)" if imp.top_level else " (in a function)")
                        shown = imp.module + (f" import {imp.name}" if imp.name else "")
                        out.append(f"layering: {rel[mod]}:{imp.line}: {layer} imports {shown}{where}")
                        break
    return out


def check_cli(root: Path, library: str = "avret") -> list[str]:
    """``cli/``: no import cycles among its modules, no private names taken from the library."""
    root = Path(root).resolve()
    graph, imports = import_graph(root)
    out = [f"cycle: {' -> '.join(c)}" for c in find_cycles(graph)]
    for mod in sorted(imports):
        for imp in imports[mod]:
            name = imp.name
            if (imp.module == library or imp.module.startswith(library + ".")) and name and name.startswith("_") \
                    and not (name.startswith("__") and name.endswith("__")):
                out.append(f"private import: {mod}:{imp.line}: {name} from {imp.module}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the violations of the package folder (default: avret/ next to scripts/)."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "avret"
    if not root.is_dir():
        print(f"check_architecture: {root} is not a folder", file=sys.stderr)
        return 2
    violations = check(root)
    cli_root = root.parent / "cli"
    if not args and cli_root.is_dir():
        violations += check_cli(cli_root, root.name)
    for line in violations:
        print(line)
    print(f"{len(violations)} violation(s) in {root.name}/", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
