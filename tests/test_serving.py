"""Serving adapters: load by domain, merged vs unmerged, merged export, many adapters on one base."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cachetune.core.errors import CachetuneError
from cachetune.registry import AdapterRegistry
from make_adapter import make_adapter

TEXTS = [
    "how do I sort a list of dicts by a key",
    "convert a string to a datetime object",
    "what are the symptoms of type 2 diabetes",
    "read a csv file into a pandas dataframe",
]


def encode(model, texts=TEXTS):
    return model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model):
    """A registry holding real LoRA adapters on the tiny BERT (programming, medical)."""
    root = tmp_path_factory.mktemp("serving")
    reg = AdapterRegistry(root / "reg")
    # Different target modules and ranks: switching must swap whole adapters, not just weights.
    reg.add(make_adapter(tiny_model, root / "prog", "programming", seed=1))
    reg.add(make_adapter(tiny_model, root / "med", "medical", seed=2, r=4, target_modules=("query", "key", "dense")))
    return reg


@pytest.fixture(scope="module")
def base_vectors(tiny_model):
    from sentence_transformers import SentenceTransformer

    return encode(SentenceTransformer(tiny_model, device="cpu"))


def test_load_model_merged_matches_unmerged_and_differs_from_base(registry, base_vectors):
    from cachetune import load_model

    unmerged = load_model(domain="programming", registry=registry.root, device="cpu")
    merged = load_model(domain="programming", registry=registry, merged=True, device="cpu")
    assert type(merged[0].auto_model).__name__ == "BertModel"  # no peft wrapper left
    assert type(unmerged[0].auto_model).__name__ == "PeftModel"
    u, m = encode(unmerged), encode(merged)
    assert max_diff(u, m) < 1e-5
    assert max_diff(u, base_vectors) > 1e-2
    served = unmerged.cachetune_adapter
    assert (served.ref, served.domain, served.merged) == ("programming@1", "programming", False)
    assert merged.cachetune_adapter.merged is True

    by_name = load_model(name="medical", version=1, registry=registry, device="cpu")
    assert by_name.cachetune_adapter.ref == "medical@1"
    with pytest.raises(CachetuneError, match="is for domain 'medical', not 'programming'"):
        load_model(domain="programming", name="medical", registry=registry)
    with pytest.raises(CachetuneError, match="no adapter for domain 'cooking'"):
        load_model(domain="cooking", registry=registry)


def test_merged_export_is_a_plain_sentence_transformer(registry, tmp_path):
    from sentence_transformers import SentenceTransformer

    from cachetune.core.serving.models import MERGED_INFO_FILE, load_model

    registry.update_metrics("programming", {"adapter": {"pairs": {"calibrated_threshold": 0.61}}})
    out = registry.export_merged("programming", tmp_path / "merged")
    plain = SentenceTransformer(str(out), device="cpu")
    assert type(plain[0].auto_model).__name__ == "BertModel"
    assert not (out / "adapter_config.json").exists()
    unmerged = load_model(domain="programming", registry=registry, device="cpu")
    assert max_diff(encode(plain), encode(unmerged)) < 1e-5
    info = json.loads((out / MERGED_INFO_FILE).read_text())
    assert info["ref"] == "programming@1" and info["calibrated_threshold"] == pytest.approx(0.61)
    # The export also serves through cachetune, with the threshold it was exported with.
    again = load_model(adapter=str(out), device="cpu")
    assert again.cachetune_adapter.calibrated_threshold == pytest.approx(0.61)
    assert max_diff(encode(again), encode(plain)) == 0.0

    with pytest.raises(CachetuneError, match="output folder exists and is not empty"):
        registry.export_merged("programming", out)
    copied = registry.export("medical", tmp_path / "files")
    assert sorted(p.name for p in copied.iterdir()) == sorted(registry.get("medical")["files"])


def test_adapter_folder_outside_the_registry(registry, tmp_path):
    from cachetune.core.serving.models import load_model

    folder = shutil.copytree(registry.resolve("programming"), tmp_path / "adapter")
    model = load_model(adapter=str(folder), device="cpu")
    reference = load_model(domain="programming", registry=registry, device="cpu")
    assert max_diff(encode(model), encode(reference)) == 0.0
    with pytest.raises(CachetuneError, match="adapter is for domain 'programming', not 'medical'"):
        load_model(adapter=str(folder), domain="medical")
    with pytest.raises(CachetuneError, match="adapter folder not found"):
        load_model(adapter=str(tmp_path / "missing/"))
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(CachetuneError, match="truncated") as info:
        load_model(adapter=str(folder))
    assert info.value.path == str(weights)


def test_multi_adapter_switching_matches_loading_each_alone(registry, base_vectors):
    from cachetune import load_model, load_multi

    alone = {d: encode(load_model(domain=d, registry=registry, device="cpu")) for d in ("programming", "medical")}
    assert max_diff(alone["programming"], alone["medical"]) > 1e-2

    multi = load_multi(["programming", "medical"], registry=registry, device="cpu")
    base_model = multi.model[0].auto_model
    for domain in ["programming", "medical", "programming", None, "medical"]:
        got = multi.encode(TEXTS, domain=domain, convert_to_numpy=True, normalize_embeddings=True)
        want = base_vectors if domain is None else alone[domain]
        assert max_diff(got, want) < 1e-6, domain
    assert multi.model[0].auto_model is base_model  # switched in place, never reloaded
    assert multi.domains == ["programming", "medical"]
    assert -1.0 <= multi.similarity(TEXTS[0], TEXTS[1], domain="medical") <= 1.0
    with pytest.raises(CachetuneError, match="domain 'cooking' is not loaded"):
        multi.encode(TEXTS, domain="cooking")


@pytest.mark.parametrize("way", ["stacked", "peft"])
def test_mixed_batch_matches_encoding_each_group_alone(registry, way):
    """One encode, each text through its own adapter (None: the base model): every row equals the
    group's own encode. sentence-transformers sorts texts by length inside encode, and the batches
    here (2 texts) cut across the domains, so a name attached to the wrong row shows up. The two
    adapters differ in rank (8, 4) and targets (query/value; query/key/dense): the stacked layers
    pad and skip. "peft": the fallback for adapters that cannot be stacked (peft's adapter_names)."""
    from cachetune import load_multi

    multi = load_multi(["programming", "medical"], registry=registry, device="cpu")
    assert multi._stacked_lora() is not None
    if way == "peft":
        multi._stacked = None
    texts = [TEXTS[0], "x", TEXTS[2] + " and how is it treated in older adults", "sort", TEXTS[1], TEXTS[3],
             "what is a python list comprehension used for", TEXTS[0]]
    domains = ["medical", "programming", None, "medical", "programming", None, "medical", "medical"]
    options = dict(batch_size=2, convert_to_numpy=True, normalize_embeddings=True)
    mixed = multi.encode_mixed(texts, domains, **options)
    assert mixed.shape == (len(texts), 32)
    for domain in ("programming", "medical", None):
        rows = [i for i, d in enumerate(domains) if d == domain]
        alone = multi.encode([texts[i] for i in rows], domain=domain, **options)
        assert max_diff(mixed[rows], alone) < 1e-5, domain
        other = multi.encode([texts[i] for i in rows], domain="programming" if domain == "medical" else "medical",
                             **options)
        assert max_diff(mixed[rows], other) > 1e-2, domain
    after = multi.encode(TEXTS, domain="medical", **options)  # the mixed call leaves nothing behind
    assert max_diff(after, multi.encode(TEXTS, domain="medical", batch_size=4, convert_to_numpy=True,
                                        normalize_embeddings=True)) < 1e-5
    assert "preprocess" not in vars(multi.model)
    with pytest.raises(CachetuneError, match="given twice with different domains"):
        multi.encode_mixed(["a", "a"], ["medical", "programming"])
    with pytest.raises(CachetuneError, match="domain 'cooking' is not loaded"):
        multi.encode_mixed(["a"], ["cooking"])


@pytest.mark.parametrize("option", [{"use_dora": True}, {"lora_bias": True}])
def test_adapters_that_cannot_be_stacked_use_peft_mixed_batches(tiny_model, option):
    """DoRA rescales each output by a weight norm and a bias on lora_B adds a term: neither is the
    stacked low-rank sum, so StackedLora declines them (encode_mixed then gives peft the rows' names)."""
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer

    from cachetune.core.serving.mixed import StackedLora

    def peft_model(**extra):
        model = SentenceTransformer(tiny_model, device="cpu")
        return get_peft_model(model[0].auto_model, LoraConfig(r=4, target_modules=["query", "value"], **extra))

    assert StackedLora.build(peft_model(), ["default"]) is not None
    assert StackedLora.build(peft_model(**option), ["default"]) is None


def test_multi_refuses_adapters_on_different_bases(registry, tmp_path, tiny_model, embedded_model):
    reg = AdapterRegistry(tmp_path / "reg")
    reg.add(registry.resolve("programming"))
    reg.add(make_adapter(embedded_model, tmp_path / "real-med", "medical", seed=3))
    from cachetune import load_multi

    with pytest.raises(CachetuneError, match="adapters need one base model"):
        load_multi(["programming", "medical"], registry=reg)


def test_serving_refuses_corrupt_files_and_base_mismatch(tmp_path, tiny_model, embedded_model, registry):
    from cachetune import load_model, load_multi

    reg = AdapterRegistry(tmp_path / "reg")
    reg.add(registry.resolve("programming"))
    with pytest.raises(CachetuneError, match="base model mismatch: the adapter was trained on"):
        load_model(domain="programming", registry=reg, base_model=embedded_model)

    weights = reg.resolve("programming") / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4] ^= 0x01
    weights.write_bytes(bytes(data))
    for load in (lambda: load_model(domain="programming", registry=reg),
                 lambda: load_multi(["programming"], registry=reg),
                 lambda: reg.export_merged("programming", tmp_path / "out")):
        with pytest.raises(CachetuneError, match="is corrupt") as info:
            load()
        assert info.value.path == str(weights)
    assert not (tmp_path / "out").exists()

    # The base model's weights change after registration: refused by sha256, not loaded.
    base_copy = shutil.copytree(tiny_model, tmp_path / "base-copy")
    reg2 = AdapterRegistry(tmp_path / "reg2")
    reg2.add(make_adapter(str(base_copy), tmp_path / "on-copy", "programming", seed=4))
    weights_file = base_copy / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[-8] ^= 0x01
    weights_file.write_bytes(bytes(data))
    with pytest.raises(CachetuneError, match="base model mismatch: weights sha256") as info:
        load_model(domain="programming", registry=reg2)
    assert info.value.path == str(base_copy)


