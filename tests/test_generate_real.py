"""Generation with real parts: Qwen2.5-Coder-0.5B through llama-cpp-python, the openai backend
against a real loopback ``python -m llama_cpp.server``, a SIGKILLed run resumed, the
transformers backend on a real GGUF, and mining with the real base model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIELDS = {"anchor", "positive", "negative", "query_id", "domain", "negative_source", "generator"}
REPO = Path(__file__).resolve().parent.parent


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def check_triplets(rows, queries, generator):
    by_query = {q["id"]: q["query"] for q in queries}
    for row in rows:
        assert set(row) == FIELDS
        assert row["positive"] == by_query[row["query_id"]]
        assert row["anchor"].strip() and row["negative"].strip()
        assert row["anchor"].casefold() != row["positive"].casefold()
        assert row["negative"].casefold() != row["positive"].casefold()
        assert row["generator"] == generator and row["negative_source"] == "llm"


@pytest.fixture(scope="module")
def conala_train(tmp_path_factory, shared_data):
    """Real CoNaLa queries, prepared by the real prepare stage."""
    from cachetune.core.plugin_manager import get_plugin_manager
    from cachetune.core.data.prepare import prepare

    out = tmp_path_factory.mktemp("conala")
    pm = get_plugin_manager(load_entrypoints=False)
    prepare(pm.get_domain("programming"), out, source=str(shared_data / "conala" / "conala-train.json"), limit=40)
    return out / "train.jsonl"


def first_queries(path, n):
    return [json.loads(line) for line in Path(path).read_text().splitlines()[:n]]


@pytest.mark.slow
def test_llama_cpp_qwen_end_to_end_and_resume(tmp_path, run_cli, conala_train, qwen_gguf):
    out = tmp_path / "triplets.jsonl"
    args = ["generate", "--domain", "programming", "--input", conala_train, "--output", out, "--model", qwen_gguf,
            "--limit", "3", "--batch-size", "3"]
    result = run_cli(args)
    assert result.exit_code == 0, result.stderr
    rows = read_rows(out)
    stats = json.loads((tmp_path / "triplets.jsonl.stats.json").read_text())
    assert stats["triplets_written"] == len(rows) >= 3
    assert stats["queries_done"] == 3 and stats["llm_requests"] + stats["llm_requests_skipped"] == 6
    assert stats["tokens"]["completion"] > 0 and stats["queries_per_s"] > 0
    check_triplets(rows, first_queries(conala_train, 3), "llama-cpp:qwen2.5-coder-0.5b-instruct-q4_k_m")
    # the JSON-schema grammar leaves nothing unparseable
    assert not any(k.endswith(("unparseable_output", "empty_output")) for k in stats["rejected"])
    before = out.read_text()
    again = run_cli(args)
    assert again.exit_code == 0 and out.read_text().startswith(before)
    # every query done before is skipped, including one whose outputs were all rejected
    assert json.loads((tmp_path / "triplets.jsonl.stats.json").read_text())["queries_skipped_done"] == \
        stats["queries_done"] == 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(qwen_gguf, tmp_path_factory):
    """A real ``python -m llama_cpp.server`` on loopback; ready once /v1/models answers."""
    import httpx

    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", qwen_gguf, "--model_alias", "qwen-coder-test",
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--verbose", "False"],
            stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready in 120 s: {log.read_text()[-2000:]}")
            try:  # wait on the process, not blindly: a server that died ends the wait at once
                proc.wait(timeout=0.25)
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            except subprocess.TimeoutExpired:
                pass
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_openai_backend_against_a_loopback_llama_cpp_server(tmp_path, run_cli, conala_train, llama_server):
    out = tmp_path / "triplets.jsonl"
    result = run_cli(["generate", "--domain", "programming", "--input", conala_train, "--output", out,
                      "--backend", "openai", "-o", "base_url", llama_server, "-o", "api_key", "unused",
                      "--limit", "3", "-o", "concurrency", "2"])
    assert result.exit_code == 0, result.stderr
    rows = read_rows(out)
    stats = json.loads((tmp_path / "triplets.jsonl.stats.json").read_text())
    assert stats["triplets_written"] == len(rows) >= 3
    assert stats["llm_requests"] + stats["llm_requests_skipped"] == 6
    assert stats["tokens"]["prompt"] > 3000  # the few-shot prompt was really sent and counted
    check_triplets(rows, first_queries(conala_train, 3), "openai:qwen-coder-test")
    # llama_cpp.server refuses OpenAI's json_schema format; the backend fell back to its json_object+schema
    assert not any(k.endswith("request_failed") for k in stats["rejected"])


def wait_for_lines(proc, path, count, deadline_s=180):
    """Wait until ``path`` holds ``count`` complete lines, watching ``proc`` (no blind sleep)."""
    deadline = time.monotonic() + deadline_s
    while not (path.exists() and path.read_bytes().count(b"\n") >= count):
        assert time.monotonic() < deadline, f"fewer than {count} lines in {deadline_s} s"
        try:
            proc.wait(timeout=0.05)
            pytest.fail(f"generate ended (exit {proc.returncode}) before it could be stopped")
        except subprocess.TimeoutExpired:
            pass


@pytest.mark.slow
def test_ctrl_c_then_sigkill_mid_run_then_rerun_has_no_duplicate_and_no_torn_line(tmp_path, conala_train,
                                                                                  smollm_gguf):
    out = tmp_path / "triplets.jsonl"
    cmd = [sys.executable, "-c", "from cachetune.core.cli import entry; entry()",
           "generate", "--domain", "programming", "--input", str(conala_train), "--output", str(out),
           "--model", smollm_gguf, "--max-tokens", "48", "--limit", "8", "--no-embedding-filter", "--seed", "3",
           "--batch-size", "2"]  # several batches: the first is written while the next ones still run
    env = dict(os.environ, PYTHONPATH=str(REPO))

    # Ctrl-C: a clean stop, a summary, exit 130. A shell without job control starts background jobs with
    # SIGINT ignored, and Python then keeps it ignored: give the child the default, as a terminal would.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for_lines(proc, out, 1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "queries done" in stdout and "rerun the same command to resume" in stderr
    stats = json.loads((tmp_path / "triplets.jsonl.stats.json").read_text())
    assert stats["interrupted"] is True and stats["queries_done"] >= 1
    assert out.read_bytes().endswith(b"\n")
    after_ctrl_c = out.read_bytes().count(b"\n")

    # SIGKILL: no chance to clean up
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_lines(proc, out, after_ctrl_c + 2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = read_rows_tolerant(out)

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    rows = [json.loads(line) for line in raw.decode().splitlines()]  # every line parses: nothing torn
    # each query's lines are one contiguous block: no query was written twice
    blocks = [qid for i, qid in enumerate(r["query_id"] for r in rows) if i == 0 or rows[i - 1]["query_id"] != qid]
    assert len(blocks) == len(set(blocks))
    assert len({(r["query_id"], r["anchor"], r["negative"]) for r in rows}) == len(rows)
    # the lines the killed run finished are kept as they were (all but its last query's)
    keep = [r for r in killed if r["query_id"] != killed[-1]["query_id"]]
    assert rows[: len(keep)] == keep
    stats = json.loads((tmp_path / "triplets.jsonl.stats.json").read_text())
    done = {r["query_id"] for r in rows} | set(stats["queries_without_triplets_ids"])
    assert done == {q["id"] for q in first_queries(conala_train, 8)}
    assert stats["finished"] and len(stats["previous_runs"]) >= 1


def read_rows_tolerant(path):
    """The complete lines of a file a killed writer may have left torn."""
    data = Path(path).read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].decode().splitlines()]


@pytest.mark.slow
def test_llama_cpp_batched_decoding_same_prompts_seeded_and_valid(smollm_gguf):
    """Several requests in one llama.cpp batch: the prompts create_chat_completion sends, each
    request sampled with its own seed, every reply held to the JSON-schema grammar, replies
    handed over as they finish. (Not bit for bit the same reply in another batch: llama.cpp's
    arithmetic depends on the batch and cache.) Alone in its batch, with the grammar applied
    first, a request gets create_chat_completion's very reply: same prompt, sampler chain and seed."""
    import json as json_

    from cachetune.core.generate.pipeline import request_seed
    from cachetune.core.generate.prompting import NEGATIVES, PARAPHRASES, Request, build_conversation
    from cachetune.core.plugin_manager import get_plugin_manager
    from cachetune.plugins.llama_cpp_generator import LlamaCppGenerator

    templates = get_plugin_manager(load_entrypoints=False).prompt_templates("programming")
    queries = ["sort a list of dicts by a key", "read a csv file with pandas", "reverse a string"]
    requests = [Request(build_conversation(templates, kind, q, n), request_seed(0, q, kind), kind, n)
                for q in queries for kind, n in ((PARAPHRASES, 3), (NEGATIVES, 2))]
    options = {"model": smollm_gguf, "temperature": 0.7, "max_tokens": 48, "n_threads": 1}
    batched = LlamaCppGenerator({**options, "parallel": 4, "prefill": False})
    single = LlamaCppGenerator({**options, "parallel": 1})
    grammar_first = LlamaCppGenerator({**options, "parallel": 2, "grammar_first": True, "prefill": False})
    prefilled = LlamaCppGenerator({**options, "parallel": 2, "prefill": True})
    try:
        streamed = list(batched.generate_each(requests))  # each reply as soon as it is done
        one = single.generate(requests[:2])
        first = [grammar_first.generate([request])[0] for request in requests[:2]]  # each alone
        opened = prefilled.generate(requests)
    finally:
        batched.close()
        single.close()
        grammar_first.close()
        prefilled.close()
    assert sorted(index for index, _ in streamed) == list(range(len(requests)))
    replies = [result for _, result in sorted(streamed, key=lambda pair: pair[0])]
    assert [r.prompt_tokens for r in replies[:2]] == [r.prompt_tokens for r in one]  # the very same prompts
    assert [r.text for r in first] == [r.text for r in one]  # the very same sampling
    assert all(r.error is None and 0 < r.completion_tokens <= 48 for r in replies + first)
    # the grammar holds whether it is checked on the sampled token (default) or applied first
    finished = [(r, q) for r, q in zip(replies + first, requests + requests[:2]) if r.completion_tokens < 48]
    assert len(finished) >= 2, [r.text for r in replies]
    for r, request in finished:
        items = json_.loads(r.text)[request.kind]
        assert len(items) == request.n and all(isinstance(item, str) and item for item in items), r.text
    assert len({r.text for r in replies}) > len(replies) // 2  # seeds differ: replies differ
    # prefilled: the reply starts with its JSON opening, evaluated with the prompt, not sampled
    assert all(r.text.startswith('{"' + q.kind + '": ["') for r, q in zip(opened, requests)), [r.text for r in opened]
    assert all(a.prompt_tokens > b.prompt_tokens for a, b in zip(opened, one))
    for r, request in zip(opened, requests):
        if r.completion_tokens < 48 - 6:
            assert len(json_.loads(r.text)[request.kind]) == request.n, r.text


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [1, 2])
def test_llama_cpp_takes_requests_fed_while_it_runs(smollm_gguf, parallel):
    """A request put in the feed after the first reply is answered too, by a batched or a
    one-at-a-time instance; the feed's close ends the run."""
    from cachetune.core.generate.feed import RequestFeed
    from cachetune.core.generate.prompting import NEGATIVES, Request, build_conversation
    from cachetune.core.plugin_manager import get_plugin_manager
    from cachetune.plugins.llama_cpp_generator import LlamaCppGenerator

    templates = get_plugin_manager(load_entrypoints=False).prompt_templates("programming")
    requests = [Request(build_conversation(templates, NEGATIVES, q, 2), i, NEGATIVES, 2)
                for i, q in enumerate(["reverse a string", "sort a list", "open a file"])]
    gen = LlamaCppGenerator({"model": smollm_gguf, "max_tokens": 24, "n_threads": 1, "parallel": parallel})
    feed = RequestFeed(requests[:2])
    answered = []
    try:
        for index, result in gen.generate_fed(feed):
            answered.append(index)
            assert result.error is None and result.text
            if len(answered) == 1:
                feed.put(requests[2])
                feed.close()
    finally:
        gen.close()
    assert sorted(answered) == [0, 1, 2] and answered[0] != 2


