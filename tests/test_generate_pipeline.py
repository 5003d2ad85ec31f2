"""The generate stage: layout, stats, resume and torn lines, Ctrl-C, input errors, the CLI.

The backend here is a scripted stand-in (replies chosen per query) so every rule's effect is
known exactly; the real backends run in test_generate_backends.py and test_generate_real.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cachetune.core.errors import CachetuneError
from cachetune.core.generate.pipeline import GenerateConfig, generate_triplets, request_seed, stats_path
from cachetune.core.generate.triplets_file import scan_output
from cachetune.core.generate.prompting import GenerationResult, NEGATIVES, PARAPHRASES
from cachetune.core.plugin_manager import get_plugin_manager, register_module

FIELDS = {"anchor", "positive", "negative", "query_id", "domain", "negative_source", "generator"}


class ScriptedGenerator:
    """Answers from ``script[query][kind]``; records every request; can fail on a given call."""

    label = "scripted:test"

    def __init__(self, script, interrupt_on_call=None):
        self.script = script
        self.calls = []
        self.interrupt_on_call = interrupt_on_call
        self.closed = False

    def generate(self, requests):
        self.calls.append(list(requests))
        if self.interrupt_on_call == len(self.calls):
            raise KeyboardInterrupt
        out = []
        for request in requests:
            query = request.conversation[-1]["content"].split("Question: ")[1].split("\n")[0]
            reply = self.script.get(query, {}).get(request.kind)
            out.append(GenerationResult(reply, prompt_tokens=100, completion_tokens=10))
        return out

    def close(self):
        self.closed = True


GOOD = {
    "sort a list of numbers": {
        "paraphrases": '{"paraphrases": ["order a list of numbers", "How can I put numbers in a list in order?", '
                       '"arrange the numbers of a list ascending"]}',
        "negatives": '{"negatives": ["reverse a list of numbers", "sum a list of numbers"]}',
    },
    "read a file line by line": {
        "paraphrases": '```json\n{"paraphrases": ["iterate over the lines of a file", "read a file line by line", '
                       '"go through a text file one line at a time"]}\n```',
        "negatives": '{"negatives": ["write a file line by line"]}',
    },
    "merge two dictionaries": {
        "paraphrases": "I can't do that.",
        "negatives": '{"negatives": ["compare two dictionaries", "merge two lists"]}',
    },
}


def write_queries(path: Path, queries, domain="programming"):
    with open(path, "w") as fh:
        for i, q in enumerate(queries):
            fh.write(json.dumps({"id": f"{domain}-{i:04d}", "query": q, "domain": domain, "source": "t"}) + "\n")
    return path


@pytest.fixture
def templates():
    return get_plugin_manager(load_entrypoints=False).prompt_templates("programming")


def run(tmp_path, templates, generator, queries=tuple(GOOD), **overrides):
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    inp = write_queries(tmp_path / "train.jsonl", list(queries))
    config = GenerateConfig(domain="programming", input=inp, output=tmp_path / "t.jsonl",
                            **{"embedding_filter": False, **overrides})
    return generate_triplets(config, templates, lambda: generator)


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_layout_round_robin_and_stats(tmp_path, templates):
    gen = ScriptedGenerator(GOOD)
    summary = run(tmp_path, templates, gen, batch_size=2)
    rows = lines(tmp_path / "t.jsonl")
    assert all(set(r) == FIELDS for r in rows)
    first = [r for r in rows if r["query_id"] == "programming-0000"]
    assert [(r["anchor"], r["negative"]) for r in first] == [
        ("order a list of numbers", "reverse a list of numbers"),
        ("How can I put numbers in a list in order?", "sum a list of numbers"),
        ("arrange the numbers of a list ascending", "reverse a list of numbers")]
    assert {r["positive"] for r in first} == {"sort a list of numbers"}
    assert {(r["negative_source"], r["generator"], r["domain"]) for r in rows} == {("llm", "scripted:test",
                                                                                    "programming")}
    second = [r for r in rows if r["query_id"] == "programming-0001"]
    assert len(second) == 2 and {r["negative"] for r in second} == {"write a file line by line"}
    # batches of 2 queries; a backend without generate_fed gets their negatives, then their paraphrases
    assert [[(r.kind, r.seed) for r in c] for c in gen.calls] == [
        [(NEGATIVES, seed(0, NEGATIVES)), (NEGATIVES, seed(1, NEGATIVES))],
        [(PARAPHRASES, seed(0, PARAPHRASES)), (PARAPHRASES, seed(1, PARAPHRASES))],
        [(NEGATIVES, seed(2, NEGATIVES))], [(PARAPHRASES, seed(2, PARAPHRASES))]] and gen.closed
    assert summary["llm_requests"] == 6 and summary["llm_requests_skipped"] == 0
    assert summary["triplets_written"] == len(rows) == 5
    assert summary["queries_done"] == 3 and summary["queries_without_triplets"] == 1
    assert summary["queries_without_triplets_ids"] == ["programming-0002"]
    assert summary["rejected"] == {"paraphrase/same_as_query": 1, "paraphrase/unparseable_output": 1}
    assert summary["tokens"] == {"prompt": 600, "completion": 60}
    assert json.loads(stats_path(tmp_path / "t.jsonl").read_text())["triplets_written"] == 5


def seed(query: int, kind: str) -> int:
    return request_seed(0, f"programming-{query:04d}", kind)


def asked(gen) -> dict:
    """(query, kind) -> seed of every request ``gen`` got."""
    return {(r.conversation[-1]["content"].split("Question: ")[1].split("\n")[0], r.kind): r.seed
            for c in gen.calls for r in c}


def test_requests_are_seeded_per_query_and_kind(tmp_path, templates):
    gen1, gen2, gen3 = ScriptedGenerator(GOOD), ScriptedGenerator(GOOD), ScriptedGenerator(GOOD)
    run(tmp_path, templates, gen1, batch_size=3)
    run(tmp_path / "again", templates, gen2, batch_size=1)
    run(tmp_path / "together", templates, gen3, batch_size=2, ask_together=True)
    assert asked(gen1) == asked(gen2) == asked(gen3) and len(set(asked(gen1).values())) == 6


def test_resume_skips_done_queries_and_keeps_history(tmp_path, templates):
    run(tmp_path, templates, ScriptedGenerator(GOOD), limit=2)
    before = (tmp_path / "t.jsonl").read_text()
    gen = ScriptedGenerator(GOOD)
    summary = run(tmp_path, templates, gen)
    assert {query for query, _ in asked(gen)} == {"merge two dictionaries"}
    assert (tmp_path / "t.jsonl").read_text().startswith(before)
    assert summary["queries_skipped_done"] == 2 and len(summary["previous_runs"]) == 1
    # a query that gave no triplet is recorded in the sidecar: its seeded requests would get the
    # same replies, so a rerun does not ask again ...
    assert (tmp_path / "t.jsonl.no-triplets").read_text() == "programming-0002\n"
    summary = run(tmp_path, templates, None)
    assert summary["queries_done"] == 0 and summary["queries_skipped_done"] == 3
    # ... until the sidecar is deleted
    (tmp_path / "t.jsonl.no-triplets").unlink()
    gen = ScriptedGenerator(GOOD)
    summary = run(tmp_path, templates, gen)
    assert summary["queries_done"] == 1 and set(asked(gen)) == {("merge two dictionaries", NEGATIVES),
                                                                ("merge two dictionaries", PARAPHRASES)}
    # with every query in the output the backend is not even built
    summary = run(tmp_path, templates, None, queries=list(GOOD)[:2])
    assert summary["queries_done"] == 0 and summary["finished"]


def test_resume_keeps_only_rows_made_the_same_way_for_queries_still_in_the_input(tmp_path, templates):
    run(tmp_path, templates, ScriptedGenerator(GOOD))
    first = lines(tmp_path / "t.jsonl")
    # The input loses a query (a re-split): its rows and sidecar line move aside, the rest is kept.
    logs = []
    inp = tmp_path / "train.jsonl"
    inp.write_text("".join(json.dumps({"id": f"programming-000{i}", "query": q, "domain": "programming"}) + "\n"
                           for i, q in ((0, "sort a list of numbers"), (2, "merge two dictionaries"))))
    config = GenerateConfig(domain="programming", input=inp, output=tmp_path / "t.jsonl", embedding_filter=False)
    summary = generate_triplets(config, templates, None, log=logs.append)
    kept = lines(tmp_path / "t.jsonl")
    assert kept == [r for r in first if r["query_id"] == "programming-0000"] and summary["queries_done"] == 0
    stale = [p for p in tmp_path.iterdir() if ".stale-" in p.name]
    assert len(stale) == 1 and all(json.loads(line)["query_id"] == "programming-0001"
                                   for line in stale[0].read_text().splitlines())
    assert any("no longer in the input" in message for message in logs)
    # Another option (or prompts, or generator): nothing old is kept, every query is asked again.
    gen = ScriptedGenerator(GOOD)
    before = set(tmp_path.iterdir())
    summary = generate_triplets(dataclasses.replace(config, paraphrases=2), templates, lambda: gen, log=logs.append)
    assert summary["queries_skipped_done"] == 0 and len(asked(gen)) == summary["llm_requests"] == 4
    assert any("made by another generator, prompts or options" in message for message in logs)
    # The old rows went aside whole, to a file of their own (not over the earlier stale file, even
    # within the same second); the output holds this run's rows only, none of them mixed in.
    (aside,) = [p for p in set(tmp_path.iterdir()) - before if ".no-triplets" not in p.name]
    assert lines(aside) == kept and len(stale[0].read_text().splitlines()) == len(first) - len(kept)
    fresh = lines(tmp_path / "t.jsonl")
    assert fresh and {r["query_id"] for r in fresh} <= {"programming-0000", "programming-0002"}
    assert len(fresh) == summary["triplets_written"]
    gen = ScriptedGenerator(GOOD)
    summary = generate_triplets(dataclasses.replace(config, paraphrases=2), templates, lambda: gen,
                                generator_options={"backend": "scripted", "model": "other"})
    assert summary["queries_skipped_done"] == 0 and gen.calls


def test_torn_last_line_is_dropped_with_its_query(tmp_path, templates):
    run(tmp_path, templates, ScriptedGenerator(GOOD))
    out = tmp_path / "t.jsonl"
    complete = out.read_bytes()
    out.write_bytes(complete + b'{"anchor": "half a li')
    done, kept, dropped = scan_output(out, "programming")
    # the torn line and the whole last query before it go; that query is generated again
    # (programming-0002 gave no triplet and is in the sidecar)
    assert done == {"programming-0000", "programming-0002"} and kept == 3 and dropped == 3
    assert out.read_bytes() == b"".join(complete.splitlines(keepends=True)[:3])
    summary = run(tmp_path, templates, ScriptedGenerator(GOOD))
    rows = lines(out)
    assert summary["dropped_torn_lines"] == 0  # repaired above already
    assert [r["query_id"] for r in rows].count("programming-0001") == 2
    assert len(rows) == 5


def test_torn_line_repaired_by_a_real_rerun(tmp_path, templates):
    run(tmp_path, templates, ScriptedGenerator(GOOD))
    out = tmp_path / "t.jsonl"
    out.write_bytes(out.read_bytes()[:-7])  # cut inside the last line, the second of query 0001
    summary = run(tmp_path, templates, ScriptedGenerator(GOOD))
    assert summary["dropped_torn_lines"] == 2  # the torn line and the first line of its query
    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    rows = lines(out)
    assert len(rows) == 5 and len({(r["query_id"], r["anchor"]) for r in rows}) == 5


def test_a_torn_sidecar_line_is_asked_again(tmp_path, templates):
    run(tmp_path, templates, ScriptedGenerator(GOOD))
    sidecar = tmp_path / "t.jsonl.no-triplets"
    sidecar.write_bytes(sidecar.read_bytes()[:-3])  # killed while writing the id
    gen = ScriptedGenerator(GOOD)
    summary = run(tmp_path, templates, gen)
    assert summary["queries_done"] == 1 and sidecar.read_text() == "programming-0002\n"


def test_a_failed_request_is_not_recorded_as_done(tmp_path, templates):
    class Failing(ScriptedGenerator):
        def generate(self, requests):
            return [GenerationResult(None, error="HTTP 503") for _ in requests]

    summary = run(tmp_path, templates, Failing(GOOD))
    assert summary["queries_without_triplets"] == 3 and not (tmp_path / "t.jsonl.no-triplets").exists()
    gen = ScriptedGenerator(GOOD)
    assert run(tmp_path, templates, gen)["queries_done"] == 3


def test_no_resume_starts_over(tmp_path, templates):
    run(tmp_path, templates, ScriptedGenerator(GOOD))
    assert (tmp_path / "t.jsonl.no-triplets").exists()
    summary = run(tmp_path, templates, ScriptedGenerator(GOOD), resume=False)
    assert summary["queries_skipped_done"] == 0 and len(lines(tmp_path / "t.jsonl")) == 5
    assert summary["previous_runs"] == []
    assert (tmp_path / "t.jsonl.no-triplets").read_text() == "programming-0002\n"  # started over too


def test_foreign_or_corrupt_output_is_an_error_naming_the_line(tmp_path, templates):
    out = tmp_path / "t.jsonl"
    run(tmp_path, templates, ScriptedGenerator(GOOD))  # records how its rows were made
    out.write_text('{"query_id": "programming-0000", "domain": "programming"}\nnot json\n{"query_id": "y"}\n')
    with pytest.raises(CachetuneError) as err:
        run(tmp_path, templates, ScriptedGenerator(GOOD))
    assert err.value.path == str(out) and err.value.line == 2
    out.write_text('{"query_id": "programming-0000", "domain": "medical", "anchor": "a"}\n')
    with pytest.raises(CachetuneError, match="domain 'medical'"):
        run(tmp_path, templates, ScriptedGenerator(GOOD))
    # A file no run of ours recorded making is not resumed: it is moved aside, whole.
    (tmp_path / "t.jsonl.made-by.json").unlink()
    summary = run(tmp_path, templates, ScriptedGenerator(GOOD))
    assert summary["queries_done"] == 3 and any(".stale-" in p.name for p in tmp_path.iterdir())


def test_ctrl_c_stops_cleanly_with_a_summary(tmp_path, templates):
    # calls: q0's negatives, q0's paraphrases, q1's negatives, then Ctrl-C
    gen = ScriptedGenerator(GOOD, interrupt_on_call=4)
    summary = run(tmp_path, templates, gen, batch_size=1)
    assert summary["interrupted"] and not summary["finished"]
    assert summary["queries_done"] == 1 and gen.closed
    assert {r["query_id"] for r in lines(tmp_path / "t.jsonl")} == {"programming-0000"}
    assert json.loads(stats_path(tmp_path / "t.jsonl").read_text())["interrupted"] is True


def test_a_second_writer_is_refused(tmp_path, templates):
    from cachetune.core.generate.triplets_file import TripletWriter

    out = tmp_path / "t.jsonl"
    holder = TripletWriter(out)
    try:
        with pytest.raises(CachetuneError, match="another"):
            run(tmp_path, templates, ScriptedGenerator(GOOD))
    finally:
        holder.close()


def test_input_errors_name_file_and_line(tmp_path, templates):
    inp = tmp_path / "train.jsonl"
    cases = [
        ('{"id": "a", "query": "sort a list"}\n{"id": "b"}\n', 2, "missing or empty 'query'"),
        ('{"id": "a", "query": "sort a list"}\n{oops\n', 2, "invalid JSON"),
        ('{"id": "a", "query": "sort a list", "domain": "medical"}\n', 1, "domain 'medical'"),
        ('{"id": "a", "query": "q"}\n{"anchor": "x", "positive": "y"}\n', 2, "mixes"),
    ]
    for text, line, message in cases:
        inp.write_text(text)
        config = GenerateConfig(domain="programming", input=inp, output=tmp_path / "o.jsonl", embedding_filter=False)
        with pytest.raises(CachetuneError, match=message) as err:
            generate_triplets(config, templates, lambda: ScriptedGenerator(GOOD))
        assert (err.value.path, err.value.line) == (str(inp), line)
        assert not (tmp_path / "o.jsonl").exists()


def test_option_errors(tmp_path, templates):
    with pytest.raises(CachetuneError, match="--negatives 0 needs --mine-negatives"):
        run(tmp_path, templates, ScriptedGenerator(GOOD), negatives=0)
    with pytest.raises(CachetuneError, match="--batch-size"):
        run(tmp_path, templates, ScriptedGenerator(GOOD), batch_size=0)


def test_only_paraphrases_asked_when_negatives_are_mined(tmp_path, templates, tiny_model):
    gen = ScriptedGenerator(GOOD)
    summary = run(tmp_path, templates, gen, negatives=0, mine_negatives=1, base_model=tiny_model,
                  queries=list(GOOD) + ["sort a list of strings", "read a csv file", "merge two lists"])
    assert {r.kind for c in gen.calls for r in c} == {"paraphrases"}
    rows = lines(tmp_path / "t.jsonl")
    assert rows and {r["negative_source"] for r in rows} == {"mined"}
    assert summary["triplets_by_negative_source"] == {"llm": 0, "mined": len(rows)}
    for row in rows:  # a mined negative is another query of the corpus, never its own
        assert row["negative"] != row["positive"]
        assert row["negative"] in list(GOOD) + ["sort a list of strings", "read a csv file", "merge two lists"]


def test_mine_fallback_gives_negatives_only_to_queries_left_without_one(tmp_path, templates, tiny_model):
    script = dict(GOOD)
    # every negative of this query is rejected (it repeats the query): no triplet without the fallback
    script["split a string on commas"] = {
        "paraphrases": '{"paraphrases": ["break a string at each comma", "divide a comma-separated string"]}',
        "negatives": '{"negatives": ["split a string on commas"]}',
    }
    queries = list(script) + ["join a list of strings", "read a csv file"]  # the last two: corpus only
    without = run(tmp_path / "a", templates, ScriptedGenerator(script), queries=queries, base_model=tiny_model)
    assert not any(r["positive"] == "split a string on commas" for r in lines(tmp_path / "a" / "t.jsonl"))

    summary = run(tmp_path / "b", templates, ScriptedGenerator(script), queries=queries, base_model=tiny_model,
                  mine_fallback=True)
    rows = lines(tmp_path / "b" / "t.jsonl")
    rescued = [r for r in rows if r["positive"] == "split a string on commas"]
    assert [r["anchor"] for r in rescued] == ["break a string at each comma", "divide a comma-separated string"]
    assert {r["negative_source"] for r in rescued} == {"mined"}
    assert all(r["negative"] in queries and r["negative"] != r["positive"] for r in rescued)
    # the queries that had LLM negatives are written exactly as without the fallback
    assert [r for r in rows if r not in rescued] == lines(tmp_path / "a" / "t.jsonl")
    assert summary["triplets_by_negative_source"] == {"llm": without["triplets_written"], "mined": 2}


@pytest.fixture
def scripted_pm():
    """A plugin manager with a 'scripted' backend registered the way third parties do it."""
    from cachetune import hookimpl

    class Plugin:
        @staticmethod
        @hookimpl
        def register_generators(register):
            register("scripted", lambda options: ScriptedGenerator(GOOD))

    pm = get_plugin_manager(load_entrypoints=False)
    register_module(pm, Plugin, "scripted-backend")
    return pm


def test_cli_end_to_end_with_a_plugin_backend(tmp_path, run_cli, scripted_pm):
    inp = write_queries(tmp_path / "train.jsonl", list(GOOD))
    out = tmp_path / "t.jsonl"
    result = run_cli(["generate", "--domain", "programming", "--input", inp, "--output", out, "--backend",
                      "scripted", "--no-embedding-filter"], pm=scripted_pm)
    assert result.exit_code == 0, result.stderr
    assert "5 triplets written" in result.stdout
    assert "paraphrase/unparseable_output 1" in result.stdout
    assert len(lines(out)) == 5


def test_cli_errors_are_one_line(tmp_path, run_cli, monkeypatch, scripted_pm):
    inp = write_queries(tmp_path / "train.jsonl", ["sort a list"])
    result = run_cli(["generate", "--domain", "programming", "--input", inp, "--output", tmp_path / "o.jsonl",
                      "--backend", "nope"], pm=scripted_pm)
    assert result.exit_code != 0 and "unknown backend 'nope'" in result.stderr
    monkeypatch.setenv("GGUF_CACHE", str(tmp_path / "empty"))
    result = run_cli(["generate", "--domain", "programming", "--input", inp, "--output", tmp_path / "o.jsonl",
                      "--no-embedding-filter"])
    assert result.exit_code == 1
    # Offline (the tests run with HF_HUB_OFFLINE=1): which file to place where; no development-only path.
    assert result.stderr.count("\n") == 1 and "could not be fetched from the hub" in result.stderr
    assert "place qwen2.5-coder-0.5b-instruct-q4_k_m.gguf there" in result.stderr and "shared" not in result.stderr
    assert str(tmp_path / "empty") in result.stderr
    result = run_cli(["generate", "--domain", "programming", "--input", tmp_path / "missing.jsonl",
                      "--output", tmp_path / "o.jsonl"])
    assert result.exit_code == 1 and "missing.jsonl: file not found" in result.stderr


def test_every_backend_is_registered_without_importing_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys; from cachetune.core.plugin_manager import get_plugin_manager; "
            "pm = get_plugin_manager(load_entrypoints=False); print(sorted(pm.generators())); "
            "print([m for m in ('torch', 'llama_cpp', 'vllm', 'transformers', 'httpx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["['llama-cpp', 'openai', 'transformers', 'vllm']", "[]"]


def test_pairs_from_another_file_get_mined_negatives_without_an_llm(tmp_path, templates, embedded_model):
    pairs = tmp_path / "pairs.jsonl"
    rows = [("order a list of numbers", "sort a list of numbers", "q1"),
            ("arrange numbers ascending", "sort a list of numbers", "q1"),
            ("iterate over the lines of a file", "read a file line by line", "q2"),
            ("combine two dicts", "merge two dictionaries", None),
            ("flatten nested lists", "flatten a list of lists", None)]
    pairs.write_text("".join(json.dumps({"anchor": a, "positive": p, **({"query_id": q} if q else {}),
                                         "generator": "human"}) + "\n" for a, p, q in rows))
    config = GenerateConfig(domain="programming", input=pairs, output=tmp_path / "t.jsonl", mine_negatives=2,
                            base_model=embedded_model)
    summary = generate_triplets(config, templates, None)
    out = lines(tmp_path / "t.jsonl")
    assert summary["mode"] == "pairs" and summary["llm_requests"] == 0
    assert len(out) == 2 * len(rows) == summary["triplets_by_negative_source"]["mined"]
    assert {r["generator"] for r in out} == {"human"} and {r["negative_source"] for r in out} == {"mined"}
    positives = {p for _, p, _ in rows}
    for row in out:
        assert row["negative"] in positives and row["negative"] != row["positive"]
    assert [r["query_id"] for r in out][:4] == ["q1"] * 4
    with pytest.raises(CachetuneError, match="--mine-negatives"):
        generate_triplets(GenerateConfig(domain="programming", input=pairs, output=tmp_path / "u.jsonl"),
                          templates, None)


# A query whose negatives can give no triplet: the first repeats the query, the second shares no
# topic word with it (off topic); and one whose only negative is a reworded paraphrase of it
# (rejected only beside its paraphrases, so its paraphrases must still be asked).
IN_TURN = dict(GOOD)
IN_TURN["split a string on commas"] = {
    "paraphrases": '{"paraphrases": ["break a string at each comma", "divide a comma-separated string"]}',
    "negatives": '{"negatives": ["split a string on commas", "install numpy"]}',
}
IN_TURN["sum a list"] = {
    "paraphrases": '{"paraphrases": ["add up the numbers of a list", "total of a list"]}',
    "negatives": '{"negatives": ["total of a list", "multiply the numbers of a list"]}',
}


def test_paraphrases_are_asked_only_when_a_negative_could_pass_and_the_rows_are_the_same(tmp_path, templates):
    together = ScriptedGenerator(IN_TURN)
    summary_together = run(tmp_path / "together", templates, together, queries=list(IN_TURN), batch_size=2,
                           ask_together=True)
    in_turn = ScriptedGenerator(IN_TURN)
    summary = run(tmp_path / "in-turn", templates, in_turn, queries=list(IN_TURN), batch_size=2)
    # the same rows and the same queries without a triplet (in another order: queries finish in another order)
    rows = sorted(lines(tmp_path / "in-turn" / "t.jsonl"), key=json.dumps)
    assert rows == sorted(lines(tmp_path / "together" / "t.jsonl"), key=json.dumps) and len(rows) == 7
    assert sorted((tmp_path / "in-turn" / "t.jsonl.no-triplets").read_text().split()) == \
        sorted((tmp_path / "together" / "t.jsonl.no-triplets").read_text().split()) == \
        ["programming-0002", "programming-0003"]
    # the query whose negatives all fail on their own is not asked for paraphrases
    assert set(asked(together)) - set(asked(in_turn)) == {("split a string on commas", PARAPHRASES)}
    assert all(r.kind == NEGATIVES for r in in_turn.calls[0])
    assert summary["llm_requests"] == 9 and summary["llm_requests_skipped"] == 1
    assert summary_together["llm_requests"] == 10 and summary_together["llm_requests_skipped"] == 0
    assert summary["triplets_written"] == summary_together["triplets_written"] == 7


def test_the_embedding_filter_decides_too(tmp_path, templates, tiny_model):
    # a ceiling no negative is under: every query's paraphrase request is skipped, no row either way
    summary = run(tmp_path / "a", templates, ScriptedGenerator(GOOD), base_model=tiny_model, embedding_filter=True,
                  negative_ceiling=-1.0)
    assert summary["llm_requests"] == 3 and summary["llm_requests_skipped"] == 3 and summary["triplets_written"] == 0
    together = run(tmp_path / "b", templates, ScriptedGenerator(GOOD), base_model=tiny_model, embedding_filter=True,
                   negative_ceiling=-1.0, ask_together=True)
    assert together["llm_requests"] == 6 and together["triplets_written"] == 0
    # one every negative is under: only the rules decide (all three queries have one that passes)
    summary = run(tmp_path / "c", templates, ScriptedGenerator(GOOD), base_model=tiny_model, embedding_filter=True,
                  negative_ceiling=1.0, paraphrase_floor=-1.0)
    assert summary["llm_requests"] == 6 and summary["llm_requests_skipped"] == 0


def test_with_mined_negatives_the_paraphrases_go_first(tmp_path, templates, tiny_model):
    script = dict(GOOD)
    script["split a string on commas"] = {"paraphrases": '{"paraphrases": ["split a string on commas"]}',
                                          "negatives": '{"negatives": ["split a string on commas"]}'}
    gen = ScriptedGenerator(script)
    summary = run(tmp_path / "a", templates, gen, queries=list(script), base_model=tiny_model, mine_fallback=True)
    assert all(r.kind == PARAPHRASES for r in gen.calls[0])
    # no paraphrase can pass for two queries (one unparseable, one the query itself): no negatives asked
    assert {q for q, kind in asked(gen) if kind == NEGATIVES} == {"sort a list of numbers", "read a file line by line"}
    assert summary["llm_requests_skipped"] == 2
    run(tmp_path / "b", templates, ScriptedGenerator(script), queries=list(script), base_model=tiny_model,
        mine_fallback=True, ask_together=True)
    assert sorted(lines(tmp_path / "a" / "t.jsonl"), key=json.dumps) == \
        sorted(lines(tmp_path / "b" / "t.jsonl"), key=json.dumps)


def test_rows_asked_together_and_in_turn_resume_each_other(tmp_path, templates):
    run(tmp_path, templates, ScriptedGenerator(IN_TURN), queries=list(IN_TURN), limit=2, ask_together=True)
    gen = ScriptedGenerator(IN_TURN)
    summary = run(tmp_path, templates, gen, queries=list(IN_TURN))
    assert summary["queries_skipped_done"] == 2 and {q for q, _ in asked(gen)} == set(list(IN_TURN)[2:])
    assert not any(".stale-" in p.name for p in tmp_path.iterdir())


class FedGenerator(ScriptedGenerator):
    """A backend with ``generate_fed``: answers each request of the feed as it takes it."""

    fed: list

    def generate_fed(self, feed):
        self.fed = getattr(self, "fed", []) + [[]]  # one list of requests per call
        while True:
            taken = feed.take()
            assert taken is not feed.WAIT, "the feed was left open with nothing to answer"
            if taken is None:
                return
            index, request = taken
            self.fed[-1].append(request)
            yield index, self.generate([request])[0]


def test_a_fed_backend_gets_the_second_requests_while_it_runs(tmp_path, templates):
    gen = FedGenerator(IN_TURN)
    summary = run(tmp_path, templates, gen, queries=list(IN_TURN))
    # one call for the whole batch: the negatives, then each paraphrase request put as its query's
    # negatives were checked; none for the query whose negatives cannot pass
    assert [[(r.kind, r.seed) for r in c] for c in gen.fed] == [
        [(NEGATIVES, seed(q, NEGATIVES)) for q in range(5)] + [(PARAPHRASES, seed(q, PARAPHRASES)) for q in (0, 1, 2, 4)]]
    assert summary["llm_requests"] == 9 and summary["llm_requests_skipped"] == 1 and summary["triplets_written"] == 7


@pytest.mark.parametrize("way", ["generate", "generate_each", "generate_fed"])
def test_a_backend_that_drops_a_result_is_an_error_naming_it(way):
    from cachetune.core.generate.feed import RequestFeed, answers
    from cachetune.core.generate.prompting import Request

    class Short:
        label = "short:test"

    def short(requests):  # answers all but the last request
        return [GenerationResult('{"negatives": ["x"]}', 1, 1) for _ in list(requests)[:-1]]

    backend = Short()
    if way == "generate":
        backend.generate = short
    elif way == "generate_each":
        backend.generate_each = lambda requests: enumerate(short(requests))
    else:
        backend.generate_fed = lambda feed: enumerate(short(feed.requests))
    feed = RequestFeed([Request([], seed, NEGATIVES, 1) for seed in range(3)], closed=True)
    with pytest.raises(CachetuneError, match="backend short:test returned 2 results for 3 requests"):
        list(answers(backend, feed))
