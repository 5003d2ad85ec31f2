"""Real caches decide hit or miss with an exported adapter at its stored threshold.

A real LoRA is trained on the real all-MiniLM-L6-v2 from CoNaLa human pairs, evaluated with
`cachetune evaluate --register-metrics` (which stores its calibrated threshold), and exported
with `adapters export --for TOOL`. Then, on held-out human pairs (CoNaLa intent <-> rewritten
intent and mined near misses), one pair whose adapter cosine is just above the threshold and one
just below it go through each tool's own cache, configured by the exported cache-config file:
the first must hit, the second must miss. A threshold in the wrong units fails one of the two.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# Pairs are chosen at least this far from the threshold (float32 storage in Redis and faiss)...
MARGIN = 2e-3
# ...and at most this far, so they test the threshold and not an easy case.
NEAR = 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data, embedded_model):
    """A registry with a real adapter trained and evaluated on CoNaLa; its held-out triplet file."""
    from cachetune.core.cli import main
    from cachetune.core.train.loop import TrainConfig, train
    from cachetune.domains.programming.training_pairs import conala_triplet_files
    from cachetune.registry import AdapterRegistry

    root = tmp_path_factory.mktemp("drop-in")
    files = conala_triplet_files(shared_data / "conala" / "conala-train.json", root / "data",
                                 base_model=embedded_model)["paths"]
    train(TrainConfig("programming", files["train"], root / "adapter", base_model=embedded_model, batch_size=32,
                      max_steps=20, lr=2e-3), log=lambda _: None, show_progress=False)
    registry = AdapterRegistry(root / "reg")
    registry.add(root / "adapter")
    code = main(["evaluate", "--domain", "programming", "--adapter", "programming", "--registry", str(registry.root),
                 "--triplets", str(files["holdout"]), "--no-domain-sets", "--bootstrap", "0", "--no-plots",
                 "--target-precision", "0.9", "--register-metrics", "--output", str(root / "eval")])
    assert code == 0
    threshold = registry.get("programming")["calibrated_threshold"]
    assert threshold is not None and 0.3 < threshold < 0.99
    return {"registry": registry, "root": root, "holdout": files["holdout"], "threshold": threshold}


@pytest.fixture(scope="module")
def exported(trained):
    """{tool: folder}, one `adapters export --for TOOL` each."""
    from cachetune.core.cli import main

    folders = {}
    for tool in ("redisvl", "langchain", "gptcache", "semantic-router", "sentence-transformers"):
        folders[tool] = trained["root"] / "exports" / f"programming-{tool}"  # the README's folder names
        assert main(["adapters", "export", "programming", "--for", tool, "--output", str(folders[tool]),
                     "--registry", str(trained["registry"].root)]) == 0
    return folders


@pytest.fixture(scope="module")
def near_pairs(trained, exported):
    """(just above, just below): held-out human pairs whose exported-model cosine straddles the threshold."""
    from sentence_transformers import SentenceTransformer

    pairs = set()
    for line in Path(trained["holdout"]).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        pairs.add((row["positive"], row["anchor"]))   # intent <-> its human rewrite
        pairs.add((row["positive"], row["negative"]))  # intent <-> a mined near miss
    pairs = sorted(pairs)
    model = SentenceTransformer(str(exported["sentence-transformers"]), device="cpu")
    a = model.encode([p[0] for p in pairs], normalize_embeddings=True)
    b = model.encode([p[1] for p in pairs], normalize_embeddings=True)
    cosines = (a * b).sum(axis=1)
    t = trained["threshold"]
    above = min((c, p) for c, p in zip(cosines, pairs) if c >= t + MARGIN)
    below = max((c, p) for c, p in zip(cosines, pairs) if c <= t - MARGIN)
    assert above[0] - t < NEAR and t - below[0] < NEAR, (t, above[0], below[0])
    return above[1], below[1]


def run_config(folder: Path, redis_url: str = "", filename: str = "cache-config.py") -> dict:
    """Execute an exported cache-config.py as a user would; its globals."""
    namespace: dict = {"__name__": "cache_config"}
    old = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = redis_url
    try:
        exec(compile((folder / filename).read_text(encoding="utf-8"), str(folder / filename), "exec"), namespace)
    finally:
        if old is None:
            os.environ.pop("REDIS_URL")
        else:
            os.environ["REDIS_URL"] = old
    return namespace


def test_redisvl_semantic_cache_with_hf_vectorizer(exported, near_pairs, trained, redis_url):
    (above_cached, above_query), (below_cached, below_query) = near_pairs
    cache = run_config(exported["redisvl"], redis_url)["cache"]
    assert type(cache._vectorizer).__name__ == "HFTextVectorizer"
    assert cache.distance_threshold == pytest.approx(1 - trained["threshold"], abs=1e-6)
    cache.store(prompt=above_cached, response="above")
    hits = cache.check(prompt=above_query)
    assert [h["response"] for h in hits] == ["above"]
    cache.clear()
    cache.store(prompt=below_cached, response="below")
    assert cache.check(prompt=below_query) == []


def test_langchain_redis_semantic_cache_with_huggingface_embeddings(exported, near_pairs, redis_url):
    from langchain_core.outputs import Generation

    (above_cached, above_query), (below_cached, below_query) = near_pairs
    cache = run_config(exported["langchain"], redis_url)["cache"]
    assert type(cache.embeddings).__name__ == "HuggingFaceEmbeddings"
    llm = "fake-llm"
    cache.update(above_cached, llm, [Generation(text="above")])
    assert [g.text for g in cache.lookup(above_query, llm)] == ["above"]
    cache.clear()
    cache.update(below_cached, llm, [Generation(text="below")])
    assert cache.lookup(below_query, llm) is None


def test_gptcache_with_faiss_in_process(exported, near_pairs, tmp_path, monkeypatch):
    from gptcache.adapter.api import get, put

    (above_cached, above_query), (below_cached, below_query) = near_pairs
    for case, (cached, query, expected) in {"above": (above_cached, above_query, "above"),
                                            "below": (below_cached, below_query, None)}.items():
        (tmp_path / case).mkdir()
        monkeypatch.chdir(tmp_path / case)
        run_config(exported["gptcache"])  # a fresh sqlite + faiss store in this folder
        put(cached, case)
        assert get(query) == expected, case


def test_sentence_transformers_config(exported, near_pairs):
    is_hit = run_config(exported["sentence-transformers"])["is_hit"]
    (above_cached, above_query), (below_cached, below_query) = near_pairs
    assert is_hit(above_query, above_cached) and not is_hit(below_query, below_cached)


def test_semantic_router_folder_with_plain_transformers_mean_pooling(exported, trained, monkeypatch):
    """What semantic-router does with the folder (the README's code): plain BERT, mean pooling, L2."""
    import yaml
    from sentence_transformers import SentenceTransformer

    folder = exported["semantic-router"]
    config = yaml.safe_load((folder / "cache-config.yaml").read_text())
    assert config["semantic_cache"]["similarity_threshold"] == pytest.approx(trained["threshold"], abs=1e-6)
    assert config["bert_model"]["model_id"] == str(folder.resolve())
    monkeypatch.chdir(folder.parent)
    embed = run_readme("semantic-router and TEI")["embed"]
    texts = [json.loads(line)["anchor"] for line in Path(trained["holdout"]).read_text().splitlines()[:16]]
    reference = SentenceTransformer(str(exported["sentence-transformers"]), device="cpu").encode(
        texts, normalize_embeddings=True)
    assert float(np.abs(embed(texts).numpy() - reference).max()) < 1e-5


# -- the README's "Use it in your cache" snippets, run as written -----------------------------
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str) -> str:
    section = README.read_text(encoding="utf-8").split("## Use it in your cache\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"^### {re.escape(heading)}\n.*?```python\n(.*?)```", section, re.S | re.M)
    assert found, f"no python block under '### {heading}' in README"
    return found.group(1)


def run_readme(heading: str, redis_url: str = "") -> dict:
    code = readme_block(heading).replace("redis://localhost:6379", redis_url or "redis://localhost:6379")
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, f"README {heading}", "exec"), namespace)
    return namespace


