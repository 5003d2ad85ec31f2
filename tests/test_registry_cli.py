"""`cachetune adapters ...` through the real entry point."""

from __future__ import annotations

import json

import pytest

from cachetune.registry import AdapterRegistry
from make_adapter import make_adapter


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("cli-adapters")
    return {
        "programming": make_adapter(tiny_model, root / "prog", "programming", seed=1),
        "medical": make_adapter(tiny_model, root / "med", "medical", seed=2),
    }


def test_adapters_add_list_show_remove_verify(run_cli, adapter_dirs, tmp_path):
    reg = ["--registry", tmp_path / "reg"]
    out = run_cli(["adapters", "list", *reg])
    assert out.exit_code == 0 and "no adapters" in out.stdout

    out = run_cli(["adapters", "add", adapter_dirs["programming"], *reg])
    assert out.exit_code == 0, out.stderr
    assert out.stdout.startswith("registered programming@1 (domain programming")
    assert run_cli(["adapters", "add", adapter_dirs["programming"], *reg]).exit_code == 0
    out = run_cli(["adapters", "add", adapter_dirs["medical"], "--name", "med", *reg])
    assert "registered med@1" in out.stdout

    out = run_cli(["adapters", "list", *reg])
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["adapter", "domain", "base"]
    assert [line.split()[0] for line in lines[2:]] == ["med@1", "programming@1", "programming@2"]
    out = run_cli(["adapters", "list", "--domain", "medical", "--json", *reg])
    assert [r["ref"] for r in json.loads(out.stdout)] == ["med@1"]

    AdapterRegistry(tmp_path / "reg").update_metrics("programming", {"adapter": {"pairs": {"calibrated_threshold": 0.75}}})
    out = run_cli(["adapters", "list", *reg])
    assert "0.7500" in out.stdout
    record = json.loads(run_cli(["adapters", "show", "programming", *reg]).stdout)
    assert record["ref"] == "programming@2" and record["calibrated_threshold"] == 0.75
    assert record["folder"].endswith("adapters/programming/2")
    assert json.loads(run_cli(["adapters", "show", "programming@1", *reg]).stdout)["version"] == 1

    out = run_cli(["adapters", "verify", *reg])
    assert out.exit_code == 0 and out.stdout.strip().startswith("ok: 3 adapter(s) intact")

    weights = tmp_path / "reg" / "adapters" / "med" / "1" / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    out = run_cli(["adapters", "verify", *reg])
    assert out.exit_code == 1
    assert "med@1: adapter_model.safetensors is corrupt" in out.stdout and str(weights) in out.stdout
    assert out.stderr.strip().splitlines() == [f"Error: {tmp_path / 'reg' / 'adapters'}: 1 problem(s) in 3 adapter(s)"]

    out = run_cli(["adapters", "remove", "programming", *reg])
    assert out.stdout.splitlines() == ["removed programming@1", "removed programming@2"]
    out = run_cli(["adapters", "show", "programming", *reg])
    assert out.exit_code == 1 and "no adapter named 'programming'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_adapters_add_bad_folder_is_one_line(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    out = run_cli(["adapters", "add", tmp_path / "empty", "--registry", tmp_path / "reg"])
    assert out.exit_code == 1
    assert out.stderr.strip() == f"Error: {tmp_path / 'empty'}: not a LoRA adapter folder (no adapter_config.json)"
    assert not (tmp_path / "reg").exists()


def test_adapters_export_merged_and_files(run_cli, adapter_dirs, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("CACHETUNE_HOME", str(tmp_path / "home"))  # the default registry location
    assert run_cli(["adapters", "add", adapter_dirs["programming"]]).exit_code == 0
    out = run_cli(["adapters", "export", "programming", "--merged", "--output", tmp_path / "merged"])
    assert out.exit_code == 0, out.stderr
    assert out.stdout.strip() == f"exported programming@1 (merged SentenceTransformer) -> {tmp_path / 'merged'}"
    model = SentenceTransformer(str(tmp_path / "merged"), device="cpu")
    assert model.encode(["hello"]).shape == (1, 32)

    out = run_cli(["adapters", "export", "programming@1", "--output", tmp_path / "files"])
    assert (tmp_path / "files" / "adapter_model.safetensors").is_file()
    out = run_cli(["adapters", "export", "programming", "--output", tmp_path / "files"])
    assert out.exit_code == 1 and "output folder exists and is not empty (--output)" in out.stderr
