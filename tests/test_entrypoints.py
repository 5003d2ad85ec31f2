"""Plugin discovery through the ``cachetune`` entry-point group.

Tier 2: a fake dist-info on sys.path. Tier 3: the real fixture package installed with
``pip install -e tests/fixtures/cachetune-cooking`` (``make test`` installs it).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cachetune.core.plugin_manager import get_plugin_manager

FIXTURE = Path(__file__).parent / "fixtures" / "cachetune-cooking"

PLUGIN_SOURCE = '''
from cachetune import Domain, PromptTemplates, hookimpl

@hookimpl
def register_domains(register):
    register(Domain(name="gardening", description="Gardening questions", default_source="{src}",
                    prompts=PromptTemplates("s", "p {{n}} {{query}}", "n {{n}} {{query}}")))
'''


def make_dist(root: Path, dist: str, version: str, entry_points: dict, modules: dict) -> None:
    """Write ``dist-version.dist-info`` plus modules into ``root`` (a sys.path entry)."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
    lines = ["[cachetune]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    for name in ("ct_gardening", "ct_broken", "ct_typo"):
        sys.modules.pop(name, None)


def test_fake_dist_info_plugin_is_discovered(fake_site, tmp_path, run_cli):
    src = tmp_path / "garden.txt"
    src.write_text("when should I prune tomato plants\nhow deep do I plant garlic bulbs\n", encoding="utf-8")
    make_dist(fake_site, "ct-gardening", "2.3.1", {"gardening": "ct_gardening"},
              {"ct_gardening": PLUGIN_SOURCE.format(src=src)})
    pm = get_plugin_manager()
    assert "gardening" in pm.domains()
    info = pm.domain_plugin("gardening")
    assert (info.package, info.version, info.builtin) == ("ct-gardening", "2.3.1", False)

    result = run_cli(["domains", "--json"], pm=pm)
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["gardening"]["package"] == "ct-gardening" and rows["gardening"]["version"] == "2.3.1"

    out = tmp_path / "out"
    result = run_cli(["prepare", "--domain", "gardening", "--holdout", "0", "--output", out], pm=pm)
    assert result.exit_code == 0, result.stderr
    assert len((out / "train.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_broken_plugin_is_one_line_and_cli_keeps_working(fake_site, run_cli):
    make_dist(fake_site, "ct-broken", "0.1", {"broken": "ct_broken"}, {"ct_broken": "raise ImportError('no numpyy')\n"})
    pm = get_plugin_manager()
    assert any("plugin 'broken'" in e and "no numpyy" in e for e in pm.load_errors)
    result = run_cli(["domains"], pm=pm)
    assert result.exit_code == 0
    assert "programming" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "broken" in line]
    assert len(warnings) == 1 and "Traceback" not in result.stderr


def test_misspelled_hook_is_rejected_by_check_pending(fake_site):
    source = "from cachetune import hookimpl\n\n@hookimpl\ndef register_domain(register):\n    pass\n"
    make_dist(fake_site, "ct-typo", "0.1", {"typo": "ct_typo"}, {"ct_typo": source})
    pm = get_plugin_manager()
    assert pm.get_plugin("typo") is None
    assert any("typo" in e and "register_domain" in e for e in pm.load_errors)


def test_disable_env_blocks_entry_point_plugin(fake_site, tmp_path, monkeypatch):
    make_dist(fake_site, "ct-gardening", "2.3.1", {"gardening": "ct_gardening"},
              {"ct_gardening": PLUGIN_SOURCE.format(src=tmp_path / "x.txt")})
    monkeypatch.setenv("CACHETUNE_DISABLE_PLUGINS", "gardening")
    assert "gardening" not in get_plugin_manager().domains()


def _cooking_installed() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("cachetune-cooking")
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def cooking_package():
    """The real fixture package, installed editable (``make test`` does this before pytest)."""
    if not _cooking_installed():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "-e", str(FIXTURE)], check=True)
        importlib.invalidate_caches()
    return FIXTURE


def test_installed_fixture_package(cooking_package, tmp_path):
    """Through the real console script, in a fresh process: listed, and prepare works."""
    exe = Path(sys.executable).with_name("cachetune")
    out = subprocess.run([str(exe), "domains", "--json"], capture_output=True, text=True, check=True)
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["cooking"]["package"] == "cachetune-cooking"
    assert rows["cooking"]["version"] == "0.1.0"

    plugins = subprocess.run([str(exe), "plugins", "--json"], capture_output=True, text=True, check=True)
    cooking = [p for p in json.loads(plugins.stdout)["plugins"] if p["name"] == "cooking"][0]
    assert "register_domains" in cooking["hooks"] and not cooking["builtin"]

    done = subprocess.run([str(exe), "prepare", "--domain", "cooking", "--output", str(tmp_path / "c")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "c" / "prepare.json").read_text(encoding="utf-8"))
    assert stats["domain"] == "cooking" and stats["counts"]["kept"] >= 30
