"""Real caches decide hit or miss with an exported adapter at its stored threshold.

A real LoRA is trained on the real all-MiniLM-L6-v2 from CoNaLa human pairs, evaluated with
`cachetune evaluate --register-metrics` (which stores its calibrated threshold), and exported
with `adapters export --for TOOL`. Then, on held-out human pairs (CoNaLa intent <-> rewritten
intent and mined near misses), one pair whose adapter cosine is just above the threshold and one
just below it go through each tool's own cache, configured by the exported cache-config file:
the first must hit, the second must miss. A threshold in the wrong units fails one of the two.
redisvl's OpenAITextVectorizer and LiteLLM do the same through `cachetune serve`.
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
# A small real adapter: enough to move the embeddings, cheap on 2 CPU cores.
TRAIN_PAIRS, TRAIN_STEPS = 320, 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data, embedded_model):
    """A registry with a real adapter trained on CoNaLa's train split and evaluated on its held-out split."""
    from sentence_transformers import SentenceTransformer

    from cachetune.core.cli import main
    from cachetune.core.jsonl import write_jsonl
    from cachetune.core.train.loop import TrainConfig, train
    from cachetune.domains.programming.training_pairs import read_conala_pairs, split_pairs, triplets_from_pairs
    from cachetune.registry import AdapterRegistry

    root = tmp_path_factory.mktemp("drop-in")
    train_pairs, held = split_pairs(read_conala_pairs(shared_data / "conala" / "conala-train.json"), 0.1, 0)
    base = SentenceTransformer(embedded_model, device="cpu")
    files = {"train": root / "train.jsonl", "holdout": root / "holdout.jsonl"}
    write_jsonl(files["train"], triplets_from_pairs(train_pairs[:TRAIN_PAIRS], "programming", model=base))
    write_jsonl(files["holdout"], triplets_from_pairs(held, "programming", model=base))
    train(TrainConfig("programming", files["train"], root / "adapter", base_model=embedded_model, batch_size=32,
                      max_steps=TRAIN_STEPS, lr=2e-3), log=lambda _: None, show_progress=False)
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


def run_config(folder: Path, redis_url: str = "") -> dict:
    """Execute an exported cache-config.py as a user would; its globals."""
    namespace: dict = {"__name__": "cache_config"}
    old = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = redis_url
    try:
        path = folder / "cache-config.py"
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    finally:
        if old is None:
            os.environ.pop("REDIS_URL")
        else:
            os.environ["REDIS_URL"] = old
    return namespace


def check_redisvl_decisions(cache, near_pairs) -> None:
    """The pair just above the threshold hits a redisvl SemanticCache; the one just below misses."""
    (above_cached, above_query), (below_cached, below_query) = near_pairs
    cache.store(prompt=above_cached, response="above")
    assert [hit["response"] for hit in cache.check(prompt=above_query)] == ["above"]
    cache.clear()
    cache.store(prompt=below_cached, response="below")
    assert cache.check(prompt=below_query) == []


def test_redisvl_semantic_cache_with_hf_vectorizer(exported, near_pairs, trained, redis_url):
    cache = run_config(exported["redisvl"], redis_url)["cache"]
    assert type(cache._vectorizer).__name__ == "HFTextVectorizer"
    assert cache.distance_threshold == pytest.approx(1 - trained["threshold"], abs=1e-6)
    check_redisvl_decisions(cache, near_pairs)


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


GPTCACHE_CASES = """
import json, os, sys
code, folder, cases = open(sys.argv[1]).read(), sys.argv[2], json.loads(sys.argv[3])
got = {}
for name, cached, query in cases:
    os.makedirs(name)
    os.chdir(name)  # a fresh sqlite + faiss store; GPTCache writes its index here again at exit
    os.symlink(folder, os.path.basename(folder))
    namespace = {"__name__": "cache_config"}
    exec(compile(code, sys.argv[1], "exec"), namespace)
    from gptcache.adapter.api import get, put
    put(cached, name)
    got[name] = get(query)
    os.chdir("..")
print(json.dumps(got))
"""


