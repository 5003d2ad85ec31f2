"""Prompt building, tolerant parsing, validation and pairing (cachetune.core.generate.prompting)."""

from __future__ import annotations

import json

import pytest

from cachetune.core.generate.prompting import (
    NEGATIVES, PARAPHRASES, Checked, DomainRules, Parsed, build_conversation, check_items, clean_item,
    looks_like_answer, pair_triplets, parse_reply, possible_items, response_schema,
)
from cachetune.core.plugin_manager import get_plugin_manager
from cachetune.domains import medical, programming

PROGRAMMING = DomainRules.of(programming.DOMAIN)
MEDICAL = DomainRules.of(medical.DOMAIN)


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager(load_entrypoints=False)


@pytest.mark.parametrize("domain", ["programming", "medical"])
def test_conversation_is_few_shot_with_one_shared_prefix(pm, domain):
    templates = pm.prompt_templates(domain)
    para = build_conversation(templates, PARAPHRASES, "sort a dict by value", 3)
    neg = build_conversation(templates, NEGATIVES, "sort a dict by value", 2)
    other = build_conversation(templates, PARAPHRASES, "open a file for appending", 3)
    assert para[0] == {"role": "system", "content": templates.system}
    # every example shown for both kinds: a user turn and an assistant JSON reply each
    assert len(para) == 1 + 4 * len(templates.examples) + 1
    assert [m["role"] for m in para[1:-1]] == ["user", "assistant"] * (2 * len(templates.examples))
    # only the last user turn differs between queries and kinds (prefix caching relies on it)
    assert para[:-1] == neg[:-1] == other[:-1]
    assert "sort a dict by value" in para[-1]["content"] and '"paraphrases"' in para[-1]["content"]
    assert "3" in para[-1]["content"] and '"negatives"' in neg[-1]["content"]
    # the worked answers are valid replies of the format asked for
    for example, reply in zip(templates.examples, para[2:-1:4]):
        assert parse_reply(reply["content"], PARAPHRASES).items == list(example.paraphrases)
    for example, reply in zip(templates.examples, para[4:-1:4]):
        assert parse_reply(reply["content"], NEGATIVES).items == list(example.negatives)


def test_response_schema_asks_for_exactly_n_strings():
    schema = response_schema(NEGATIVES, 2)
    assert schema["required"] == ["negatives"]
    assert schema["properties"]["negatives"]["minItems"] == schema["properties"]["negatives"]["maxItems"] == 2


@pytest.mark.parametrize("reply, items, problem, note", [
    ('{"paraphrases": ["a b", "c d"]}', ["a b", "c d"], None, None),
    ('```json\n{"paraphrases": ["a b"]}\n```\nHope this helps!', ["a b"], None, None),
    ('Sure! Here you go: {"paraphrases": ["x y", "z w"]} Let me know.', ["x y", "z w"], None, None),
    ('["one two", "three four"]', ["one two", "three four"], None, None),
    ('{"Paraphrase": ["p q"]}', ["p q"], None, None),
    ('{"items": [{"text": "t u"}, {"text": "v w"}]}', ["t u", "v w"], None, None),
    ('{"paraphrases": ["complete one", "complete \\"two\\"", "cut of', ["complete one", 'complete "two"'], None,
     "truncated"),
    # raw control characters inside strings (small models emit them), complete and cut off
    ('{"paraphrases": ["a\tb", "c\nd"]}', ["a\tb", "c\nd"], None, None),
    ('{"paraphrases": ["a\tb", "bad \\q escape", "cut', ["a\tb"], None, "truncated"),
    ('', [], "empty_output", None),
    (None, [], "empty_output", None),
    ('I cannot help with that.', [], "unparseable_output", None),
    ('{"paraphrases": []}', [], "empty_list", None),
])
def test_parse_reply_is_tolerant(reply, items, problem, note):
    parsed = parse_reply(reply, PARAPHRASES)
    assert (parsed.items, parsed.problem, parsed.note) == (items, problem, note)


def test_parse_reply_counts_entries_that_are_not_text():
    parsed = parse_reply('{"negatives": ["good one", 3, {"a": 1, "b": 2}]}', NEGATIVES)
    assert parsed.items == ["good one"] and parsed.dropped == 2


def test_clean_item_strips_bullets_numbering_and_quotes():
    assert clean_item('  1. "How do I  sort a list?" ') == "How do I sort a list?"
    assert clean_item("- reverse a list") == "reverse a list"
    assert clean_item("2) Sort it") == "Sort it"


@pytest.mark.parametrize("item, query, expected", [
    ("You can use sorted() with a key function.", "sort a list of dicts by a key", True),
    ("Yes, ibuprofen is generally avoided in late pregnancy.", "Is ibuprofen safe in pregnancy?", True),
    ("Here is how: call list.reverse()", "reverse a list", True),
    ("```python\nx[::-1]\n```", "reverse a list", True),
    ("import os\nos.listdir('.')", "list the files in a folder", True),
    ("Diabetes is a disease of blood sugar. It is treated with insulin.", "What is diabetes?", True),
    ("How can I order a list of dicts by one key?", "sort a list of dicts by a key", False),
    ("Use a regular expression to find all digits in a string", "find all digits in a string with regex", False),
    ("What does type 2 diabetes mean?", "What is (are) type 2 diabetes ?", False),
    ("reverse list `a` in place with a.reverse()", "reverse list `a` in place", False),
])
def test_looks_like_answer(item, query, expected):
    assert looks_like_answer(item, query, PROGRAMMING) is expected