@pytest.mark.slow
def test_transformers_backend_on_a_real_gguf_model(smollm_gguf):
    pytest.importorskip("gguf", reason="transformers reads GGUF files with the gguf package (test extra)")
    from cachetune.core.generate.prompting import PARAPHRASES, Request, build_conversation, parse_reply
    from cachetune.core.plugin_manager import get_plugin_manager
    from cachetune.plugins.transformers_generator import TransformersGenerator

    templates = get_plugin_manager(load_entrypoints=False).prompt_templates("programming")
    gen = TransformersGenerator({"model": smollm_gguf, "temperature": 0, "max_tokens": 24, "concurrency": 2})
    requests = [Request(build_conversation(templates, PARAPHRASES, q, 3), i, PARAPHRASES, 3)
                for i, q in enumerate(["How do I merge two dictionaries?", "remove the last element of a list"])]
    results = gen.generate(requests)
    assert gen.label == "transformers:smollm2-135m-instruct-q4_1"
    assert all(0 < r.completion_tokens <= 24 for r in results)
    # the few-shot prompt makes even a 135M model start the JSON object asked for
    assert all(r.text.lstrip().startswith('{"paraphrases"') for r in results), [r.text for r in results]
    assert any(parse_reply(r.text, PARAPHRASES).items for r in results)


