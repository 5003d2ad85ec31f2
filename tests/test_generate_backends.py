"""Backends without a big model: openai against a tiny loopback HTTP server (retries, backoff,
bounded concurrency, response formats), vllm through an object with vLLM's offline interface,
transformers with a tiny random causal LM (batched == one at a time)."""

from __future__ import annotations

import json
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cachetune.core.errors import CachetuneError
from cachetune.core.generate.prompting import NEGATIVES, PARAPHRASES, Request, build_conversation
from cachetune.core.plugin_manager import get_plugin_manager

REPLY = {PARAPHRASES: '{"paraphrases": ["put a list in order", "order the items of a list", '
                      '"arrange a list from smallest to largest"]}',
         NEGATIVES: '{"negatives": ["reverse a list", "shuffle a list"]}'}


@pytest.fixture(scope="module")
def templates():
    return get_plugin_manager(load_entrypoints=False).prompt_templates("programming")


def requests_for(templates, queries, seed0=0):
    out = []
    for i, query in enumerate(queries):
        out.append(Request(build_conversation(templates, PARAPHRASES, query, 3), seed0 + 2 * i, PARAPHRASES, 3))
        out.append(Request(build_conversation(templates, NEGATIVES, query, 2), seed0 + 2 * i + 1, NEGATIVES, 2))
    return out


# -- a tiny OpenAI-compatible server on loopback ------------------------------------------------

class FakeOpenAI:
    """Serves /v1/models and /v1/chat/completions; ``statuses`` are answered first, in order.
    ``hold=(text, event)``: requests about ``text`` are answered only once ``event`` is set."""

    def __init__(self, statuses=(), reject_format=None, barrier=None, reject_status=422, hold=None):
        self.statuses = list(statuses)
        self.hold, self.hold_timed_out = hold, False
        self.reject_format, self.reject_status = reject_format, reject_status
        self.barrier = barrier
        self.bodies, self.in_flight, self.max_in_flight = [], 0, 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload, headers=()):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.bodies.append(body)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    status = fake.statuses.pop(0) if fake.statuses else 200
                try:
                    if fake.barrier is not None:
                        fake.barrier.wait()
                    if fake.hold and fake.hold[0] in body["messages"][-1]["content"]:
                        fake.hold_timed_out |= not fake.hold[1].wait(timeout=20)
                    fmt = (body.get("response_format") or {}).get("type")
                    if fake.reject_format and fmt in fake.reject_format:
                        return self._send(fake.reject_status,
                                          {"detail": [{"loc": ["body", "response_format", "type"]}]})
                    if status != 200:
                        return self._send(status, {"error": "try later"}, [("Retry-After", "0")])
                    kind = PARAPHRASES if '"paraphrases"' in body["messages"][-1]["content"] else NEGATIVES
                    self._send(200, {"choices": [{"message": {"role": "assistant", "content": REPLY[kind]}}],
                                     "usage": {"prompt_tokens": 50, "completion_tokens": 20}})
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def openai_backend(url, **options):
    from cachetune.plugins.openai_generator import OpenAIGenerator

    return OpenAIGenerator({"base_url": url, "retry_backoff": 0.001, "json_schema": False, **options})


def test_openai_retries_429_and_500_with_backoff(templates):
    with FakeOpenAI(statuses=[429, 500]) as server:
        gen = openai_backend(server.url, concurrency=1)
        [result] = gen.generate(requests_for(templates, ["sort a list"])[:1])
        gen.close()
    assert result.text == REPLY[PARAPHRASES] and result.error is None
    assert (result.prompt_tokens, result.completion_tokens) == (50, 20)
    assert gen.retries == 2 and len(server.bodies) == 3
    assert gen.label == "openai:fake-model"  # the server's model, asked at /v1/models
    body = server.bodies[-1]
    assert body["model"] == "fake-model" and body["seed"] == 0 and body["max_tokens"] == 256