def test_real_model_adapter_merged_export(tmp_path, embedded_model):
    """The real all-MiniLM-L6-v2: LoRA changes it; merged, unmerged and exported agree."""
    from sentence_transformers import SentenceTransformer

    from cachetune import load_model

    reg = AdapterRegistry(tmp_path / "reg")
    record = reg.add(make_adapter(embedded_model, tmp_path / "prog", "programming", seed=5, scale=0.02))
    assert record["base_model"]["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    base = encode(SentenceTransformer(embedded_model, device="cpu"))
    unmerged = encode(load_model(domain="programming", registry=reg, device="cpu"))
    merged = encode(load_model(domain="programming", registry=reg, merged=True, device="cpu"))
    assert max_diff(unmerged, merged) < 1e-5
    assert max_diff(unmerged, base) > 1e-3
    out = reg.export_merged("programming", tmp_path / "merged")
    exported = encode(SentenceTransformer(str(out), device="cpu"))
    assert max_diff(exported, unmerged) < 1e-5


# The README's "Loading adapters in a cache" example; the test runs the README's copy when present.
CACHE_EXAMPLE = '''
import cachetune

model = cachetune.load_model(domain="programming")        # the registry's programming adapter
threshold = model.cachetune_adapter.calibrated_threshold  # stored by `evaluate --register-metrics`
cache = []                                                # (unit vector, answer) pairs

def lookup(query):
    """The answer cached for the most similar earlier query, if it clears the threshold."""
    vector = model.encode(query, normalize_embeddings=True)
    score, answer = max(((float(v @ vector), a) for v, a in cache), default=(-1.0, None), key=lambda s: s[0])
    return answer if score >= threshold else None

def store(query, answer):
    cache.append((model.encode(query, normalize_embeddings=True), answer))
'''


def readme_cache_example() -> str:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^## Loading adapters in a cache\n.*?```python\n(.*?)```", readme, re.S | re.M)
    return found.group(1) if found else CACHE_EXAMPLE


def test_cache_lookup_example_with_the_real_model(tmp_path, embedded_model, monkeypatch):
    monkeypatch.setenv("CACHETUNE_HOME", str(tmp_path / "home"))  # the example uses the default registry
    reg = AdapterRegistry()
    reg.add(make_adapter(embedded_model, tmp_path / "prog", "programming", seed=6, scale=0.02))
    reg.update_metrics("programming", {"adapter": {"pairs": {"calibrated_threshold": 0.7}}})

    namespace: dict = {}
    exec(compile(readme_cache_example(), "README example", "exec"), namespace)
    assert namespace["threshold"] == pytest.approx(0.7)
    namespace["store"]("How do I sort a list in Python?", "sorted(xs)")
    assert namespace["lookup"]("sorting a python list") == "sorted(xs)"
    assert namespace["lookup"]("what are the symptoms of type 2 diabetes") is None
