"""The wheel, installed into a fresh venv with no checkout beside it, evaluates on its packaged pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _dependencies_dir(tmp_path: Path) -> Path:
    """This environment's installed packages, without cachetune itself (linked, not copied)."""
    site = Path(sysconfig.get_paths()["purelib"])
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in site.iterdir():
        if entry.name.lower().startswith(("cachetune", "__editable__")) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    return deps


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_evaluates_on_packaged_pairs(tmp_path):
    # No checkout on any path: a PYTHONPATH pointing at one would also make pip think it is installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CACHETUNE_HOME", "CACHETUNE_DATA_DIR")}
    env.update(HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, cwd=tmp_path, env=env)
    wheel = next((tmp_path / "dist").glob("cachetune-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, cwd=tmp_path, env=env)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, env=env).stdout.strip())
    (site / "dependencies.pth").write_text(str(_dependencies_dir(tmp_path)) + "\n", encoding="utf-8")
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    where = subprocess.run([str(python), "-c", "import cachetune; print(cachetune.__file__)"], cwd=run_dir,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where  # the installed wheel, not a checkout
    for domain, pairs, positives in (("medical", 301, 129), ("programming", 388, 194)):
        out = run_dir / domain
        result = subprocess.run([str(venv / "bin" / "cachetune"), "evaluate", "--domain", domain, "--output",
                                 str(out), "--no-plots", "--bootstrap", "0"], cwd=run_dir, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "skipped evaluation set" not in result.stderr
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        (name, entry), = metrics["sets"].items()
        pairs_metrics = entry["base"]["pairs"]
        assert (pairs_metrics["n"], pairs_metrics["positives"]) == (pairs, positives), pairs_metrics.keys()
        assert 0.5 < pairs_metrics["ap"] <= 1.0
