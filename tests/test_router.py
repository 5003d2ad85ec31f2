"""The router: trained on real CoNaLa and MedQuAD queries over real LoRA adapters on the real base model;
routed encodes, similarity, the CLI, `serve` with model "auto", and a Redis cache kept apart by domain."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cachetune.core.errors import CachetuneError
from cachetune.registry import AdapterRegistry
from make_adapter import make_adapter

BASE_THRESHOLD = 0.83
MEDICAL_THRESHOLD = 0.72


def _queries(path, n=None):
    rows = [json.loads(line)["query"] for line in open(path, encoding="utf-8")]
    return rows[:n] if n else rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory, embedded_model, shared_data):
    """Prepared real queries, a registry with two real adapters, and a router trained by the CLI."""
    from cachetune.core.cli import main

    root = tmp_path_factory.mktemp("router")
    for domain, source in (("programming", shared_data / "conala" / "conala-train.json"),
                           ("medical", shared_data / "medquad")):
        assert main(["prepare", "--domain", domain, "--source", str(source), "--limit", "250",
                     "--output", str(root / domain / "data")]) == 0
    reg = AdapterRegistry(root / "reg")
    reg.add(make_adapter(embedded_model, root / "prog", "programming", seed=1))
    reg.add(make_adapter(embedded_model, root / "med", "medical", seed=2, r=4))
    reg.update_metrics("medical", {"adapter": {"pairs": {"calibrated_threshold": MEDICAL_THRESHOLD}},
                                   "base": {"pairs": {"calibrated_threshold": BASE_THRESHOLD}}})
    assert main(["router", "train", "--registry", str(reg.root), "--run", str(root / "programming"),
                 "--queries", f"medical={root / 'medical' / 'data' / 'train.jsonl'}",
                 "--centroids", "1,4,8,16,32"]) == 0
    return {"root": root, "registry": reg}


@pytest.fixture(scope="module")
def cooking():
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "cachetune-cooking" / "cachetune_cooking" / "data" / \
        "cooking_queries.txt"
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def multi(setup):
    from cachetune import load_multi

    return load_multi(["programming", "medical"], registry=setup["registry"], device="cpu")


@pytest.fixture(scope="module")
def heldout(setup):
    root = setup["root"]
    return {d: _queries(root / d / "data" / "holdout.jsonl") for d in ("programming", "medical")}


@pytest.mark.slow
def test_router_is_a_small_json_file_in_the_registry(setup):
    path = setup["registry"].root / "routers" / "medical+programming" / "1.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert path.stat().st_size < 600_000
    assert data["format"] == 2
    assert data["domains"] == ["medical", "programming"]
    assert data["adapters"] == {"medical": "medical@1", "programming": "programming@1"}
    assert data["base_model"]["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    held = data["heldout"]
    assert set(held["classifier_accuracy"]) == {"centroid", "logistic"}
    assert held["kept"] == max(held["classifier_accuracy"], key=lambda k: (held["classifier_accuracy"][k],
                                                                          k == "centroid"))
    assert held["accuracy"] >= 0.9
    assert held["queries"]["medical"] == 45  # 20% of the 225 prepared training queries
    assert set(data["confidence"]["thresholds"]) == {"medical", "programming"}
    for domain, centroids in data["confidence"]["centroids"].items():
        assert len(centroids) == held["centroids"][domain]["kept"] and len(centroids[0]) == 384
        assert set(held["centroids"][domain]["choices"]) == {"1", "4", "8", "16"}  # 32: too few queries
    assert data["base_threshold"] == BASE_THRESHOLD  # the only base threshold an evaluation stored
    assert len(data["classifier"]["weights"]) == 2 and len(data["classifier"]["weights"][0]) == 384


@pytest.mark.slow
def test_routed_encode_uses_each_texts_adapter_in_one_batch(multi, heldout, cooking):
    texts = heldout["programming"][:8] + heldout["medical"][:8] + cooking[:8]
    routed = multi.encode(texts, domain="auto", normalize_embeddings=True)
    assert len(routed) == len(texts) and routed.embeddings.shape == (len(texts), 384)
    assert routed.domains[:8].count("programming") >= 7
    assert routed.domains[8:16].count("medical") >= 7
    assert routed.domains[16:].count(None) >= 4  # cooking is neither: most go to the base model
    for text, row, domain, threshold in zip(texts, routed.embeddings, routed.domains, routed.thresholds):
        alone = multi.encode([text], domain=domain, normalize_embeddings=True)[0]
        assert np.abs(row - alone).max() < 1e-5, (text, domain)
        assert threshold == {"medical": MEDICAL_THRESHOLD, "programming": None, None: BASE_THRESHOLD}[domain]
    vector, domain = routed[8]
    assert domain == routed.domains[8] and np.array_equal(vector, routed.embeddings[8])
    assert routed[2:5].domains == routed.domains[2:5]
    one = multi.encode(texts[9], domain="auto")
    assert one.embeddings.shape == (384,) and one.domains == [routed.domains[9]]


@pytest.mark.slow
def test_similarity_auto_never_matches_across_domains(multi):
    prog = "How to sort a list of dictionaries by a value of the dictionary?"
    med = "What are the treatments for Graves' disease ?"
    across = multi.similarity(prog, med, domain="auto")
    assert across.domains == ("programming", "medical")
    assert across.same_domain is False and across.hit is False
    same = multi.similarity(prog, "sort a list of dicts by a key in python", domain="auto")
    assert same.domains == ("programming", "programming")
    direct = multi.similarity(prog, "sort a list of dicts by a key in python", domain="programming")
    assert abs(same.cosine - direct) < 1e-4


@pytest.mark.slow
def test_router_for_other_adapter_versions_is_not_used(setup, tmp_path, embedded_model):
    import cachetune

    copy = AdapterRegistry(shutil.copytree(setup["registry"].root, tmp_path / "reg"))
    copy.add(make_adapter(embedded_model, tmp_path / "prog2", "programming", seed=3))
    multi = cachetune.load_multi(["programming", "medical"], registry=copy, device="cpu")
    assert multi.router is None
    with pytest.raises(CachetuneError, match=r"trained for programming@1, but programming@2 is loaded"):
        multi.encode(["sort a list"], domain="auto")
    with pytest.raises(CachetuneError, match=r"trained for programming@1"):
        cachetune.load_multi(["programming", "medical"], registry=copy, router="medical+programming", device="cpu")
    pinned = cachetune.load_routed(copy, device="cpu")  # loads the versions the router was trained for
    assert pinned.adapters["programming"].ref == "programming@1"


@pytest.mark.slow
def test_cli_embed_similarity_and_evaluate_auto(setup, run_cli, tmp_path, cooking):
    reg = str(setup["registry"].root)
    out = run_cli(["embed", "--registry", reg, "--domain", "auto", "sort a dict by its values",
                   "What are the symptoms of Graves' disease ?"])
    assert out.exit_code == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["domain"] for r in rows] == ["programming", "medical"] and len(rows[0]["embedding"]) == 384

    target = tmp_path / "v.jsonl"
    out = run_cli(["embed", "--registry", reg, "--domain", "auto", "--output", target, "how to reverse a string"])
    assert out.exit_code == 0 and "routed: programming 1" in out.stderr
    assert json.loads(target.read_text())["domain"] == "programming"

    out = run_cli(["similarity", "--registry", reg, "--domain", "auto", "--json",
                   "How to sort a list of dictionaries by a value of the dictionary?",
                   "What are the treatments for Graves' disease ?"])
    result = json.loads(out.stdout)
    assert result["domains"] == ["programming", "medical"] and result["hit"] is False

    (tmp_path / "cooking.txt").write_text("# comment line\n" + "\n".join(cooking) + "\n", encoding="utf-8")
    holdout = setup["root"] / "programming" / "data" / "holdout.jsonl"
    out = run_cli(["router", "evaluate", "--registry", reg, "--json", "--queries", f"programming={holdout}",
                   "--outside", f"cooking={tmp_path / 'cooking.txt'}"])
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["per_domain"]["programming"]["queries"] == 25
    assert report["per_domain"]["programming"]["accuracy"] >= 0.9
    assert report["outside"]["cooking"]["queries"] == len(cooking)  # the comment line is not a query
    assert report["outside"]["cooking"]["to_base"] >= 0.5


def test_cli_errors_are_one_line(run_cli, tmp_path):
    empty = str(tmp_path / "empty-reg")
    out = run_cli(["router", "train", "--registry", empty, "--queries", "programming"])
    assert out.exit_code == 2 and "expected NAME=FILE, not 'programming'" in out.stderr
    out = run_cli(["router", "train", "--registry", empty, "--queries", f"programming={tmp_path / 'nope.jsonl'}",
                   "--queries", f"medical={tmp_path / 'nope.jsonl'}"])
    assert out.exit_code == 1 and "nope.jsonl" in out.stderr and "not found" in out.stderr
    (tmp_path / "q.txt").write_text("one query\n", encoding="utf-8")
    out = run_cli(["router", "train", "--registry", empty, "--queries", f"programming={tmp_path / 'q.txt'}"])
    assert out.exit_code == 2 and "at least two domains" in out.stderr
    out = run_cli(["router", "train", "--registry", empty, "--queries", f"programming={tmp_path / 'q.txt'}",
                   "--queries", f"medical={tmp_path / 'q.txt'}", "--centroids", "1,x"])
    assert out.exit_code == 2 and "--centroids" in out.stderr and "not '1,x'" in out.stderr
    out = run_cli(["embed", "--registry", empty, "--domain", "auto", "some text"])
    assert out.exit_code == 1 and "no router in the registry" in out.stderr
    out = run_cli(["embed", "--registry", empty, "--domain", "programming", "--router", "x", "some text"])
    assert out.exit_code == 2 and "--router goes with --domain auto" in out.stderr
    out = run_cli(["router", "show", "--registry", empty, "nothing"])
    assert out.exit_code == 1 and "no router named 'nothing'" in out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"domains": ["a"]', encoding="utf-8")
    out = run_cli(["embed", "--registry", empty, "--domain", "auto", "--router", str(bad), "x"])
    assert out.exit_code == 1 and "bad.json" in out.stderr and "invalid JSON" in out.stderr


@pytest.mark.slow
def test_serve_model_auto_returns_the_domain_per_item(setup, heldout):
    pytest.importorskip("starlette", reason="the server needs the 'serve' extra")
    openai = pytest.importorskip("openai")
    from cachetune import load_model
    from cachetune.core.serving.catalog import load_catalog
    from cachetune.core.serving.server import create_app
    from embedding_server import running_server

    catalog = load_catalog(setup["registry"].root, device="cpu")
    assert catalog.resolve("auto").describe()["router"] == {
        "ref": "medical+programming@1", "routes": {"medical": "medical@1", "programming": "programming@1"}}
    texts = [heldout["programming"][0], heldout["medical"][0], heldout["programming"][1]]
    with running_server(create_app(catalog)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        raw = client.embeddings.with_raw_response.create(model="auto", input=texts)
        body = json.loads(raw.text)
        parsed = raw.parse()
    assert [item["domain"] for item in body["data"]] == ["programming", "medical", "programming"]
    assert body["data"][1]["threshold"] == MEDICAL_THRESHOLD
    for item, text in zip(parsed.data, texts):
        domain = body["data"][item.index]["domain"]
        alone = load_model(domain=domain, registry=setup["registry"], device="cpu").encode(
            [text], normalize_embeddings=True)[0]
        assert np.abs(np.asarray(item.embedding) - alone).max() < 1e-4


@pytest.mark.slow
def test_redis_cache_keeps_domains_apart(multi, redis_url):
    """A medical query whose nearest cached entry is a programming question does not hit."""
    pytest.importorskip("redisvl")
    from redisvl.extensions.cache.llm import SemanticCache
    from redisvl.query.filter import Tag
    from redisvl.utils.vectorize import CustomTextVectorizer

    cached_question = "How to check the memory usage of a Python process?"
    query = "How to check memory loss in elderly patients ?"
    routed = multi.encode([cached_question, query], domain="auto", normalize_embeddings=True)
    assert routed.domains == ["programming", "medical"]
    cosine = float(routed.embeddings[0] @ routed.embeddings[1])

    def vectorize(text):  # the cache stores what the router chose; lookups pass vectors themselves
        return multi.encode([text], domain="auto", normalize_embeddings=True).embeddings[0].tolist()

    cache = SemanticCache(name="routed", redis_url=redis_url, distance_threshold=1.0 - cosine + 0.05,
                          vectorizer=CustomTextVectorizer(embed=vectorize),
                          filterable_fields=[{"name": "domain", "type": "tag"}])
    try:
        cache.store(prompt=cached_question, response="use psutil.Process().memory_info().rss",
                    vector=routed.embeddings[0].tolist(), filters={"domain": routed.domains[0]})
        # Without the domain filter the programming answer is within the distance threshold...
        assert cache.check(vector=routed.embeddings[1].tolist())
        # ...with it, the medical query only sees medical entries: no hit.
        assert cache.check(vector=routed.embeddings[1].tolist(), filter_expression=Tag("domain") == "medical") == []
        # A programming rewording still hits within its own domain.
        again = multi.encode(["How do I check the memory usage of a python process"], domain="auto",
                             normalize_embeddings=True)
        assert again.domains == ["programming"]
        hits = cache.check(vector=again.embeddings[0].tolist(), filter_expression=Tag("domain") == "programming")
        assert hits and hits[0]["response"] == "use psutil.Process().memory_info().rss"
    finally:
        cache.delete()


@pytest.mark.slow
def test_readme_one_cache_for_many_domains(setup, redis_url, monkeypatch):
    """The README's block, run as written: lookups stay within the routed domain."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    code = re.search(r"^### Many domains: one cache, kept apart by domain\n.*?```python\n(.*?)```", readme,
                     re.S | re.M).group(1)
    monkeypatch.setenv("CACHETUNE_HOME", str(setup["registry"].root))
    namespace: dict = {"__name__": "readme"}
    exec(compile(code.replace("redis://localhost:6379", redis_url), "README many domains", "exec"), namespace)
    cache, route, lookup, remember = (namespace[k] for k in ("cache", "route", "lookup", "remember"))
    try:
        remember("How to check the memory usage of a Python process?", "psutil.Process().memory_info().rss")
        vector, domain, threshold = route("How to check memory loss in elderly patients ?")
        assert (domain, threshold) == ("medical", MEDICAL_THRESHOLD)
        nearest = cache.check(vector=vector, distance_threshold=2.0)  # no filter, any distance
        assert nearest[0]["prompt"] == "How to check the memory usage of a Python process?"
        assert lookup("How to check memory loss in elderly patients ?") is None
        assert lookup("How do I check the memory usage of a python process") == "psutil.Process().memory_info().rss"
        assert lookup("How do I reverse a string in python") is None
    finally:
        cache.delete()


