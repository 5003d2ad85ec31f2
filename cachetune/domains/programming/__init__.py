"""The built-in ``programming`` domain: Python how-to questions (CoNaLa).

Reads CoNaLa in its three published shapes -- the curated JSON array, the mined JSON Lines
file, and the hub dataset ``neulab/conala`` (configs ``curated`` and ``mined``) -- and ships a
small hand-written sample so ``prepare`` works offline with no arguments. Questions whose
pairs ship as the evaluation set are marked reserved and never prepared for training; the
split keeps all records of one Stack Overflow question (``question_id``) on one side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from cachetune import hookimpl
from cachetune.core.types import Domain, FewShotExample, PromptTemplates, QueryRecord, SourceReader
from cachetune.core.errors import CachetuneError
from cachetune.core.textfiles import reading_text
from cachetune.core.data.sources import load_hub_dataset, load_json_file, looks_like_hub_id, split_hub_id
from cachetune.domains.programming.rules import ANSWER_PATTERN, FILLER_WORDS
from cachetune.domains.programming.training_pairs import CONALA_TRAINING
from cachetune.core.data.prepare import RESERVED
from cachetune.domains.programming.evaluation import EVALUATION_SETS, reserved_question_ids

DATA = Path(__file__).parent / "data"
CONALA_HUB = "neulab/conala"


def _conala_record(row: dict, where: str) -> QueryRecord:
    meta = {}
    if row.get("rewritten_intent"):
        meta["rewritten_intent"] = row["rewritten_intent"]
    if row.get("question_id") is not None:
        meta["question_id"] = row["question_id"]
        if row["question_id"] in reserved_question_ids():
            meta[RESERVED] = True  # its pairs ship for evaluation: prepare leaves it out
    return QueryRecord(row.get("intent"), where, meta)


def is_conala_json(source: str) -> bool:
    return Path(source).suffix.lower() == ".json" and Path(source).is_file()


def read_conala_json(source: str, options: dict) -> Iterator[QueryRecord]:
    data = load_json_file(source)
    if not isinstance(data, list) or (data and not all(isinstance(r, dict) and "intent" in r for r in data[:50])):
        raise CachetuneError("not a CoNaLa JSON file (expected an array of objects with an 'intent' field)", source)
    for index, row in enumerate(data):
        if not isinstance(row, dict) or "intent" not in row:
            raise CachetuneError(f"record {index} has no 'intent' field", source)
        yield _conala_record(row, f"{source}[{index}]")


def is_conala_mined(source: str) -> bool:
    if Path(source).suffix.lower() not in (".jsonl", ".ndjson") or not Path(source).is_file():
        return False
    with reading_text(source), open(source, encoding="utf-8") as fh:
        first = fh.readline()
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and "intent" in row and ("prob" in row or "snippet" in row)


def read_conala_mined(source: str, options: dict) -> Iterator[QueryRecord]:
    from cachetune.core.jsonl import iter_jsonl

    for number, row in iter_jsonl(source):
        if "intent" not in row:
            raise CachetuneError("record has no 'intent' field", source, number)
        yield _conala_record(row, f"{source}:{number}")


def is_conala_hub(source: str) -> bool:
    return looks_like_hub_id(source) and split_hub_id(source)[0] == CONALA_HUB


def read_conala_hub(source: str, options: dict) -> Iterator[QueryRecord]:
    name, config = split_hub_id(source)
    dataset = load_hub_dataset(f"{name}:{config or 'curated'}", options.get("split", "train"))
    for index, row in enumerate(dataset):
        yield _conala_record(row, f"{source}#{index}")


PROMPTS = PromptTemplates(
    system=(
        "You rewrite Python programming questions for a semantic cache. A paraphrase asks exactly the same "
        "thing in different words, so the same code answers it. A hard negative is about the same objects "
        "but asks for a different operation or result, so the original answer would be wrong for it. "
        "Reply with one JSON object and nothing else."
    ),
    paraphrase_instruction="Write {n} paraphrases of this question. Keep every detail; change the wording.\nQuestion: {query}",
    negative_instruction=(
        "Write {n} hard negatives for this question: same topic and objects, but a different operation, "
        "direction or condition, so its code answer would be wrong.\nQuestion: {query}"
    ),
    examples=(
        FewShotExample(
            "How do I reverse a list in Python?",
            ["What is the way to reverse the order of a Python list?", "Reverse the elements of a list",
             "How can I flip a list so the last item comes first?"],
            ["How do I sort a list in Python?", "How do I remove duplicates from a list?"],
        ),
        FewShotExample(
            "convert a string to an integer",
            ["How to turn a str into an int in Python?", "parse a string as an integer",
             "change a string value into int type"],
            ["convert an integer to a string", "convert a string to a float"],
        ),
        FewShotExample(
            "check if a key exists in a dictionary",
            ["How can I test whether a dict contains a given key?", "see if a dictionary has a certain key",
             "determine if a key is present in a Python dict"],
            ["check if a value exists in a dictionary", "delete a key from a dictionary"],
        ),
    ),
    # With Qwen2.5-Coder-0.5B, LLM "negatives" that all-MiniLM-L6-v2 scores at 0.8 or more against
    # the query were nearly all rewordings of it (false negatives); good paraphrases go down to ~0.6.
    paraphrase_floor=0.6,
    negative_ceiling=0.8,
)

DOMAIN = Domain(
    name="programming",
    description="Python programming questions (CoNaLa)",
    default_source=DATA / "sample_queries.txt",
    prompts=PROMPTS,
    evaluation_sets=EVALUATION_SETS,
    training_sets=(CONALA_TRAINING,),
    readers=(
        SourceReader("conala-hub", is_conala_hub, read_conala_hub, "neulab/conala[:curated|:mined]"),
        SourceReader("conala-json", is_conala_json, read_conala_json, "CoNaLa curated JSON array"),
        SourceReader("conala-mined", is_conala_mined, read_conala_mined, "CoNaLa mined JSON Lines"),
    ),
    min_chars=8,
    max_chars=300,
    answer_pattern=ANSWER_PATTERN,
    filler_words=FILLER_WORDS,
    group_field="question_id",
)


# tryfirst: a built-in keeps its names unless a plugin's hook is tryfirst too (core/plugin_manager.py)
@hookimpl(tryfirst=True)
def register_domains(register):
    register(DOMAIN)