def test_openai_gives_up_after_max_retries_with_one_line(templates):
    with FakeOpenAI(statuses=[503] * 10) as server:
        gen = openai_backend(server.url, max_retries=2, concurrency=1)
        with pytest.raises(CachetuneError, match="failed after 2 retries: HTTP 503"):
            gen.generate(requests_for(templates, ["sort a list"])[:1])
        gen.close()
    assert len(server.bodies) == 3


def test_openai_unreachable_server_is_one_line(templates):
    gen = openai_backend("http://127.0.0.1:9/v1", max_retries=1, timeout=2)
    with pytest.raises(CachetuneError, match="openai backend: GET http://127.0.0.1:9/v1/models failed"):
        gen.generate(requests_for(templates, ["sort a list"])[:1])


def test_openai_other_4xx_fails_only_that_request(templates):
    with FakeOpenAI(statuses=[400]) as server:
        gen = openai_backend(server.url, concurrency=1)
        first, second = gen.generate(requests_for(templates, ["sort a list"]))
        gen.close()
    assert first.error.startswith("request_failed: HTTP 400") and second.text == REPLY[NEGATIVES]
    assert gen.retries == 0


def test_openai_concurrency_is_bounded(templates):
    # Four requests must be in flight together (the barrier waits for four), and never more.
    barrier = threading.Barrier(4, timeout=20)
    with FakeOpenAI(barrier=barrier) as server:
        gen = openai_backend(server.url, concurrency=4)
        results = gen.generate(requests_for(templates, ["a b", "c d", "e f", "g h"]))
        gen.close()
    assert [r.text for r in results] == [REPLY[PARAPHRASES], REPLY[NEGATIVES]] * 4
    assert server.max_in_flight == 4


def test_openai_writes_each_query_while_the_batch_is_in_flight(tmp_path, templates):
    """A kill mid-batch keeps the finished queries: their triplets are on disk while the last
    query's replies are still held back by the server."""
    from cachetune.core.generate.pipeline import GenerateConfig, generate_triplets
    from cachetune.core.generate.triplets_file import scan_output

    queries = ["sort a list", "read a file", "merge two dicts", "parse a date"]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "query": q, "domain": "programming"}) + "\n"
                            for i, q in enumerate(queries)))
    out = tmp_path / "triplets.jsonl"
    release, on_disk = threading.Event(), []

    class Bar:
        def update(self, n):
            on_disk.append(scan_output(out, "programming")[0])  # what a rerun after a kill would skip
            if len(on_disk) == 3:
                release.set()  # the held query may now be answered

        def close(self):
            pass

    with FakeOpenAI(hold=("parse a date", release)) as server:
        # both requests at once: the held query's negatives do not hold back the others' paraphrases
        config = GenerateConfig(domain="programming", input=data, output=out, batch_size=4,
                                embedding_filter=False, ask_together=True)
        summary = generate_triplets(config, templates, lambda: openai_backend(server.url, concurrency=8),
                                    progress=lambda total: Bar())
    assert not server.hold_timed_out  # three queries were written before the fourth was answered
    assert on_disk[2] == {"q0", "q1", "q2"} and on_disk[3] == {"q0", "q1", "q2", "q3"}
    assert summary["queries_done"] == 4 and summary["llm_requests"] == 8


@pytest.mark.parametrize("status", [422, 500])  # llama-cpp-python's server answers 500
def test_openai_falls_back_through_response_formats(templates, status):
    with FakeOpenAI(reject_format={"json_schema"}, reject_status=status) as server:
        gen = openai_backend(server.url, json_schema=True, concurrency=1)
        results = gen.generate(requests_for(templates, ["sort a list"]))
        gen.close()
    formats = [(b.get("response_format") or {}).get("type") for b in server.bodies]
    assert formats == ["json_schema", "json_object", "json_object"]
    assert server.bodies[-1]["response_format"]["schema"]["properties"]["negatives"]["maxItems"] == 2
    assert all(r.error is None for r in results) and gen.response_format == "json_object"
    assert gen.retries == 0  # a refused format is not retried, it falls back


# -- vllm, through an object with vLLM's offline interface ---------------------------------------

