"""The package's shape, read statically with `ast`: no import circle among `atrous` modules, no function over
100 lines and no module over 600 lines in src/. Each rule is a helper that is also run on a made-up package
or source text, so the test can be seen to fail."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 600

# Files allowed past a limit, with the reason (path relative to src/ -> reason). Empty: nothing exceeds.
MODULE_EXCEPTIONS: dict[str, str] = {}
FUNCTION_EXCEPTIONS: dict[str, str] = {}  # "path:qualified.name" -> reason


# ----------------------------------------------------------------------------------------------------------
# import graph
# ----------------------------------------------------------------------------------------------------------
def module_name(path: Path, src: Path) -> str:
    """atrous/models/zoo.py -> atrous.models.zoo; atrous/models/__init__.py -> atrous.models."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_nodes(body: list[ast.stmt]):
    """The import statements that run when the module is imported: module level, inside if/try/with blocks
    and class bodies; not inside functions (run later) nor under `if TYPE_CHECKING:` (never run)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_nodes(node.body)
            yield from _import_time_nodes(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _import_time_nodes(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _import_time_nodes(node.body)


def module_imports(source: str, name: str, *, is_package: bool, modules: set[str], root: str) -> set[str]:
    """The modules of `modules` (dotted names under `root`) that module `name` imports at import time.
    `from a.b import c` is an edge to a.b.c when c is a module, else to a.b (the module or package that
    defines c); relative imports are resolved against `name`."""
    found: set[str] = set()
    for node in _import_time_nodes(ast.parse(source).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                anchor = here[: len(here) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        found.update(t for t in targets if t == root or t.startswith(root + "."))
    found &= modules
    found.discard(name)
    return found


def import_graph(src: Path, root: str) -> dict[str, set[str]]:
    """{module: modules it imports at import time} for every module of the package `root` under `src`."""
    paths = {module_name(p, src): p for p in sorted((src / root).rglob("*.py"))}
    modules = set(paths)
    return {
        name: module_imports(
            path.read_text(), name, is_package=path.name == "__init__.py", modules=modules, root=root
        )
        for name, path in paths.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_find_cycle_on_made_up_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no circle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]


def test_import_graph_finds_a_submodule_importing_its_package(tmp_path):
    # pkg/__init__ re-exports pkg.sub (edge pkg -> pkg.sub); pkg.sub imports a name from pkg's __init__
    # (edge pkg.sub -> pkg): the circle to forbid. pkg.other imports pkg.sub inside a function and under
    # TYPE_CHECKING only: no edge. pkg.rel uses relative imports.
    pkg = tmp_path / "pkg"
    (pkg / "inner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import f\n")
    (pkg / "sub.py").write_text("from pkg import CONSTANT\n\ndef f():\n    return CONSTANT\n")
    (pkg / "other.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.sub\n"
        "def g():\n    from pkg.sub import f\n    return f\n"
    )
    (pkg / "rel.py").write_text("from . import other\nfrom .inner import mod\n")
    (pkg / "inner" / "__init__.py").write_text("from ..other import g\n")
    (pkg / "inner" / "mod.py").write_text("import os\nimport pkg.inner\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {"pkg.sub"},
        "pkg.sub": {"pkg"},
        "pkg.other": set(),
        "pkg.rel": {"pkg.other", "pkg.inner.mod"},
        "pkg.inner": {"pkg.other"},
        "pkg.inner.mod": {"pkg.inner"},
    }
    assert find_cycle(graph) == ["pkg", "pkg.sub", "pkg"]
    (pkg / "sub.py").write_text("CONSTANT = 1\n\ndef f():\n    return CONSTANT\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


def test_no_import_circle_in_atrous():
    graph = import_graph(SRC, "atrous")
    assert "atrous.models.zoo" in graph and graph["atrous.models"], "the graph must see the real package"
    cycle = find_cycle(graph)
    assert cycle is None, (
        f"import circle: {' -> '.join(cycle)}; move the shared piece into a module both import, or import "
        "inside the function that needs it"
    )


# ----------------------------------------------------------------------------------------------------------
# sizes
# ----------------------------------------------------------------------------------------------------------
def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function or method, nested ones included, longer than `limit`
    lines from its `def` to its last line."""
    found: list[tuple[str, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    if lines > limit:
                        found.append((name, lines))
                walk(child, name + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(source), "")
    return found


def test_long_functions_on_made_up_source():
    def body(indent: int) -> str:  # 100 lines of statements
        return "\n".join(" " * indent + f"x{i} = {i}" for i in range(100))

    source = f"def short():\n    pass\n\nclass A:\n    def long(self):\n{body(8)}\n\n    def ok(self):\n        pass\n"
    assert long_functions(source, 100) == [("A.long", 101)]
    assert long_functions(source, 101) == []
    nested = f"def outer():\n    def inner():\n{body(8)}\n    return inner\n"
    assert long_functions(nested, 100) == [("outer", 103), ("outer.inner", 101)]


def _sources():
    for path in sorted((SRC / "atrous").rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), path.read_text()


def test_no_function_over_100_lines_in_src():
    over = [
        f"{rel}:{name} ({n} lines)"
        for rel, text in _sources()
        for name, n in long_functions(text, MAX_FUNCTION_LINES)
        if f"{rel}:{name}" not in FUNCTION_EXCEPTIONS
    ]
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (split them): {over}"


def test_no_module_over_600_lines_in_src():
    sizes = {rel: len(text.splitlines()) for rel, text in _sources()}
    assert len(sizes) > 50, "the walk must see the real package"
    over = [
        f"{rel} ({n} lines)"
        for rel, n in sizes.items()
        if n > MAX_MODULE_LINES and rel not in MODULE_EXCEPTIONS
    ]
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them): {over}"


def test_exceptions_still_needed():
    # An exception whose file shrank back under the limit is stale: remove it.
    texts = dict(_sources())
    for rel in MODULE_EXCEPTIONS:
        assert len(texts[rel].splitlines()) > MAX_MODULE_LINES, f"{rel} is within the limit now"
    for key in FUNCTION_EXCEPTIONS:
        rel, name = key.split(":")
        assert name in dict(long_functions(texts[rel], MAX_FUNCTION_LINES)), f"{key} is within the limit now"
