"""The package's layers: each imports only from its own layer and the ones below it, and no
module imports itself through others (no import circle), lazy imports inside functions
included.

    base   cryoalign.errors, config, types, transform, timing, executor, flags
    io     cryoalign.io.*     files: maps, models, output folders, EMDB, pictures, reports
    core   cryoalign.core.*   the alignment
    apps   cryoalign.apps.*   fit, compare, variance, batch, catalogue and search, rmsd, simulate
    cli    cryoalign.cli.*    the command line

The package root (`cryoalign/__init__.py`) is the public API: it names functions of every
layer (imported on first use); any module may import `__version__` from it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "cryoalign"
LAYERS = ["base", "io", "core", "apps", "cli"]
BASE = {"errors", "config", "types", "transform", "timing", "executor", "flags"}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str | None:
    """The layer of a cryoalign module; None for the package root and __main__."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return None
    return "base" if parts[1] in BASE else parts[1]


def imports(module: str) -> set[str]:
    """The cryoalign modules `module` imports, anywhere in its body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "cryoalign")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "cryoalign":
                continue
            for alias in node.names:  # `from . import pictures` imports a module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(module)
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_import_names_a_module_that_exists(module):
    """A relative import that climbs one level too few or too many (`from ..io` inside a
    sub-package's package) names no module; it fails only when its function runs."""
    assert sorted(imports(module) - set(MODULES)) == []


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if m not in ("cryoalign", "cryoalign.__main__") and layer(m) not in LAYERS]
    assert unplaced == []


@pytest.mark.parametrize("module", [m for m in MODULES if layer(m) is not None])
def test_a_module_imports_nothing_from_the_layers_above_it(module):
    own = LAYERS.index(layer(module))
    above = sorted(dep for dep in imports(module) if layer(dep) is not None and LAYERS.index(layer(dep)) > own)
    assert above == [], f"{module} ({layer(module)}) imports from a layer above it: {above}"


def test_only_the_version_is_taken_from_the_package_root():
    for module in MODULES:
        if module == "cryoalign" or "cryoalign" not in imports(module):
            continue
        tree = ast.parse(MODULES[module].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and not node.module:
                names = {a.name for a in node.names}
                resolved = [n for n in names if f"{module.rsplit('.', 1)[0]}.{n}" not in MODULES]
                assert set(resolved) <= {"__version__"} or module.count(".") > 1, (module, names)


def test_no_import_circle():
    graph = {m: imports(m) - {"cryoalign"} for m in MODULES if m != "cryoalign"}
    # a package's __init__ re-exporting its modules is not a dependency of those modules
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == "open":
                circles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    # re-exports: `cryoalign.io` imports io.maps, which imports io.files, ... (never back)
    assert circles == []


def test_the_known_circle_is_gone():
    """comparison -> outputs -> pictures -> comparison (issue 21)."""
    assert "cryoalign.apps.comparison" not in imports("cryoalign.io.pictures")
    assert not any(m.startswith("cryoalign.apps") for m in imports("cryoalign.io.outputs"))
    assert not any(m.startswith("cryoalign.cli") for m in imports("cryoalign.io.report"))
