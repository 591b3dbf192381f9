"""The house rules, checked: layers point down, no import cycles, modules a reader can hold.

Every ``import`` in ``src/cryoxr`` counts, at module level or inside a function (only
``if TYPE_CHECKING:`` blocks, which never run, are left out).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cryoxr"
MAX_LINES = 650

#: module-name prefix -> layer; the longest matching prefix wins. Lower layers never
#: import higher ones.
LAYERS = {
    "cryoxr.errors": 0,
    "cryoxr._writers": 1,
    "cryoxr._shared_output": 1,
    "cryoxr.image": 1,
    "cryoxr.poseset": 1,
    "cryoxr.projection_model": 1,
    "cryoxr.per_tilt": 1,
    "cryoxr.projection": 2,
    "cryoxr.field_of_view": 2,
    "cryoxr.extraction": 2,
    "cryoxr.geometry": 2,
    "cryoxr.defocus": 2,
    "cryoxr.subtomograms": 2,
    "cryoxr.average": 2,
    "cryoxr.resolution": 2,
    "cryoxr.ctf": 2,
    "cryoxr.subtilts": 2,
    "cryoxr.subtilt_graph": 2,
    "cryoxr.symmetry": 2,
    "cryoxr.backprojection": 2,
    "cryoxr.reconstruction": 2,
    "cryoxr.io": 3,
    "cryoxr.plot": 4,
    "cryoxr.napari": 4,
    "cryoxr.accessors": 4,
    "cryoxr.progress": 4,
    "cryoxr.testing": 4,
    "cryoxr.demo": 4,
    "cryoxr.cli": 4,
    "cryoxr.cli_particles": 4,
    "cryoxr.__main__": 4,
    "cryoxr": 4,  # the package's __init__: the public API
}
LAYER_NAMES = ["errors", "core types", "geometry", "io", "user side"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    # "cryoxr" itself is the package's __init__; it is no prefix for modules left out of the table
    matches = [
        prefix
        for prefix in LAYERS
        if module == prefix or (prefix != "cryoxr" and module.startswith(prefix + "."))
    ]
    if not matches:
        raise AssertionError(f"{module}: not in LAYERS; add it to the table in tests/test_architecture.py")
    return LAYERS[max(matches, key=len)]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imports_of(module: str) -> set[str]:
    """The cryoxr modules ``module`` imports (a name imported from a package that is one
    of its submodules counts as that submodule)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "cryoxr")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "cryoxr":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    found.discard(module)
    return {m for m in found if m in MODULES}


GRAPH = {module: imports_of(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    upward = sorted(m for m in GRAPH[module] if layer(m) > layer(module))
    assert not upward, (
        f"{module} ({LAYER_NAMES[layer(module)]}) imports {upward} from a layer above it "
        f"({', '.join(LAYER_NAMES[layer(m)] for m in upward)})"
    )


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components: any component of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_short_enough_to_hold(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]}: {lines} lines (> {MAX_LINES}); split it by job"


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    # the check itself must catch what the house rule forbids: an upward import in a function
    tree = ast.parse("def f():\n    from cryoxr.io.mrc import write_mrc\n")
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names == {"cryoxr.io.mrc"}
    assert layer("cryoxr.io.mrc.write") > layer("cryoxr.image")


def test_tests_never_import_conftest() -> None:
    offenders = [
        p.name
        for p in sorted(Path(__file__).parent.glob("test_*.py"))
        if any(
            isinstance(n, ast.ImportFrom) and n.module == "conftest"
            for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        )
    ]
    assert not offenders, f"import helpers from cryoxr.testing, fixtures via conftest: {offenders}"


def test_architecture_map_names_modules_that_exist() -> None:
    import re

    text = (SRC.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:io/)?[a-z_]+(?:/[a-z_]+)*(?:\.py|/))`", text))
    assert len(named) > 20
    root = SRC.parent
    names_in_package = {p.name for p in PACKAGE.rglob("*.py")}

    def exists(name: str) -> bool:  # a path from src/cryoxr or the repo, or a file of a named package
        return (
            (PACKAGE / name).exists()
            or (root / name).exists()
            or (SRC / name).exists()
            or name in names_in_package
        )

    missing = sorted(n for n in named if not exists(n))
    assert not missing, f"ARCHITECTURE.md names modules that do not exist: {missing}"
