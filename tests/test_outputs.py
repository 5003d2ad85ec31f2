"""Outputs: `prepare` and `embed` refuse to replace results without --overwrite; no command but
the registry's own writes inside a registry (it stays verifiable); outputs are checked first."""

from __future__ import annotations

import pytest

from cachetune.core.outputs import check_output, registry_containing
from make_adapter import make_adapter


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model):
    """A registry holding programming@1 (a real adapter on the tiny BERT)."""
    from cachetune.registry import AdapterRegistry

    root = tmp_path_factory.mktemp("outputs")
    reg = AdapterRegistry(root / "reg")
    reg.add(make_adapter(tiny_model, root / "prog", "programming", seed=1))
    return reg


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def error_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1, result.stderr
    return lines[0]


def test_prepare_refuses_to_replace_its_outputs_without_overwrite(run_cli, tmp_path):
    src = tmp_path / "q.txt"
    src.write_text("sort a list in python\nread a file line by line\nmerge two dicts\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["prepare", "--domain", "programming", "--source", src, "--holdout", "0", "--output", out]
    assert run_cli(args).exit_code == 0
    first = snapshot(out)
    src.write_text("reverse a string\nparse a date string\n", encoding="utf-8")
    line = error_line(run_cli(args))
    assert f"{out}: already holds train.jsonl (pass --overwrite to replace it) (--output)" in line
    assert snapshot(out) == first
    assert run_cli([*args, "--overwrite"]).exit_code == 0
    assert "reverse a string" in (out / "train.jsonl").read_text(encoding="utf-8")


def test_embed_refuses_to_replace_a_file_without_overwrite(run_cli, tmp_path, registry):
    out = tmp_path / "vectors.json"
    out.write_text("keep me", encoding="utf-8")
    args = ["embed", "--adapter", "programming", "--registry", registry.root, "--output", out, "sort a list"]
    line = error_line(run_cli(args))
    assert f"{out}: exists (pass --overwrite to replace it) (--output)" in line
    assert out.read_text(encoding="utf-8") == "keep me"
    assert run_cli([*args, "--overwrite"]).exit_code == 0
    assert '"embeddings"' in out.read_text(encoding="utf-8")


def test_nothing_but_the_registry_writes_inside_it(run_cli, tmp_path, registry):
    adapters = registry.folder
    version = registry.path_of(registry.get("programming@1"))
    before = snapshot(registry.root)
    commands = [
        (["embed", "--adapter", "programming", "--registry", registry.root, "--output", adapters / "index.json",
          "--overwrite", "a query"], adapters / "index.json"),
        (["prepare", "--domain", "programming", "--output", version, "--overwrite"], version),
        (["generate", "--domain", "programming", "--input", tmp_path / "in.jsonl", "--output",
          adapters / "t.jsonl"], adapters / "t.jsonl"),
        (["adapters", "export", "programming", "--registry", registry.root, "--output", adapters / "copy"],
         adapters / "copy"),
        (["run", "--domain", "programming", "--workdir", adapters / "work", "--stop-after", "prepare"],
         adapters / "work"),
        (["adapters", "average", "programming@1", "programming@1", "--registry", registry.root, "--output",
          adapters / "mean"], adapters / "mean"),
    ]
    (tmp_path / "in.jsonl").write_text('{"id": "q1", "query": "sort a list", "domain": "programming"}\n')
    for args, target in commands:
        line = error_line(run_cli(args))
        assert f"{target}: is inside the adapter registry {registry.root}" in line, args
    assert snapshot(registry.root) == before
    assert run_cli(["adapters", "verify", "--registry", registry.root]).exit_code == 0


def test_a_link_into_the_registry_is_inside_it(tmp_path, registry):
    link = tmp_path / "innocent"
    link.symlink_to(registry.path_of(registry.get("programming@1")))
    assert registry_containing(link / "adapter_model.safetensors") == registry.folder
    assert registry_containing(tmp_path / "elsewhere") is None


def test_check_output_probes_without_leaving_anything(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.json"
    assert check_output(target, "--output") == target
    assert list(tmp_path.iterdir()) == []  # nothing created, not even the folders
