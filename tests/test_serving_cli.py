"""`cachetune embed` and `cachetune similarity` through the real entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cachetune.registry import AdapterRegistry
from make_adapter import make_adapter


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("serve-cli")
    reg = AdapterRegistry(root / "reg")
    reg.add(make_adapter(tiny_model, root / "prog", "programming", seed=1))
    reg.add(make_adapter(tiny_model, root / "med", "medical", seed=2))
    return reg


@pytest.fixture(scope="module")
def reference(registry):
    from cachetune import load_model

    return load_model(domain="programming", registry=registry, device="cpu")


def test_embed_texts_to_stdout_and_files(run_cli, registry, reference, tmp_path):
    texts = ["sort a list in python", "reverse a string"]
    want = reference.encode(texts, convert_to_numpy=True)

    out = run_cli(["embed", "--domain", "programming", "--registry", registry.root, *texts])
    assert out.exit_code == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts
    assert np.allclose([r["embedding"] for r in rows], want, atol=1e-6)

    source = tmp_path / "queries.jsonl"
    source.write_text("".join(json.dumps({"id": i, "query": t}) + "\n" for i, t in enumerate(texts)))
    out = run_cli(["embed", "--domain", "programming", "--registry", registry.root, "--input", source,
                   "--output", tmp_path / "vectors.npy"])
    assert out.exit_code == 0, out.stderr
    assert np.allclose(np.load(tmp_path / "vectors.npy"), want, atol=1e-6)
    assert "2 embeddings of dimension 32 (programming@1)" in out.stderr

    (tmp_path / "queries.txt").write_text("\n".join(texts) + "\n\n")
    out = run_cli(["embed", "--adapter", "programming@1", "--merged", "--registry", registry.root,
                   "--input", tmp_path / "queries.txt", "--output", tmp_path / "vectors.json"])
    assert out.exit_code == 0, out.stderr
    written = json.loads((tmp_path / "vectors.json").read_text())
    assert written["texts"] == texts and written["dimension"] == 32
    assert written["adapter"]["ref"] == "programming@1" and written["adapter"]["merged"] is True
    assert np.allclose(written["embeddings"], want, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--domain", "programming", "a", "--output", "x.csv"], "x.csv: --output must end in .json, .jsonl, .npy"),
    (["--domain", "programming"], "give texts to embed, or --input FILE"),
    (["a"], "give --domain or --adapter"),
    (["--domain", "programming", "--input", "nope.txt"], "nope.txt: input file not found (--input)"),
    (["--domain", "programming", "--input", "bad.jsonl"], "bad.jsonl:2: expected a 'query' or 'text' string field"),
    (["--domain", "programming", "--adapter", "medical", "a"], "is for domain 'medical', not 'programming'"),
])
def test_embed_errors_are_one_line(run_cli, registry, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"query": "fine"}\n{"q": "no field"}\n')
    out = run_cli(["embed", "--registry", registry.root, *args])
    assert out.exit_code != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "x.csv").exists()


def test_similarity_uses_the_calibrated_threshold(run_cli, registry, reference, tmp_path):
    a, b = "how to sort a list", "sorting a python list"
    vectors = reference.encode([a, b], normalize_embeddings=True)
    score = float(vectors[0] @ vectors[1])
    base = ["similarity", "--domain", "programming", "--registry", registry.root, a, b]

    out = run_cli(base)
    assert out.exit_code == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"cosine     {score:.4f}  (programming@1)"
    assert "no calibrated threshold yet" in out.stdout

    registry.update_metrics("programming", {"adapter": {"pairs": {"calibrated_threshold": score - 0.01}}})
    out = run_cli(base)
    assert f"threshold  {score - 0.01:.4f}  (calibrated)" in out.stdout
    assert "decision   HIT" in out.stdout

    registry.update_metrics("programming", {"adapter": {"pairs": {"calibrated_threshold": score + 0.01}}})
    result = json.loads(run_cli([*base, "--json"]).stdout)
    assert result["hit"] is False and result["cosine"] == pytest.approx(score, abs=1e-6)
    assert result["threshold"] == pytest.approx(score + 0.01) and result["threshold_source"] == "calibrated"

    out = run_cli([*base, "--threshold", "-1"])
    assert "(--threshold)" in out.stdout and "decision   HIT" in out.stdout
