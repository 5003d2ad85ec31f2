"""The README documents every hook with its exact signature, and its plugin example runs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from cachetune.core import hookspecs

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def documented_hooks() -> dict:
    return {m.group(1): m.group(2) for m in re.finditer(r"^### `(register_\w+)\(([^)]*)\)`$", README, re.M)}


def test_every_hook_documented_with_exact_signature():
    specs = {name: getattr(hookspecs, name) for name in dir(hookspecs) if name.startswith("register_")}
    documented = documented_hooks()
    assert set(documented) == set(specs)
    for name, fn in specs.items():
        params = ", ".join(inspect.signature(fn).parameters)
        assert documented[name] == params, name


def test_readme_plugin_example_registers_a_domain(tmp_path):
    block = re.search(r"`cachetune_cooking/__init__.py`:\n\n```python\n(.*?)```", README, re.S).group(1)
    module_file = tmp_path / "readme_cooking.py"
    module_file.write_text(block, encoding="utf-8")
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_cooking", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    from cachetune.core.plugin_manager import get_plugin_manager, register_module

    pm = get_plugin_manager(load_entrypoints=False)
    register_module(pm, module, "readme-cooking")
    domain = pm.get_domain("cooking")
    rows = domain.evaluation_sets[0].load(None)
    assert {r["label"] for r in rows} == {0, 1}
