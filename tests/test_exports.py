"""`cachetune adapters export --for TOOL`: the folder layout each tool loads and the config snippet.

Hit-or-miss checks against the real caches are in test_cache_drop_in.py; here a real LoRA on the
tiny BERT checks the files, the unit conversion written into each snippet, and the errors.
"""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import pytest
import yaml

from cachetune.registry import AdapterRegistry
from make_adapter import make_adapter

TOOLS = ["redisvl", "langchain", "litellm", "gptcache", "semantic-router", "sentence-transformers"]
# The adapter's stored cosine threshold 0.8, converted by hand into each tool's setting.
EXPECTED_SETTING = {
    "redisvl": "distance_threshold=0.2,",            # Redis COSINE distance: 1 - 0.8
    "langchain": "distance_threshold=0.2,",
    "litellm": "similarity_threshold=0.8,",         # LiteLLM: the cosine
    "gptcache": "Config(similarity_threshold=0.9)",  # (1 + 0.8) / 2
    "semantic-router": "similarity_threshold: 0.8",
    "sentence-transformers": "THRESHOLD = 0.8",
}
TEXTS = ["how do I sort a list of dicts by a key", "convert a string to a datetime object"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("exports")
    reg = AdapterRegistry(root / "reg")
    reg.add(make_adapter(tiny_model, root / "prog", "programming", seed=3))
    reg.update_metrics("programming", {"adapter": {"pairs": {"calibrated_threshold": 0.8}}})
    reg.add(make_adapter(tiny_model, root / "med", "medical", seed=4))  # never evaluated: no threshold
    return reg


@pytest.fixture(scope="module")
def exports(registry, tmp_path_factory):
    """One export per tool, through the CLI; {tool: (folder, stdout)}."""
    from cachetune.core.cli import main

    out = tmp_path_factory.mktemp("out")
    done = {}
    for tool in TOOLS:
        folder = out / tool
        code = main(["adapters", "export", "programming", "--for", tool, "--output", str(folder),
                     "--registry", str(registry.root)])
        assert code == 0
        done[tool] = folder
    return done


@pytest.mark.parametrize("tool", TOOLS)
def test_layout_is_a_classic_sentence_transformers_folder_with_plain_bert_weights(exports, tool, tiny_model):
    from pathlib import Path

    from safetensors import safe_open

    folder = exports[tool]
    for name in ["config.json", "model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json",
                 "1_Pooling/config.json"]:
        assert (folder / name).is_file(), name
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.models.Transformer",
                                            "sentence_transformers.models.Pooling",
                                            "sentence_transformers.models.Normalize"]
    assert modules[0]["path"] == ""  # the BERT checkpoint is the folder's root, no 0_Transformer/
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["word_embedding_dimension"] == 32
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    with safe_open(str(folder / "model.safetensors"), "pt") as exported, \
            safe_open(str(Path(tiny_model) / "model.safetensors"), "pt") as base:
        assert set(exported.keys()) == set(base.keys())  # no peft prefixes, no lora_A/lora_B
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"


def test_exported_folder_encodes_like_the_merged_adapter(exports, registry):
    from sentence_transformers import SentenceTransformer

    from cachetune import load_model

    served = load_model(adapter="programming", registry=registry, merged=True, device="cpu")
    expected = served.encode(TEXTS, normalize_embeddings=True)
    for tool in ("redisvl", "semantic-router"):
        got = SentenceTransformer(str(exports[tool]), device="cpu").encode(TEXTS, normalize_embeddings=True)
        assert float(np.abs(got - expected).max()) < 1e-5


@pytest.mark.parametrize("tool", TOOLS)
def test_config_has_the_threshold_in_the_tools_units(exports, tool, capsys):
    folder = exports[tool]
    config_file = folder / ("cache-config.yaml" if tool == "semantic-router" else "cache-config.py")
    config = config_file.read_text()
    assert EXPECTED_SETTING[tool] in config
    assert str(folder.resolve()) in config
    if tool == "semantic-router":
        parsed = yaml.safe_load(config)
        assert parsed["semantic_cache"]["similarity_threshold"] == 0.8
        assert parsed["bert_model"]["model_id"] == str(folder.resolve())
    else:
        ast.parse(config)


def test_config_is_printed(registry, tmp_path, run_cli):
    res = run_cli(["adapters", "export", "programming@1", "--for", "gptcache", "--output", tmp_path / "g",
                   "--registry", registry.root])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith(f"exported programming@1 for gptcache -> {tmp_path / 'g'}")
    assert (tmp_path / "g" / "cache-config.py").read_text() in res.stdout


@pytest.mark.parametrize("tool", ["redisvl", "gptcache", "semantic-router"])
def test_without_a_stored_threshold_the_config_says_so_and_has_no_number(registry, tmp_path, run_cli, tool):
    res = run_cli(["adapters", "export", "medical", "--for", tool, "--output", tmp_path / tool,
                   "--registry", registry.root])
    assert res.exit_code == 0, res.stderr
    assert "medical@1 has no stored threshold" in res.stdout
    setting = re.search(r"(distance_threshold=|similarity_threshold[=:] ?)(\S+)", res.stdout).group(2)
    assert setting.rstrip(",)") in ("None", "null")


def test_errors_are_one_line_and_keep_what_exists(registry, tmp_path, run_cli):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    res = run_cli(["adapters", "export", "programming", "--for", "redisvl", "--output", taken,
                   "--registry", registry.root])
    assert res.exit_code == 1
    assert res.stderr.strip() == f"Error: {taken}: output folder exists and is not empty (--output)"
    assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"]

    res = run_cli(["adapters", "export", "nosuch", "--for", "redisvl", "--output", tmp_path / "x",
                   "--registry", registry.root])
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1 and "nosuch" in res.stderr
    assert not (tmp_path / "x").exists()

    res = run_cli(["adapters", "export", "programming", "--for", "milvus", "--output", tmp_path / "y",
                   "--registry", registry.root])
    assert res.exit_code == 2 and "'milvus' is not one of" in res.stderr