def test_readme_redisvl(exported, near_pairs, redis_url, monkeypatch, capsys):
    monkeypatch.chdir(exported["redisvl"].parent)
    cache = run_readme("redisvl", redis_url)["cache"]
    capsys.readouterr()
    cache.clear()
    (above_cached, above_query), (below_cached, below_query) = near_pairs
    cache.store(prompt=above_cached, response="above")
    assert [h["response"] for h in cache.check(prompt=above_query)] == ["above"]
    cache.clear()
    cache.store(prompt=below_cached, response="below")
    assert cache.check(prompt=below_query) == []


def test_readme_langchain(exported, near_pairs, redis_url, monkeypatch):
    from langchain_core.globals import get_llm_cache, set_llm_cache
    from langchain_core.outputs import Generation

    monkeypatch.chdir(exported["langchain"].parent)
    try:
        run_readme("LangChain (langchain-redis)", redis_url)
        cache = get_llm_cache()
        (above_cached, above_query), (below_cached, below_query) = near_pairs
        cache.update(above_cached, "llm", [Generation(text="above")])
        assert [g.text for g in cache.lookup(above_query, "llm")] == ["above"]
        cache.clear()
        cache.update(below_cached, "llm", [Generation(text="below")])
        assert cache.lookup(below_query, "llm") is None
    finally:
        set_llm_cache(None)


def test_readme_gptcache(exported, near_pairs, tmp_path, monkeypatch):
    for case, (cached, query, expected) in {"above": (*near_pairs[0], "above"),
                                            "below": (*near_pairs[1], None)}.items():
        work = tmp_path / case
        work.mkdir()
        (work / exported["gptcache"].name).symlink_to(exported["gptcache"])
        monkeypatch.chdir(work)  # a fresh sqlite + faiss store lands here
        namespace = run_readme("GPTCache")
        namespace["put"](cached, case)
        assert namespace["get"](query) == expected, case
