"""ONNX serving: exports cached beside the adapter and checked on load, fp32 = PyTorch, int8, CLI, server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="ONNX serving needs the 'onnx' extra")

from cachetune.core.errors import CachetuneError  # noqa: E402
from cachetune.registry import AdapterRegistry  # noqa: E402
from make_adapter import make_adapter  # noqa: E402

TEXTS = ["how do I sort a list of dicts by a key", "convert a string to a datetime object",
         "what are the symptoms of type 2 diabetes", "a", "read a csv file into a pandas dataframe " * 12]


def encode(model, texts=TEXTS, normalize_embeddings=True, **kwargs):
    return model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=normalize_embeddings, **kwargs)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("onnx")
    reg = AdapterRegistry(root / "reg")
    reg.add(make_adapter(tiny_model, root / "prog", "programming", seed=1))
    reg.update_metrics("programming", {"adapter": {"pairs": {"calibrated_threshold": 0.64}}})
    return reg


@pytest.fixture(scope="module")
def torch_vectors(registry):
    from cachetune import load_model

    return encode(load_model(domain="programming", registry=registry, merged=True, device="cpu"))


def test_fp32_export_matches_pytorch_and_is_cached_beside_the_adapter(registry, torch_vectors):
    from cachetune import load_model
    from cachetune.core.serving.onnx import INFO_FILE, MODEL_FILE

    model = load_model(domain="programming", registry=registry, backend="onnx")
    folder = registry.resolve("programming") / "onnx" / "fp32"
    assert (folder / MODEL_FILE).is_file()
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["source"]["ref"] == "programming@1"
    assert info["source"]["adapter_files_sha256"] == registry.get("programming")["files"]
    # the batch mixes a 1-token text with a truncated long one: padding and truncation as PyTorch does them
    np.testing.assert_allclose(encode(model), torch_vectors, atol=1e-4)
    np.testing.assert_allclose(encode(model, batch_size=2), torch_vectors, atol=1e-4)
    single = model.encode(TEXTS[0], normalize_embeddings=True)
    assert single.shape == (torch_vectors.shape[1],)
    served = model.cachetune_adapter
    assert (served.ref, served.backend, served.merged, served.calibrated_threshold) == \
        ("programming@1", "onnx-fp32", True, 0.64)

    stamp = (folder / MODEL_FILE).stat().st_mtime_ns
    load_model(adapter="programming@1", registry=registry, backend="onnx")
    assert (folder / MODEL_FILE).stat().st_mtime_ns == stamp  # reused, not exported again
    assert registry.verify() == []  # the export is no stray folder


def test_int8_export_is_smaller_and_close(registry, torch_vectors):
    from cachetune import load_model
    from cachetune.core.serving.onnx import MODEL_FILE

    model = load_model(domain="programming", registry=registry, backend="onnx", quantize="int8")
    assert model.cachetune_adapter.backend == "onnx-int8"
    folder = registry.resolve("programming") / "onnx"
    assert (folder / "int8" / MODEL_FILE).stat().st_size < (folder / "fp32" / MODEL_FILE).stat().st_size
    vectors = encode(model)
    cosines = (vectors * torch_vectors).sum(axis=1)
    assert cosines.min() > 0.9, cosines
    assert np.abs(vectors - torch_vectors).max() > 1e-6  # really quantized


def test_a_corrupt_or_stale_export_is_refused_and_rebuilt_on_request(registry, tmp_path, run_cli):
    from cachetune import load_model
    from cachetune.core.serving.onnx import INFO_FILE, MODEL_FILE

    load_model(domain="programming", registry=registry, backend="onnx")
    folder = registry.resolve("programming") / "onnx" / "fp32"
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(CachetuneError, match="ONNX export file is corrupt") as err:
        load_model(domain="programming", registry=registry, backend="onnx")
    assert str(err.value.path) == str(folder / MODEL_FILE)

    out = run_cli(["adapters", "export", "programming", "--format", "onnx", "--registry", registry.root])
    assert out.exit_code == 1 and "ONNX export file is corrupt" in out.stderr
    out = run_cli(["adapters", "export", "programming", "--format", "onnx", "--rebuild", "--registry", registry.root])
    assert out.exit_code == 0, out.stderr
    load_model(domain="programming", registry=registry, backend="onnx")

    info = json.loads((folder / INFO_FILE).read_text())
    info["source"]["adapter_files_sha256"]["adapter_model.safetensors"] = "0" * 64
    (folder / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(CachetuneError, match="built from other adapter files"):
        load_model(domain="programming", registry=registry, backend="onnx")
    out = run_cli(["adapters", "export", "programming", "--format", "onnx", "--rebuild", "--registry", registry.root])
    assert out.exit_code == 0, out.stderr
    assert load_model(domain="programming", registry=registry, backend="onnx").cachetune_adapter.ref == "programming@1"


def test_cli_exports_a_standalone_folder_that_embed_loads(registry, torch_vectors, tmp_path, run_cli):
    from cachetune import load_model
    from cachetune.core.serving.onnx import INFO_FILE

    out_dir = tmp_path / "exported"
    out = run_cli(["adapters", "export", "programming", "--format", "onnx", "--quantize", "int8",
                   "--output", out_dir, "--registry", registry.root])
    assert out.exit_code == 0, out.stderr
    assert f"exported programming@1 (ONNX int8) -> {out_dir}" in out.stdout
    assert json.loads((out_dir / INFO_FILE).read_text())["calibrated_threshold"] == 0.64
    model = load_model(adapter=str(out_dir))
    assert (model.cachetune_adapter.ref, model.cachetune_adapter.backend) == ("programming@1", "onnx-int8")
    with pytest.raises(CachetuneError, match="for domain 'programming', not 'medical'"):
        load_model(adapter=str(out_dir), domain="medical")

    embedded = tmp_path / "vectors.npy"
    out = run_cli(["embed", "--adapter", out_dir, "--output", embedded, *TEXTS[:2]])
    assert out.exit_code == 0, out.stderr
    np.testing.assert_allclose(np.load(embedded), encode(model, TEXTS[:2], normalize_embeddings=False), atol=1e-6)
    out = run_cli(["similarity", "--domain", "programming", "--registry", registry.root, "--backend", "onnx",
                   "--json", TEXTS[0], TEXTS[0]])
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["cosine"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["adapters", "export", "programming", "--quantize", "int8", "--output", "x"], "--quantize needs --format onnx"),
    (["adapters", "export", "programming"], "--output is required (except with --format onnx)"),
    (["adapters", "export", "programming", "--merged", "--format", "onnx"], "--merged contradicts --format onnx"),
    (["embed", "--domain", "programming", "--quantize", "int8", "a"], "--quantize needs --backend onnx"),
    (["serve", "--quantize", "int8"], "--quantize needs --backend onnx"),
])
def test_option_errors_are_one_line(run_cli, registry, args, message):
    out = run_cli([*args, "--registry", registry.root])
    assert out.exit_code != 0 and message in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3  # click's usage line, its hint and the error


def test_an_adapter_folder_outside_the_registry_is_not_exported(registry):
    from cachetune import load_model

    with pytest.raises(CachetuneError, match="--backend onnx serves registered adapters and ONNX exports"):
        load_model(adapter=str(registry.resolve("programming")), backend="onnx")


def test_server_serves_onnx_encoders(registry, torch_vectors):
    pytest.importorskip("starlette", reason="the server needs the 'serve' extra")
    httpx = pytest.importorskip("httpx")
    from embedding_server import running_server

    from cachetune.core.serving.catalog import load_catalog
    from cachetune.core.serving.server import create_app

    catalog = load_catalog(registry.root, backend="onnx")
    assert set(catalog.encoders) == {registry.get("programming")["base_model"]["id"], "programming@1"}
    with running_server(create_app(catalog)) as url:
        # the long text is past the tiny model's 64 tokens, which the server refuses (413)
        reply = httpx.post(f"{url}/v1/embeddings", json={"model": "programming", "input": TEXTS[:4]}).json()
        models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    vectors = np.array([row["embedding"] for row in reply["data"]])
    np.testing.assert_allclose(vectors, torch_vectors[:4], atol=1e-4)
    assert models["programming@1"]["backend"] == "onnx-fp32"
    assert models["programming@1"]["calibrated_threshold"] == 0.64


@pytest.mark.slow
def test_real_model_fp32_within_1e4_of_pytorch_and_int8_close(tmp_path, embedded_model, shared_data):
    """The real all-MiniLM-L6-v2 with a LoRA, on 256 real CoNaLa queries."""
    from cachetune import load_model

    reg = AdapterRegistry(tmp_path / "reg")
    reg.add(make_adapter(embedded_model, tmp_path / "prog", "programming", seed=3, scale=0.02))
    rows = json.loads((shared_data / "conala" / "conala-train.json").read_text())
    texts = list(dict.fromkeys(r["intent"] for r in rows))[:256]
    reference = encode(load_model(domain="programming", registry=reg, merged=True, device="cpu"), texts)
    fp32 = encode(load_model(domain="programming", registry=reg, backend="onnx"), texts)
    assert np.abs(fp32 - reference).max() < 1e-4
    int8 = encode(load_model(domain="programming", registry=reg, backend="onnx", quantize="int8"), texts)
    cosines = (int8 * reference).sum(axis=1)
    assert cosines.mean() > 0.98 and cosines.min() > 0.9, (cosines.mean(), cosines.min())


def test_serve_cli_with_onnx_backend_starts(registry):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachetune.core.cli", "serve", "--registry", str(registry.root), "--port", "0",
         "--backend", "onnx", "--quantize", "int8"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("serving ") or "Error" in line:
                break
        assert line.startswith("serving ") and "programming@1" in line, line
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