@pytest.mark.slow
def test_serve_merged_routes_across_merged_copies(setup, heldout, cooking):
    """With --merged each adapter is its own merged model; "auto" routes across them the same way."""
    from cachetune.core.serving.catalog import load_catalog

    texts = [heldout["medical"][2], heldout["programming"][2], cooking[0]]
    merged = load_catalog(setup["registry"].root, merged=True, device="cpu").resolve("auto").encode(texts)
    shared = load_catalog(setup["registry"].root, device="cpu").resolve("auto").encode(texts)
    assert merged.domains == shared.domains
    assert merged.domains[:2] == ["medical", "programming"]
    assert np.abs(merged.embeddings - shared.embeddings).max() < 1e-4


def test_out_of_fold_cosines_leave_each_fold_out_of_its_centroid():
    """With one fold per row (leave one out) each cosine is to the mean of all the other rows,
    computed here row by row; with 5 folds every cosine is below the in-sample one on average."""
    from cachetune.core.routing.train import out_of_fold_cosines

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(40, 16)) + 0.5
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    loo = out_of_fold_cosines(rows, np.random.default_rng(0), folds=len(rows))
    for i, row in enumerate(rows):
        others = np.delete(rows, i, axis=0).mean(axis=0)
        assert loo[i] == pytest.approx(row @ others / np.linalg.norm(others), abs=1e-12)
    centroid = rows.mean(axis=0) / np.linalg.norm(rows.mean(axis=0))
    assert out_of_fold_cosines(rows, np.random.default_rng(0)).mean() < (rows @ centroid).mean()


