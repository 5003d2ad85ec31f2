"""ARCHITECTURE.md is the map of the code: every module and package it names exists and imports,
every package opens with a docstring, and no module grows past the size that wants a split."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
PACKAGE = ROOT / "cachetune"


def tree_block() -> list:
    """(indent, name) for each entry of the ``## Tree`` block, continuation lines skipped."""
    block = re.search(r"## Tree\n\n```\n(.*?)```", DOC, re.S).group(1)
    entries = []
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if match and (match.group(2).endswith("/") or match.group(2).endswith(".py")):
            entries.append((len(match.group(1)), match.group(2)))
    return entries


def named_paths() -> list:
    """Every path the tree names, resolved through its indentation, plus the modules named in
    the description column (``name.py`` or ``(a, b)`` lists) of the package they belong to."""
    paths, stack = [], []
    for indent, name in tree_block():
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([s[1].rstrip("/") for s in stack] + [name.rstrip("/")])
        paths.append(path)
        if name.endswith("/"):
            stack.append((indent, name))
    return [p for p in paths if p.startswith("cachetune")]


def described_modules() -> list:
    """``pkg/: a.py (..), b.py`` style mentions: module files named in a package's description."""
    found = []
    block = re.search(r"## Tree\n\n```\n(.*?)```", DOC, re.S).group(1)
    current = None
    stack = []
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if match and match.group(2).endswith("/"):
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2).rstrip("/")))
            current = "/".join(s[1] for s in stack)
        if current and current.startswith("cachetune/") and current != "cachetune/core":
            for mod in re.findall(r"\b([a-z_]+)\.py\b", line):
                found.append(f"{current}/{mod}.py")
    return sorted(set(found))


def module_name(path: str) -> str:
    path = path[:-3] if path.endswith(".py") else path
    return path.replace("/", ".").removesuffix(".__init__")


@pytest.mark.parametrize("path", named_paths() + described_modules())
def test_named_path_exists_and_imports(path):
    assert (ROOT / path).exists(), f"ARCHITECTURE.md names {path}, which does not exist"
    importlib.import_module(module_name(path))


def test_every_package_is_on_the_map_and_has_a_docstring():
    named = set(named_paths())
    for init in PACKAGE.rglob("__init__.py"):
        folder = init.parent.relative_to(ROOT).as_posix()
        if "fixtures" in folder:
            continue
        assert folder in named, f"package {folder} is missing from ARCHITECTURE.md's tree"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{folder} has no docstring"


def test_modules_stay_small_and_documented():
    for source in PACKAGE.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        lines = text.count("\n")
        assert lines <= 450, f"{source.relative_to(ROOT)} has {lines} lines: split it"
        if source.name not in ("__main__.py",):
            assert ast.get_docstring(ast.parse(text)), f"{source.relative_to(ROOT)} has no module docstring"