class FakeVllm:
    """A stand-in ``vllm`` module (vLLM cannot be installed here): records what the backend asks."""

    def __init__(self, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}", structured=True):
        self.engines, self.chat_calls, self.generate_calls = [], [], []
        fake = self

        class SamplingParams:
            def __init__(self, n=1, temperature=1.0, max_tokens=16, seed=None, **extra):
                self.n, self.temperature, self.max_tokens = n, temperature, max_tokens
                self.seed, self.extra = seed, extra

        class StructuredOutputsParams:
            def __init__(self, json=None):
                self.json = json

        def answer(prompt_text):
            kind = PARAPHRASES if '"paraphrases"' in prompt_text.rsplit("Question:", 1)[-1] else NEGATIVES
            text = REPLY[kind]
            return types.SimpleNamespace(prompt_token_ids=list(range(40)),
                                         outputs=[types.SimpleNamespace(text=text, token_ids=list(range(12)))])

        class LLM:
            def __init__(self, model, tensor_parallel_size=1, **kwargs):
                fake.engines.append({"model": model, "tensor_parallel_size": tensor_parallel_size, **kwargs})

            def get_tokenizer(self):
                return types.SimpleNamespace(chat_template=chat_template)

            def chat(self, messages, sampling_params=None, use_tqdm=True, **kwargs):
                fake.chat_calls.append((messages, sampling_params))
                return [answer(conv[-1]["content"]) for conv in messages]

            def generate(self, prompts, sampling_params=None, use_tqdm=True, **kwargs):
                fake.generate_calls.append((prompts, sampling_params))
                return [answer(p) for p in prompts]

        self.module = types.ModuleType("vllm")
        self.module.LLM, self.module.SamplingParams = LLM, SamplingParams
        self.sampling = types.ModuleType("vllm.sampling_params")
        if structured:
            self.sampling.StructuredOutputsParams = StructuredOutputsParams
        self.module.sampling_params = self.sampling

    def install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "vllm", self.module)
        monkeypatch.setitem(sys.modules, "vllm.sampling_params", self.sampling)
        return self


def test_vllm_batches_each_call_with_per_request_params(tmp_path, run_cli, monkeypatch):
    fake = FakeVllm().install(monkeypatch)
    inp = tmp_path / "train.jsonl"
    inp.write_text("".join(json.dumps({"id": f"programming-{i}", "query": q}) + "\n"
                           for i, q in enumerate(["sort a list", "copy a list", "join a list", "split a list",
                                                  "slice a list"])))
    result = run_cli(["generate", "--domain", "programming", "--input", inp, "--output", tmp_path / "t.jsonl",
                      "--backend", "vllm", "--model", "Qwen/Qwen2.5-Coder-7B-Instruct", "-o", "tensor_parallel", "4",
                      "--batch-size", "2", "--temperature", "0.5", "--max-tokens", "128", "--no-embedding-filter",
                      "--ask-together"])
    assert result.exit_code == 0, result.stderr
    assert fake.engines == [{"model": "Qwen/Qwen2.5-Coder-7B-Instruct", "tensor_parallel_size": 4, "seed": 0,
                             "enable_prefix_caching": True}]
    # one engine call per batch of 2 queries: 2 requests per query, in order
    assert [len(messages) for messages, _ in fake.chat_calls] == [4, 4, 2]
    params = [p for _, ps in fake.chat_calls for p in ps]
    assert {(p.n, p.temperature, p.max_tokens) for p in params} == {(1, 0.5, 128)}
    assert len({p.seed for p in params}) == 10
    assert [p.extra["structured_outputs"].json["required"] for p in params[:2]] == [["paraphrases"], ["negatives"]]
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(rows) == 15 and {r["generator"] for r in rows} == {"vllm:Qwen/Qwen2.5-Coder-7B-Instruct"}
    assert [r["negative"] for r in rows[:3]] == ["reverse a list", "shuffle a list", "reverse a list"]