def _router_document(version, centroids):
    return {"format": version, "domains": ["a", "b"], "adapters": {"a": "a@1", "b": "b@1"},
            "base_model": {"id": "m", "weights_sha256": "0"}, "features": "base-token-embedding-mean",
            "classifier": {"kind": "centroid", "center": [0.0, 0.0], "weights": [[1.0, 0.0], [0.0, 1.0]],
                           "bias": [0.0, 0.0]},
            "confidence": {"space": "adapter", "centroids": centroids, "thresholds": {"a": 0.5, "b": 0.5}},
            "base_threshold": None}


def test_router_files_of_both_formats_load_and_a_newer_one_fails_in_one_line():
    """Format 1 kept one centroid per domain, format 2 a list; confidence is the nearest centroid's cosine."""
    from cachetune.core.routing.router import Router

    old = Router.from_json(_router_document(1, {"a": [1.0, 0.0], "b": [0.0, 1.0]}))
    assert old.centroids["a"].shape == (1, 2)
    assert old.confidence("a", np.array([[3.0, 4.0]])) == pytest.approx([0.6])
    new = Router.from_json(_router_document(2, {"a": [[1.0, 0.0], [0.0, 1.0]], "b": [[0.0, 1.0]]}))
    assert new.confidence("a", np.array([[3.0, 4.0], [-1.0, 0.0]])) == pytest.approx([0.8, 0.0])
    again = Router.from_json(json.loads(json.dumps(new.to_json())))
    assert again.to_json()["confidence"]["centroids"] == {"a": [[1.0, 0.0], [0.0, 1.0]], "b": [[0.0, 1.0]]}
    with pytest.raises(CachetuneError, match=r"^router format 3 is not one this cachetune reads \(1 or 2\)"):
        Router.from_json(_router_document(3, {"a": [[1.0, 0.0]], "b": [[0.0, 1.0]]}))
    with pytest.raises(CachetuneError, match="not a router file: ValueError a domain's centroids must be a vector"):
        Router.from_json(_router_document(1, {"a": [[1.0, 0.0]], "b": [[0.0, 1.0]]}))