def gptcache_decisions(code: str, folder: Path, near_pairs, work: Path) -> dict:
    """Run GPTCache ``code`` in a child process (its index is flushed at exit, into ``work``):
    store each near pair's cached side, look up the other; {case: answer or None}."""
    import subprocess
    import sys

    work.mkdir()
    (work / "config.py").write_text(code, encoding="utf-8")
    cases = [["above", *near_pairs[0]], ["below", *near_pairs[1]]]
    out = subprocess.run([sys.executable, "-c", GPTCACHE_CASES, str(work / "config.py"), str(folder.resolve()),
                          json.dumps(cases)], cwd=work, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gptcache_with_faiss_in_process(exported, near_pairs, tmp_path):
    code = (exported["gptcache"] / "cache-config.py").read_text(encoding="utf-8")
    assert gptcache_decisions(code, exported["gptcache"], near_pairs, tmp_path / "run") == \
        {"above": "above", "below": None}


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


def run_readme(heading: str, redis_url: str = "", server_url: str = "") -> dict:
    """Run a README snippet, pointed at the test's Redis and (``server_url``) `cachetune serve`."""
    code = readme_block(heading).replace("redis://localhost:6379", redis_url or "redis://localhost:6379")
    if server_url:
        assert code.count("http://127.0.0.1:8080/v1") == 1, heading
        code = code.replace("http://127.0.0.1:8080/v1", f"{server_url}/v1")
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, f"README {heading}", "exec"), namespace)
    return namespace


def test_readme_redisvl(exported, near_pairs, redis_url, monkeypatch, capsys):
    monkeypatch.chdir(exported["redisvl"].parent)
    cache = run_readme("redisvl", redis_url)["cache"]
    capsys.readouterr()
    cache.clear()
    check_redisvl_decisions(cache, near_pairs)


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


def test_readme_gptcache(exported, near_pairs, tmp_path):
    assert gptcache_decisions(readme_block("GPTCache"), exported["gptcache"], near_pairs, tmp_path / "run") == \
        {"above": "above", "below": None}


# -- through `cachetune serve`: OpenAI-compatible clients -------------------------------------
@pytest.fixture(scope="module")
def served(trained):
    """Base URL of `cachetune serve`'s app for the trained adapter (unmerged, as the command defaults)."""
    from cachetune.core.serving.catalog import load_catalog
    from cachetune.core.serving.server import create_app
    from embedding_server import running_server

    with running_server(create_app(load_catalog(trained["registry"].root, ["programming"], device="cpu"))) as url:
        yield url


def test_readme_redisvl_openai_vectorizer_against_cachetune_serve(served, trained, near_pairs, redis_url):
    cache = run_readme("redisvl through `cachetune serve`", redis_url, served)["cache"]
    assert type(cache._vectorizer).__name__ == "OpenAITextVectorizer"
    assert cache.distance_threshold == pytest.approx(1 - trained["threshold"], abs=1e-6)
    check_redisvl_decisions(cache, near_pairs)


@pytest.mark.parametrize("case", ["above", "below"])
def test_readme_litellm_against_cachetune_serve(case, served, trained, near_pairs, redis_url, monkeypatch):
    """LiteLLM embeds through `cachetune serve` and caches in Redis; no LLM runs (mock_response)."""
    import litellm

    monkeypatch.setenv("HOSTED_VLLM_API_BASE", "restored after the test")  # the snippet sets it
    monkeypatch.setattr(litellm, "cache", None)
    run_readme("LiteLLM", redis_url, served)
    assert litellm.cache.cache.similarity_threshold == trained["threshold"]

    def ask(prompt: str, fresh_answer: str) -> tuple:
        reply = litellm.completion(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
                                   mock_response=fresh_answer, caching=True)
        return reply.choices[0].message.content, bool(reply._hidden_params.get("cache_hit"))

    cached, query = near_pairs[0 if case == "above" else 1]
    assert ask(cached, "cached") == ("cached", False)
    assert ask(query, "fresh") == (("cached", True) if case == "above" else ("fresh", False))
