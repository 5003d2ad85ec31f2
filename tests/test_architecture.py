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


# -- the prose of ARCHITECTURE.md and the README's plugin sections ----------------------------------

PROSE = DOC.split("## How a run flows", 1)[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PLUGIN_DOCS = README[README.index("## Writing a domain plugin"):]  # and the hook reference after it


def prose_paths() -> list:
    """``core/...``, ``registry/...`` paths named in ARCHITECTURE.md below the tree (the flow of a
    run, who imports whom, where a plugin plugs in), relative to the package."""
    found = re.findall(r"(?<![\w/])(?:core|registry|domains|plugins)(?:/\w+)*(?:/\w+\.py|/\w+)", PROSE)
    return sorted(set(found))


@pytest.mark.parametrize("path", prose_paths())
def test_paths_in_the_architecture_prose_exist_and_import(path):
    assert (PACKAGE / path).exists(), f"ARCHITECTURE.md names {path}, which is not cachetune/{path}"
    importlib.import_module(module_name(f"cachetune/{path}"))


def test_files_named_beside_the_package_exist():
    for path in re.findall(r"(?<![\w/])(?:tests|tools|bench)/[\w./-]+\w", DOC + PLUGIN_DOCS):
        assert (ROOT / path).exists(), f"the docs name {path}, which does not exist"


def test_readme_plugin_sections_name_real_modules_and_types():
    import cachetune

    paths = re.findall(r"`(cachetune/[\w/]+\.py)`", PLUGIN_DOCS)
    names = set(re.findall(r"\bcachetune\.([A-Z]\w+)", PLUGIN_DOCS))
    assert paths and names
    for path in paths:
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"
        importlib.import_module(module_name(path))
    for name in sorted(names):
        assert hasattr(cachetune, name), f"README names cachetune.{name}, which cachetune does not export"
    for protocol, path in re.findall(r"the `(\w+)` protocol in\s+`(cachetune/[\w/]+\.py)`", PLUGIN_DOCS):
        assert hasattr(importlib.import_module(module_name(path)), protocol), f"{path} has no {protocol}"


def test_readme_lists_every_domain_field():
    """``register_domains``' paragraph lists what a Domain has: each of its fields, and nothing else."""
    import dataclasses

    from cachetune import Domain

    paragraph = PLUGIN_DOCS.split("### `register_domains(register)`", 1)[1].split("###", 1)[0]
    listed = re.search(r"A domain has (.*?)\. Called", paragraph, re.S).group(1)
    documented = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", listed)))
    assert documented == {f.name for f in dataclasses.fields(Domain)}