def test_spherical_centroids_find_the_clusters():
    from cachetune.core.routing.router import nearest_cosines
    from cachetune.core.routing.train import spherical_centroids

    rng = np.random.default_rng(0)
    axes = np.eye(8)[:3]
    rows = np.repeat(axes, 30, axis=0) + rng.normal(scale=0.05, size=(90, 8))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    three = spherical_centroids(rows, 3)
    assert three.shape == (3, 8) and np.allclose(np.linalg.norm(three, axis=1), 1.0)
    assert nearest_cosines(axes, three).min() > 0.99  # one centroid on each cluster
    assert nearest_cosines(axes, spherical_centroids(rows, 1)).max() < 0.7  # the mean is near none


@pytest.mark.slow
def test_several_centroids_keep_the_other_domain_out_on_real_queries(tmp_path, embedded_model, shared_data):
    """Real CoNaLa questions against real MedQuAD ones, in the base model's space, thresholds at the 1%
    out-of-fold quantile: CoNaLa's one centroid lets a large share of medical questions pass as
    programming; several centroids keep almost all of them out, while prepare's held-out CoNaLa
    questions (never used to fit) stay in about as often."""
    from sentence_transformers import SentenceTransformer

    from cachetune.core.cli import main
    from cachetune.core.routing.train import choose_centroids

    for domain, source, limit in (("programming", shared_data / "conala" / "conala-train.json", []),
                                  ("medical", shared_data / "medquad", ["--limit", "600"])):
        assert main(["prepare", "--domain", domain, "--source", str(source), *limit,
                     "--output", str(tmp_path / domain)]) == 0
    model = SentenceTransformer(embedded_model, device="cpu")

    def encode(path, n=None):
        return model.encode(_queries(path, n), normalize_embeddings=True, batch_size=64)

    rows = encode(tmp_path / "programming" / "train.jsonl", 1000)
    held = encode(tmp_path / "programming" / "holdout.jsonl")
    medical = encode(tmp_path / "medical" / "train.jsonl")
    results = {}
    for choices in ((1,), (1, 4, 8, 16, 32)):
        centroids, threshold, measured = choose_centroids(rows, held, medical, 0.01, np.random.default_rng(0), 0,
                                                          choices)
        results[choices] = measured["choices"][str(measured["kept"])]
        results[choices]["kept"] = measured["kept"]
    one, several = results[(1,)], results[(1, 4, 8, 16, 32)]
    assert one["foreign_accepted"] > 0.2
    assert several["kept"] > 1 and several["foreign_accepted"] < 0.05
    assert several["heldout_rejected"] <= one["heldout_rejected"] + 0.02
