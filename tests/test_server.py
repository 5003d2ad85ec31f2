"""`cachetune serve` on a real loopback port: the official openai client, raw HTTP, errors, batching."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the server needs the 'serve' extra")
pytest.importorskip("uvicorn", reason="the server needs the 'serve' extra")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from cachetune.registry import AdapterRegistry  # noqa: E402
from embedding_server import running_server, wait_healthy  # noqa: E402
from make_adapter import make_adapter  # noqa: E402

BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["how do I sort a list of dicts by a key", "convert a string to a datetime object",
         "what are the symptoms of type 2 diabetes"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, embedded_model):
    """Real LoRA adapters on the real base model; medical carries a calibrated threshold."""
    root = tmp_path_factory.mktemp("server")
    reg = AdapterRegistry(root / "reg")
    reg.add(make_adapter(embedded_model, root / "prog", "programming", seed=1))
    reg.add(make_adapter(embedded_model, root / "med", "medical", seed=2, r=4))
    reg.update_metrics("medical", {"adapter": {"pairs": {"calibrated_threshold": 0.72}}})
    return reg


@pytest.fixture(scope="module")
def reference(registry, embedded_model):
    """In-process encoders: each adapter loaded on its own with load_model, and the plain base model."""
    from sentence_transformers import SentenceTransformer

    from cachetune import load_model

    models = {ref: load_model(adapter=ref, registry=registry, device="cpu") for ref in ("programming@1", "medical@1")}
    models[BASE_ID] = SentenceTransformer(embedded_model, device="cpu")
    return lambda ref, texts: models[ref].encode(list(texts), convert_to_numpy=True, normalize_embeddings=True)


@pytest.fixture(scope="module")
def catalog(registry):
    from cachetune.core.serving.catalog import load_catalog

    return load_catalog(registry.root, device="cpu")


@pytest.fixture(scope="module")
def app(catalog):
    from cachetune.core.serving.server import create_app

    return create_app(catalog, max_inputs=16, max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def url(app):
    with running_server(app) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model, ref", [
    ("programming@1", "programming@1"), ("programming", "programming@1"), ("medical", "medical@1"),
    (BASE_ID, BASE_ID), ("all-MiniLM-L6-v2", BASE_ID),
])
def test_openai_client_gets_the_in_process_vectors(client, reference, model, ref):
    # the openai client asks for base64 unless told otherwise, and decodes it itself
    for encoding_format in (openai.NOT_GIVEN, "float"):
        reply = client.embeddings.create(model=model, input=TEXTS, encoding_format=encoding_format)
        got = np.array([item.embedding for item in reply.data])
        assert [item.index for item in reply.data] == [0, 1, 2]
        np.testing.assert_allclose(got, reference(ref, TEXTS), atol=1e-5)
        assert reply.model == ref
    single = client.embeddings.create(model=model, input=TEXTS[2])
    np.testing.assert_allclose(single.data[0].embedding, reference(ref, TEXTS[2:])[0], atol=1e-5)


def test_base64_is_little_endian_float32_of_the_float_reply(url, embedded_model):
    from transformers import AutoTokenizer

    body = {"model": "programming", "input": TEXTS}
    as_float = httpx.post(f"{url}/v1/embeddings", json=body).json()
    as_b64 = httpx.post(f"{url}/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in as_b64["data"]])
    assert decoded.shape == (3, 384)
    np.testing.assert_array_equal(decoded, np.array([d["embedding"] for d in as_float["data"]], dtype=np.float32))
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-5)
    tokens = sum(len(ids) for ids in AutoTokenizer.from_pretrained(embedded_model)(TEXTS)["input_ids"])
    assert as_float["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert as_float["object"] == "list" and as_float["data"][0]["object"] == "embedding"


def test_models_and_health(url, client):
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"programming@1", "medical@1", BASE_ID}
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert models["medical@1"]["domain"] == "medical" and models["medical@1"]["calibrated_threshold"] == 0.72
    assert models["programming@1"]["calibrated_threshold"] is None
    assert models[BASE_ID]["domain"] is None and models[BASE_ID]["dimension"] == 384
    assert client.models.retrieve("medical").id == "medical@1"
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and set(health["models"]) == set(listed)


def _post(url, content: bytes):
    return httpx.post(f"{url}/v1/embeddings", content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize("body, status, param, code", [
    (b'{"model": "programming", "input": ', 400, None, None),
    (b'["programming", "text"]', 400, None, None),
    (b"\xff\xfe", 400, None, None),
    (json.dumps({"input": "a"}).encode(), 422, "model", None),
    (json.dumps({"model": "programming"}).encode(), 422, "input", None),
    (json.dumps({"model": "programming", "input": []}).encode(), 422, "input", None),
    (json.dumps({"model": "programming", "input": [1, 2, 3]}).encode(), 422, "input", None),
    (json.dumps({"model": "programming", "input": ["a", None]}).encode(), 422, "input", None),
    (json.dumps({"model": "programming", "input": "a", "encoding_format": "int8"}).encode(), 422,
     "encoding_format", None),
    (json.dumps({"model": "programming", "input": "a", "dimensions": 128}).encode(), 422, "dimensions", None),
    (json.dumps({"model": "cooking", "input": "a"}).encode(), 404, "model", "model_not_found"),
    (json.dumps({"model": "programming@7", "input": "a"}).encode(), 404, "model", "model_not_found"),
    (json.dumps({"model": "programming", "input": ["a"] * 17}).encode(), 413, "input", "too_many_inputs"),
    (json.dumps({"model": "programming", "input": ["ok", "word " * 300]}).encode(), 413, "input", "input_too_long"),
    (json.dumps({"model": "programming", "input": "x" * 70_000}).encode(), 413, None, "body_too_large"),
])
def test_bad_requests_get_openai_shaped_errors_and_the_server_keeps_serving(url, body, status, param, code):
    reply = _post(url, body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert error["message"] and "Traceback" not in reply.text
    assert _post(url, json.dumps({"model": "programming", "input": "still up"}).encode()).status_code == 200


def test_client_errors_and_unknown_routes(url, client):
    with pytest.raises(openai.NotFoundError, match="the model 'cooking' is not served here"):
        client.embeddings.create(model="cooking", input="a")
    with pytest.raises(openai.APIStatusError) as too_many:
        client.embeddings.create(model="programming", input=["a"] * 17)
    assert too_many.value.status_code == 413
    assert httpx.get(f"{url}/v2/nothing").json()["error"]["message"] == "no route /v2/nothing"
    wrong = httpx.get(f"{url}/v1/embeddings")
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]["message"]


def test_many_clients_at_once_get_their_own_vectors(url, reference, shared_data):
    rows = json.loads((shared_data / "conala" / "conala-train.json").read_text(encoding="utf-8"))
    queries = list(dict.fromkeys(r["intent"] for r in rows))[:32]
    models = ["programming", "medical", BASE_ID]
    barrier = threading.Barrier(len(queries))

    def ask(i):
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as own:
            barrier.wait()
            reply = own.embeddings.create(model=models[i % 3], input=queries[i])
            return reply.model, np.array(reply.data[0].embedding)

    with ThreadPoolExecutor(len(queries)) as pool:
        answers = list(pool.map(ask, range(len(queries))))
    vectors = np.array([vector for _, vector in answers])
    for ref in {ref for ref, _ in answers}:
        mine = [i for i, (r, _) in enumerate(answers) if r == ref]
        np.testing.assert_allclose(vectors[mine], reference(ref, [queries[i] for i in mine]), atol=1e-5)
    assert len({v.tobytes() for v in vectors}) == len(queries)  # distinct queries, distinct vectors


def gated_encoder(catalog):
    """``(encoder, started, release, sizes)``: the programming encoder, whose encodes record their
    size, set ``started`` and wait for ``release`` (so a test decides what queues meanwhile)."""
    from dataclasses import replace

    real = catalog.resolve("programming")
    started, release, sizes = threading.Event(), threading.Event(), []

    def gated(texts):
        sizes.append(len(texts))
        started.set()
        release.wait(timeout=60)
        return real.encode(texts)

    return replace(real, encode=gated), started, release, sizes


def test_requests_queued_during_an_encode_share_the_next_batch(catalog, reference):
    """Hold the first encode until ten more requests are queued: they must come back as one batch."""
    from cachetune.core.serving.batching import EncodeBatcher, QueueFull

    encoder, started, release, sizes = gated_encoder(catalog)
    texts = [f"reverse the list number {i}" for i in range(11)]

    async def scenario():
        batcher = EncodeBatcher(max_batch_size=8, max_queue=10)
        await batcher.start()
        first = asyncio.create_task(batcher.encode(encoder, texts[:1]))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 60)
        rest = [asyncio.create_task(batcher.encode(encoder, [text])) for text in texts[1:]]
        await asyncio.sleep(0)  # let every request reach the queue
        with pytest.raises(QueueFull):
            await batcher.encode(encoder, ["one too many"])
        release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results, batcher.batches

    results, batches = asyncio.run(scenario())
    assert sizes == [1, 8, 2] and batches == 3
    np.testing.assert_allclose(np.concatenate(results), reference("programming@1", texts), atol=1e-5)


def test_a_failing_encode_fails_its_request_only(catalog):
    from dataclasses import replace

    from cachetune.core.serving.catalog import ModelCatalog
    from cachetune.core.serving.server import create_app

    def broken(texts):
        raise RuntimeError("the encoder broke")

    good = catalog.resolve("programming")
    with running_server(create_app(ModelCatalog([good, replace(good, id="broken", encode=broken)], {}))) as url:
        reply = _post(url, json.dumps({"model": "broken", "input": "a"}).encode())
        assert reply.status_code == 500
        assert reply.json()["error"]["type"] == "server_error"
        assert "RuntimeError: the encoder broke" in reply.json()["error"]["message"]
        assert _post(url, json.dumps({"model": "programming@1", "input": "a"}).encode()).status_code == 200


def test_unmerged_adapters_share_one_base_and_merged_match(catalog, registry, reference):
    from cachetune.core.serving.catalog import load_catalog

    assert catalog.resolve("programming").model is catalog.resolve("medical").model is catalog.resolve(BASE_ID).model
    merged = load_catalog(registry, ["medical@1"], merged=True, device="cpu")
    assert set(merged.encoders) == {"medical@1", BASE_ID}
    assert merged.resolve("medical").model is not merged.resolve(BASE_ID).model
    assert merged.resolve("medical").describe()["merged"] is True
    np.testing.assert_allclose(merged.resolve("medical").encode(TEXTS), reference("medical@1", TEXTS), atol=1e-5)
    np.testing.assert_allclose(merged.resolve(BASE_ID).encode(TEXTS), reference(BASE_ID, TEXTS), atol=1e-5)


@pytest.mark.slow  # a fresh interpreter imports torch and loads the model: tens of seconds on a busy machine
def test_cli_serves_and_logs_each_request(registry, tmp_path, reference):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachetune.core.cli", "serve", "--registry", str(registry.root), "--port", "0",
         "--model", "programming", "--log-level", "debug"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("serving "):
                break
        assert lines and lines[-1].startswith("serving sentence-transformers/all-MiniLM-L6-v2, programming@1 at "), \
            "".join(lines)
        url = lines[-1].split(" at ")[1].strip().removesuffix("/v1")
        wait_healthy(url, alive=lambda: proc.poll() is None)
        reply = httpx.post(f"{url}/v1/embeddings", json={"model": "programming", "input": TEXTS[0]}).json()
        np.testing.assert_allclose(reply["data"][0]["embedding"], reference("programming@1", TEXTS[:1])[0], atol=1e-5)
        assert httpx.post(f"{url}/v1/embeddings", json={"model": "medical", "input": "a"}).status_code == 404
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=60)
    log = "".join(lines) + rest
    assert proc.returncode in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal once it has shut down
    assert "Finished server process" in log
    assert "POST /v1/embeddings 200 " in log and "model=programming@1 inputs=1 tokens=" in log
    assert "POST /v1/embeddings 404 " in log
    assert "Traceback" not in log


def test_cli_errors_are_one_line(run_cli, registry):
    out = run_cli(["serve", "--registry", registry.root, "--model", "nope", "--port", "0"])
    assert out.exit_code == 1
    assert out.stderr.startswith("Error: ") and "--model nope: no adapter named 'nope'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = run_cli(["serve", "--registry", registry.root, "--port", port])
    assert out.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_max_wait_merges_a_crowd_split_across_two_batches(catalog, reference):
    """Two requests encode while two queue: after them, the next batch waits for all four
    outstanding clients (the first two come back), not only for as many as the last batch had."""
    from cachetune.core.serving.batching import EncodeBatcher

    encoder, started, release, sizes = gated_encoder(catalog)
    texts = [f"flatten a nested list number {i}" for i in range(6)]

    async def scenario():
        batcher = EncodeBatcher(max_batch_size=8, max_wait_ms=600_000)  # only company ends a wait
        await batcher.start()
        batcher._expected = 2  # a crowd was seen: the wait applies
        first = asyncio.create_task(batcher.encode(encoder, texts[:1]))
        second = asyncio.create_task(batcher.encode(encoder, texts[1:2]))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 60)
        queued = [asyncio.create_task(batcher.encode(encoder, [t])) for t in texts[2:4]]
        await asyncio.sleep(0)
        release.set()
        answered = await asyncio.gather(first, second)  # the first batch's clients come back ...
        for _ in range(20):
            await asyncio.sleep(0)  # ... while the two queued requests wait for them
        assert sizes == [2]
        back = [asyncio.create_task(batcher.encode(encoder, [t])) for t in texts[4:]]
        more = await asyncio.wait_for(asyncio.gather(*queued, *back), timeout=120)
        await batcher.stop()
        return [*answered, *more]

    results = asyncio.run(scenario())
    assert sizes == [2, 4]
    np.testing.assert_allclose(np.concatenate(results), reference("programming@1", texts), atol=1e-5)


def test_max_wait_holds_a_batch_for_the_last_batchs_clients_only(catalog, reference):
    """After a batch of three, the next batch waits for three requests; after a batch of one, never."""
    from cachetune.core.serving.batching import EncodeBatcher

    encoder = catalog.resolve("programming")
    texts = [f"merge dictionary number {i}" for i in range(7)]

    async def scenario():
        batcher = EncodeBatcher(max_batch_size=8, max_wait_ms=600_000)  # ten minutes: only company ends a wait
        await batcher.start()
        first = await asyncio.gather(*(batcher.encode(encoder, [t]) for t in texts[:3]))  # queued at once
        assert batcher.batches == 1
        trickle = [asyncio.create_task(batcher.encode(encoder, [texts[3]]))]
        for _ in range(20):
            await asyncio.sleep(0)  # the worker runs: one request queued is not the three it waits for
        trickle += [asyncio.create_task(batcher.encode(encoder, [t])) for t in texts[4:6]]
        second = await asyncio.wait_for(asyncio.gather(*trickle), timeout=120)
        assert batcher.batches == 2
        batcher._expected = 1  # as after a lone client's batch
        lone = await asyncio.wait_for(batcher.encode(encoder, [texts[6]]), timeout=120)
        await batcher.stop()
        return [*first, *second, lone], batcher.batches

    results, batches = asyncio.run(scenario())
    assert batches == 3
    np.testing.assert_allclose(np.concatenate(results), reference("programming@1", texts), atol=1e-5)


def test_max_wait_counts_from_the_answer_not_from_a_request_queued_during_the_encode(catalog, reference):
    """A request queued while an encode ran longer than --max-wait-ms still waits for the clients
    just answered: the wait is measured from the answer (the worker idling), so it does not go alone."""
    from cachetune.core.serving.batching import EncodeBatcher

    encoder, started, release, sizes = gated_encoder(catalog)
    texts = [f"sort a dictionary by value number {i}" for i in range(4)]

    async def scenario():
        loop = asyncio.get_running_loop()
        batcher = EncodeBatcher(max_batch_size=8, max_wait_ms=3_000)
        await batcher.start()
        batcher._expected = 2  # a crowd was seen: the wait applies
        first = [asyncio.create_task(batcher.encode(encoder, [t])) for t in texts[:2]]
        await loop.run_in_executor(None, started.wait, 60)
        queued = asyncio.create_task(batcher.encode(encoder, [texts[2]]))
        await asyncio.sleep(3.5)  # the encode outlasts the wait counted from this request's arrival
        release.set()
        answered = await asyncio.gather(*first)
        await asyncio.sleep(0.5)  # the first batch's clients take a moment to come back
        assert sizes == [2]  # the queued request is still waiting for them
        back = asyncio.create_task(batcher.encode(encoder, [texts[3]]))
        more = await asyncio.wait_for(asyncio.gather(queued, back), timeout=120)
        await batcher.stop()
        return [*answered, *more]

    results = asyncio.run(scenario())
    assert sizes[:2] == [2, 2]
    np.testing.assert_allclose(np.concatenate(results), reference("programming@1", texts), atol=1e-5)
