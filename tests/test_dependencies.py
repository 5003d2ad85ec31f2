"""The packages of cachetune depend on each other one way only: no import circles.

Every ``import`` of a cachetune module, at module level or inside a function (a lazy import
is still a dependency), is read from the source with ``ast`` and checked against the table
below. The ``cachetune`` package itself is the public facade (``hookimpl``, ``load_model``,
``__version__``): anyone may import from it, and it may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cachetune

PACKAGE = Path(cachetune.__file__).resolve().parent
STAGES = ("data", "generate", "train", "evaluate", "routing", "pipeline", "serving", "cli")

# unit -> the other units it may import. "core" is core/'s own modules (types, errors, text,
# jsonl, models, adapters, mining, hookspecs, plugin_manager), shared by every stage.
ALLOWED = {
    "core": set(),
    "core.data": {"core"},
    "core.generate": {"core", "core.data"},
    "core.evaluate": {"core", "core.data"},
    "core.train": {"core", "core.data", "core.evaluate"},
    "core.routing": {"core"},
    "registry": {"core"},
    "core.serving": {"core", "core.routing", "registry"},
    "core.pipeline": {"core", "core.data", "core.generate", "core.train", "core.evaluate", "registry",
                      "core.serving"},
    "core.cli": {"core", "core.data", "core.generate", "core.train", "core.evaluate", "core.routing", "registry",
                 "core.serving", "core.pipeline"},
    "domains": {"core", "core.data", "core.generate", "core.evaluate"},
    "plugins": {"core", "core.generate", "core.train"},
}


def unit_of(module: str) -> str:
    parts = module.split(".")
    if parts[:2] == ["cachetune", "core"]:
        return f"core.{parts[2]}" if len(parts) > 2 and parts[2] in STAGES else "core"
    return parts[1] if len(parts) > 1 else "cachetune"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path):
    """(imported cachetune module, line) for every import in ``path``."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [base]
        else:
            continue
        for name in names:
            if name == "cachetune" or name.startswith("cachetune."):
                yield name, node.lineno


def edges():
    """(from unit, to unit, where) for every import that crosses units."""
    for path in sorted(PACKAGE.rglob("*.py")):
        source = unit_of(module_name(path))
        for target, line in imports_of(path):
            if unit_of(target) != source:
                yield source, unit_of(target), f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"


def test_the_table_has_no_circle():
    done, visiting = set(), []

    def visit(unit):
        assert unit not in visiting, f"circle in ALLOWED: {' -> '.join(visiting + [unit])}"
        if unit in done:
            return
        visiting.append(unit)
        for other in ALLOWED[unit]:
            visit(other)
        visiting.pop()
        done.add(unit)

    for unit in ALLOWED:
        visit(unit)


def test_every_unit_is_in_the_table():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {"cachetune"}
    assert units <= set(ALLOWED), f"not in ALLOWED: {sorted(units - set(ALLOWED))}"


def test_no_import_against_the_table():
    wrong = [where for source, target, where in edges()
             if source != "cachetune" and target != "cachetune" and target not in ALLOWED[source]]
    assert not wrong, "imports against the dependency table (tests/test_dependencies.py):\n" + "\n".join(wrong)


def test_the_checker_sees_lazy_imports():
    module = PACKAGE / "registry" / "registry.py"
    found = dict(imports_of(module))
    assert "cachetune.registry.index_file" in found  # module level
    assert "cachetune.core.adapters" in found  # inside AdapterRegistry.export