def test_real_queries_do_not_look_like_answers(shared_data):
    """The answer heuristic must not fire on real questions (else good paraphrases die)."""
    rows = json.loads((shared_data / "conala" / "conala-train.json").read_text())
    intents = [r["intent"] for r in rows[:400]] + [r["rewritten_intent"] for r in rows[:400] if r["rewritten_intent"]]
    flagged = [q for q in intents if looks_like_answer(q, "a question?", PROGRAMMING)]
    assert len(flagged) <= len(intents) * 0.01, flagged[:10]


def _check(query, kind, items, limit=3, checked=None, rules=PROGRAMMING):
    checked = checked or Checked()
    check_items(query, kind, Parsed(items), limit, checked, rules)
    return checked


@pytest.mark.parametrize("item", [
    "class 2 obesity: which treatments are there?",
    "The code for a hip fracture in ICD-10?",
    "return of symptoms after stopping treatment",
])
def test_python_rules_judge_programming_only(item):
    """A line that looks like Python is an answer to a programming question, not to a medical one."""
    query = "What are the treatments for obesity and fractures?"
    assert looks_like_answer(item, query, PROGRAMMING)
    assert not looks_like_answer(item, query, MEDICAL)
    assert _check(query, PARAPHRASES, [item], rules=MEDICAL).paraphrases == [item]
    assert _check(query, PARAPHRASES, [item], rules=PROGRAMMING).rejected == {"paraphrase/answers_question": 1}


def test_python_is_a_filler_word_for_programming_only():
    # programming: "python" says nothing, so this is the query again; medical: a snake is a topic
    assert _check("how do I treat a bite", PARAPHRASES, ["treat a python bite"],
                  rules=PROGRAMMING).rejected == {"paraphrase/same_as_query": 1}
    assert _check("how do I treat a bite", PARAPHRASES, ["treat a python bite"],
                  rules=MEDICAL).paraphrases == ["treat a python bite"]
    # a negative must share a topic word other than "python" in programming, any in medical
    assert _check("python snake bite first aid", NEGATIVES, ["python anatomy"], rules=MEDICAL).negatives
    assert not _check("python list sort", NEGATIVES, ["python anatomy"], rules=PROGRAMMING).negatives


def test_validation_rejects_each_kind_of_junk_by_reason():
    query = "How do I sort a list in Python?"
    checked = _check(query, PARAPHRASES, [
        "What is the way to put a list in order?",   # kept
        "sort a list",                               # same content tokens as the query
        "how do i SORT a list in python?",           # same text up to case
        "What is the way to put a list in order ?",  # duplicate of the first
        "",                                          # empty
        "You can call sorted(my_list).",             # an answer
        "x" * 400,                                   # far too long
        "Order the items of a list",                 # kept
        "Arrange list elements ascending",           # kept
        "Put a Python list in sorted order",         # beyond the limit of 3
    ])
    assert checked.paraphrases == ["What is the way to put a list in order?", "Order the items of a list",
                                   "Arrange list elements ascending"]
    assert checked.rejected == {"paraphrase/same_as_query": 2, "paraphrase/duplicate": 1,
                                "paraphrase/empty_item": 1, "paraphrase/answers_question": 1,
                                "paraphrase/too_long": 1, "paraphrase/extra_item": 1}
    _check(query, NEGATIVES, [
        "How do I reverse a list in Python?",        # kept: same topic, different operation
        "Order the items of a list",                 # one of this query's paraphrases
        "What is the capital of France?",            # off topic: shares no topic word
        "How do I reverse a list in Python?",        # duplicate
        "How do I sort a tuple?",                    # kept
    ], limit=2, checked=checked)
    assert checked.negatives == ["How do I reverse a list in Python?", "How do I sort a tuple?"]
    assert checked.rejected["negative/same_as_paraphrase"] == 1
    assert checked.rejected["negative/off_topic"] == 1
    assert checked.rejected["negative/duplicate"] == 1


@pytest.mark.parametrize("items, possible", [
    # each item fails a rule of its own: nothing can pass, whatever the paraphrases
    (["sort a list", "SORT A LIST ", "install numpy", "You can use sorted().", ""], []),
    # rejected only beside others (a duplicate, a paraphrase of the query, beyond the limit): kept here
    (["order a list", "order a list", "reverse a list"], ["order a list", "order a list", "reverse a list"]),
])
def test_possible_items_are_those_no_other_item_can_save_or_sink(items, possible):
    parsed = Parsed(items)
    assert possible_items("sort a list", NEGATIVES, parsed, PROGRAMMING) == possible
    for paraphrases in ([], ["order a list"]):
        checked = Checked(paraphrases=list(paraphrases))
        check_items("sort a list", NEGATIVES, parsed, 2, checked, PROGRAMMING)
        assert set(checked.negatives) <= set(possible)
        assert bool(checked.negatives) == bool(possible) or paraphrases  # beside a paraphrase it may keep none
    assert possible_items("sort a list", PARAPHRASES, Parsed([], problem="empty_output")) == []


def test_unparseable_reply_is_counted_once_per_call():
    checked = Checked()
    check_items("q", PARAPHRASES, parse_reply("no json here", PARAPHRASES), 3, checked)
    check_items("q", NEGATIVES, parse_reply("", NEGATIVES), 2, checked)
    assert checked.rejected == {"paraphrase/unparseable_output": 1, "negative/empty_output": 1}
    assert checked.paraphrases == checked.negatives == []


def test_pairing_is_round_robin_in_the_reference_layout():
    triplets = pair_triplets("Q", ["p1", "p2", "p3"], ["n1", "n2"])
    assert triplets == [("p1", "Q", "n1"), ("p2", "Q", "n2"), ("p3", "Q", "n1")]
    assert pair_triplets("Q", ["p1"], []) == []
