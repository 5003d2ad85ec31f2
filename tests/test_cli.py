"""The CLI contract: version, domains, plugins, one-line errors, no torch for --help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cachetune import __version__


@pytest.mark.parametrize("args", [["--help"], ["domains"], ["domains", "--json"], ["plugins"], ["prepare", "--help"]])
def test_light_commands_do_not_import_torch(args):
    code = (
        "import sys\n"
        "from cachetune.core.cli import main\n"
        f"rc = main({args!r})\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'peft', 'llama_cpp', 'datasets')"
        " if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY=\n" in out.stdout


def test_version(run_cli):
    result = run_cli(["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout


def test_domains_table_and_json(run_cli):
    table = run_cli(["domains"])
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["name", "package", "description"]
    assert any(line.startswith("programming") and f"cachetune {__version__}" in line for line in lines)
    rows = json.loads(run_cli(["domains", "--json"]).stdout)
    by_name = {r["name"]: r for r in rows}
    assert {"programming", "medical"} <= set(by_name)
    assert by_name["medical"]["default_base_model"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_plugins_lists_hooks(run_cli):
    result = run_cli(["plugins", "--json"])
    data = json.loads(result.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert "register_domains" in by_name["programming"]["hooks"]
    assert "register_generators" in by_name["llama-cpp"]["hooks"]


def test_unknown_domain_is_one_line(run_cli, tmp_path):
    result = run_cli(["prepare", "--domain", "nope", "--output", tmp_path / "o"])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown domain 'nope'" in lines[0] and "programming" in lines[0]
    assert not (tmp_path / "o").exists()


def test_unexpected_error_is_one_line_unless_debug(run_cli, tmp_path, monkeypatch):
    import cachetune.core.data.prepare as prepare_module

    def explode(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(prepare_module, "prepare", explode)
    result = run_cli(["prepare", "--domain", "programming", "--output", tmp_path / "o"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["Error: RuntimeError: kaboom (rerun with --debug for the traceback)"]
    with pytest.raises(RuntimeError):
        run_cli(["--debug", "prepare", "--domain", "programming", "--output", tmp_path / "o"])