def test_vllm_without_chat_template_prompts_plain_text(monkeypatch, templates):
    fake = FakeVllm(chat_template=None, structured=False).install(monkeypatch)
    from cachetune.plugins.vllm_generator import VllmGenerator

    gen = VllmGenerator({"model": "some/base-model"})
    results = gen.generate(requests_for(templates, ["sort a list"]))
    assert [r.text for r in results] == [REPLY[PARAPHRASES], REPLY[NEGATIVES]]
    [(prompts, params)] = fake.generate_calls
    assert prompts[0].startswith("System: ") and prompts[0].endswith("Assistant:")
    assert params[0].extra == {}  # no structured outputs in this vLLM: plain prompting
    assert (results[0].prompt_tokens, results[0].completion_tokens) == (40, 12)


def test_vllm_missing_is_one_line(tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    inp = tmp_path / "train.jsonl"
    inp.write_text(json.dumps({"id": "x", "query": "sort a list"}) + "\n")
    result = run_cli(["generate", "--domain", "programming", "--input", inp, "--output", tmp_path / "t.jsonl",
                      "--backend", "vllm", "--no-embedding-filter"])
    assert result.exit_code == 1 and "pip install 'cachetune[vllm]'" in result.stderr
    assert not (tmp_path / "t.jsonl").exists() or (tmp_path / "t.jsonl").read_text() == ""


# -- transformers, with a tiny random causal LM ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory, embedded_model):
    """A random 2-layer Llama with the embedded model's tokenizer and a minimal chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    tokenizer.chat_template = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                               "{% if add_generation_prompt %}[assistant] {% endif %}")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_transformers_batched_generate_matches_one_at_a_time(tiny_causal_lm, templates):
    from cachetune.plugins.transformers_generator import TransformersGenerator

    requests = requests_for(templates, ["sort a list", "how do I read a whole file into one string at once"])
    batched = TransformersGenerator({"model": tiny_causal_lm, "temperature": 0, "max_tokens": 8, "concurrency": 4})
    single = TransformersGenerator({"model": tiny_causal_lm, "temperature": 0, "max_tokens": 8, "concurrency": 1})
    together, alone = batched.generate(requests), single.generate(requests)
    # left padding and the attention mask make a batch answer exactly what each prompt alone gets
    assert [r.text for r in together] == [r.text for r in alone]
    assert all(r.completion_tokens <= 8 and r.prompt_tokens > 300 for r in together)
    assert together[0].prompt_tokens < together[2].prompt_tokens + 20
    assert batched.label == f"transformers:{tiny_causal_lm}"


def test_transformers_sampled_request_is_answered_the_same_alone_and_in_a_batch(tiny_causal_lm, templates):
    """Each request samples from its own seed: its reply does not depend on the batch it falls in
    (before, a micro-batch was seeded with its first request's seed)."""
    from dataclasses import replace

    from cachetune.plugins.transformers_generator import TransformersGenerator

    requests = requests_for(templates, ["sort a list", "how do I read a whole file into one string at once",
                                        "merge two dictionaries"])
    options = {"model": tiny_causal_lm, "temperature": 1.0, "max_tokens": 12}
    batched = TransformersGenerator({**options, "concurrency": 8})
    single = TransformersGenerator({**options, "concurrency": 1})
    last = requests[-1]
    alone = single.generate([last])[0].text
    in_front = batched.generate([last] + list(requests[:-1]))[0].text
    behind = batched.generate(list(requests))[-1].text
    assert alone == in_front == behind
    # Sampling is real: another seed draws another reply.
    reseeded = [single.generate([replace(last, seed=last.seed + k)])[0].text for k in range(1, 4)]
    assert any(text != alone for text in reseeded)


def test_transformers_needs_a_model():
    from cachetune.plugins.transformers_generator import TransformersGenerator

    with pytest.raises(CachetuneError, match="needs --model"):
        TransformersGenerator({})


def test_llama_cpp_defaults_one_instance_per_core(tmp_path):
    from cachetune.core.train.runtime import physical_cores
    from cachetune.plugins.llama_cpp_generator import LlamaCppGenerator

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")  # nothing loads before the first request

    def shape(**opts):
        gen = LlamaCppGenerator({"model": str(gguf), **opts})
        return gen.workers, gen.threads_per_worker, gen.batch_size

    # batched (the default: 16 requests decoded together per instance): 4 queries per slot
    assert shape(n_threads=1) == (1, 1, 64)
    assert shape(n_threads=2) == (2, 1, 128)
    assert shape(n_threads=8) == (4, 2, 256)  # at most 4 instances; the other cores become their threads
    assert shape(n_threads=2, concurrency=1, parallel=8) == (1, 2, 32)
    assert shape(n_threads=2, parallel=4) == (2, 1, 32)
    # one request at a time per instance
    assert shape(n_threads=1, parallel=1) == (1, 1, 1)
    assert shape(n_threads=2, parallel=1) == (2, 1, 1)  # two single-threaded instances, one query's two requests
    assert shape(n_threads=3, parallel=1) == (3, 1, 2)
    assert shape(n_threads=2, concurrency=1, parallel=1) == (1, 2, 1)
    cores = physical_cores()
    assert shape()[0] == min(cores, 4) and shape()[0] * shape()[1] <= cores


# -- options each backend declares -----------------------------------------------------------------

@pytest.mark.parametrize("option, message", [
    (["-o", "tensor_paralel", "4"], "backend 'vllm' has no option 'tensor_paralel' (its options: "),
    (["-o", "tensor_parallel", "four"], "backend 'vllm': option 'tensor_parallel' takes an integer, got 'four'"),
    (["-o", "json_schema", "maybe"], "backend 'vllm': option 'json_schema' takes true or false, got 'maybe'"),
    (["-o", "temperature", "0.1"], "'temperature' is a generate setting, not a -o option"),
])
def test_bad_backend_option_is_one_line_before_any_model_loads(tmp_path, run_cli, monkeypatch, option, message):
    fake = FakeVllm().install(monkeypatch)
    inp = tmp_path / "train.jsonl"
    inp.write_text(json.dumps({"id": "x", "query": "sort a list"}) + "\n")
    result = run_cli(["generate", "--domain", "programming", "--input", inp, "--output", tmp_path / "t.jsonl",
                      "--backend", "vllm", *option])
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
        line for line in result.stderr.splitlines() if message in line]
    assert fake.engines == [] and not (tmp_path / "t.jsonl").exists()


def test_plugins_lists_each_backends_options(run_cli):
    result = run_cli(["plugins", "--json"])
    rows = {row["name"]: row for row in json.loads(result.stdout)["plugins"]}
    vllm_options = {o["name"]: o for o in rows["vllm"]["backends"][0]["options"]}
    assert vllm_options["tensor_parallel"] == {"name": "tensor_parallel", "type": "int", "default": 1,
                                               "help": "GPUs per model."}
    assert {"base_url", "api_key", "concurrency"} <= {o["name"] for o in rows["openai"]["backends"][0]["options"]}
    assert rows["programming"]["backends"] == []
    text = run_cli(["plugins"]).stdout
    assert "  backend vllm options:" in text and "    -o tensor_parallel INT (default 1): GPUs per model." in text


def test_run_config_generate_options_reach_the_backend(tmp_path, monkeypatch):
    from cachetune.core.pipeline.config import resolve_config
    from cachetune.core.pipeline.run import Pipeline
    from cachetune.core.plugin_manager import get_plugin_manager

    pm = get_plugin_manager(load_entrypoints=False)
    config_file = tmp_path / "run.yaml"
    config_file.write_text("generate:\n  backend: vllm\n  options:\n    tensor_parallel: 2\n", encoding="utf-8")
    config = resolve_config(pm.get_domain("programming"), config_file, sets=["generate.options.json_schema=false"])
    pipeline = Pipeline(pm, dict(config, run=dict(config["run"], workdir=str(tmp_path / "w"))), log=lambda m: None)
    assert (pipeline.backend_options["tensor_parallel"], pipeline.backend_options["json_schema"]) == (2, False)
    config_file.write_text("generate:\n  backend: vllm\n  options:\n    n_threads: 2\n", encoding="utf-8")
    config = resolve_config(pm.get_domain("programming"), config_file)
    with pytest.raises(CachetuneError, match="backend 'vllm' has no option 'n_threads'"):
        Pipeline(pm, config, log=lambda m: None)