def test_mining_agrees_with_sentence_transformers(embedded_model, shared_data):
    """Our streaming miner picks what sentence-transformers' mine_hard_negatives picks."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from cachetune.core.mining import HardNegativeMiner
    from cachetune.core.text import exact_key, near_key

    rows = json.loads((shared_data / "conala" / "conala-train.json").read_text())
    pairs, seen = [], set()
    for row in rows:  # CoNaLa's two human wordings of one question: a real (anchor, positive) pair
        if row["rewritten_intent"] and row["intent"] not in seen:
            seen.add(row["intent"])
            pairs.append((row["rewritten_intent"], row["intent"]))
        if len(pairs) == 80:
            break
    model = SentenceTransformer(embedded_model, device="cpu")
    anchors, positives = [a for a, _ in pairs], [p for _, p in pairs]
    miner = HardNegativeMiner(model, positives, relative_margin=0.05)
    ours = miner.mine(anchors, positives, k=1)
    theirs = mine_hard_negatives(Dataset.from_dict({"anchor": anchors, "positive": positives}), model,
                                 relative_margin=0.05, num_negatives=1, sampling_strategy="top", verbose=False)
    theirs_by_anchor = {r["anchor"]: r["negative"] for r in theirs}
    compared = agree = 0
    scores = model.similarity(model.encode(anchors), model.encode(positives)).diagonal().tolist()
    for anchor, positive, mined, score in zip(anchors, positives, ours, scores):
        assert mined, anchor  # below the margin there is always some other query
        negative = mined[0]
        assert negative.score <= score - abs(score) * 0.05 + 1e-5
        assert negative.text != positive
        assert {exact_key(negative.text), near_key(negative.text)}.isdisjoint({near_key(positive), exact_key(positive)})
        if anchor in theirs_by_anchor:
            compared += 1
            agree += theirs_by_anchor[anchor] == negative.text
    assert compared >= 60 and agree >= 0.95 * compared
