"""The layers of docs/design.md hold: no module of hforge imports a higher layer or a sibling of its own layer.

Every ``import`` and ``from ... import`` of every module under ``hforge/`` is read with ``ast``, those
inside functions and ``if TYPE_CHECKING:`` blocks included (a deferred import is still a dependency).
``from hforge.pkg import name`` depends on ``hforge.pkg.name`` when that is a module, and on the module a
lazy package attribute resolves to (the ``_LAZY`` maps of ``hforge`` and ``hforge.train``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hforge"

#: Low to high; a module may import its own unit and the units of lower layers, never a unit of its own
#: layer or of a higher one. Keep in step with docs/design.md ("Layers").
LAYERS: tuple[tuple[str, ...], ...] = (
    ("hforge.errors", "hforge._compat", "hforge._lazy", "hforge._numba"),
    ("hforge.files",),
    ("hforge",),  # the package root: version, errors, lazy re-exports
    ("hforge.basis",),
    ("hforge.io", "hforge.structures"),
    ("hforge.graph",),
    ("hforge.ops",),
    ("hforge.metrics", "hforge.datasets"),
    ("hforge.models", "hforge.analysis"),
    ("hforge.train", "hforge.infer"),
    ("hforge.cli",),
)
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def lazy_map(package: str) -> dict[str, str]:
    """The ``_LAZY = {name: module}`` literal of a package's ``__init__``, if any."""
    init = PACKAGE.parent.joinpath(*package.split("."), "__init__.py")
    if not init.is_file():
        return {}
    for node in ast.walk(ast.parse(init.read_text())):
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "_LAZY":
            return ast.literal_eval(node.value)
    return {}


def unit_of(module: str) -> str:
    """The unit (an entry of :data:`LAYERS`) a module belongs to: the longest one that is it or a parent of it."""
    candidates = [u for u in LAYER_OF if module == u or (u != "hforge" and module.startswith(u + "."))]
    if not candidates:
        raise KeyError(module)
    return max(candidates, key=len)


def imported_modules(module: str, source: str, *, package: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` of every hforge module that ``source`` (the text of ``module``, an
    ``__init__`` when ``package``) imports, wherever the import stands."""
    parent = module if package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = parent.split(".")
                origin = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if not (origin == "hforge" or origin.startswith("hforge.")):
                continue
            lazy = lazy_map(origin)
            for alias in node.names:
                name = f"{origin}.{alias.name}"
                found.append((node.lineno, name if is_module(name) else lazy.get(alias.name, origin)))
    return [(line, m) for line, m in dict.fromkeys(found) if m == "hforge" or m.startswith("hforge.")]


def wrong_imports(module: str, source: str, *, package: bool = False) -> list[str]:
    """The imports of ``source`` that go to a sibling of its layer or up."""
    here = unit_of(module)
    wrong = []
    for line, target in imported_modules(module, source, package=package):
        there = unit_of(target)
        if there != here and LAYER_OF[there] >= LAYER_OF[here]:
            kind = "a sibling" if LAYER_OF[there] == LAYER_OF[here] else "a higher layer"
            wrong.append(f"{module}:{line} imports {target} ({kind}: {there})")
    return wrong


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert MODULES
    unplaced = [module_name(p) for p in MODULES if not _placed(module_name(p))]
    assert not unplaced, f"add these to LAYERS (and docs/design.md): {unplaced}"


def _placed(module: str) -> bool:
    try:
        unit_of(module)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_go_down_the_layers(path):
    wrong = wrong_imports(module_name(path), path.read_text(), package=path.name == "__init__.py")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("statement", "target", "allowed"),
    [
        ("from hforge.io import HSData", "hforge.io", True),
        ("from ... import errors", "hforge.errors", True),
        ("from hforge import __version__", "hforge", True),
        ("from hforge.metrics import GammaLayout", "hforge.metrics", False),  # metrics is above ops
        ("import hforge.cli.main", "hforge.cli.main", False),
        ("from hforge import load", "hforge.infer", False),  # the root's lazy name resolves to hforge.infer
        ("from hforge.train import Trainer", "hforge.train.trainer", False),
    ],
)
def test_the_check_sees_imports_inside_functions(statement, target, allowed):
    """The checker itself, on a function-level import in ``hforge.ops.assemble.layout``."""
    source = f"def f():\n    {statement}\n"
    assert imported_modules("hforge.ops.assemble.layout", source) == [(2, target)]
    assert (not wrong_imports("hforge.ops.assemble.layout", source)) is allowed


def test_siblings_of_a_layer_are_independent():
    assert wrong_imports("hforge.train.trainer", "from hforge.infer import Predictor\n") == [
        "hforge.train.trainer:1 imports hforge.infer (a sibling: hforge.infer)"
    ]
