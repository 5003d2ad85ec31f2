"""Builds the evaluation data the built-in domains ship as package data (run by a developer, not the product).

    python tools/build_eval_data.py --conala ../shared/data/conala/conala-train.json \
        --rqe ../shared/data/rqe/RQE_Test_302_pairs_AMIA2016.xml

programming: CoNaLa curated human pairs of a fixed held-out group of Stack Overflow questions --
those whose ``question_id`` hashes to 0 modulo 8 (:func:`reserved_question`), minus any question
whose title or rewrite is a near duplicate (``cachetune.core.text.near_key``) of another
question's text or of a shipped sample query. Positives: a question's title <-> its human
rewrite (the first that differs); negatives: the title <-> the rewrite of another held-out
question among the 10 nearest under the default base model (see
``cachetune.domains.programming.evaluation``). ``prepare`` of any CoNaLa source leaves these
question ids out, so no run trains on them.

medical: the RQE test file, unchanged, after checking that no pair touches a sample query.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cachetune.core.text import near_key, normalize_query  # noqa: E402
from cachetune.domains.programming import evaluation as programming_eval  # noqa: E402
from cachetune.domains.medical import evaluation as medical_eval  # noqa: E402
from cachetune.domains.programming.rules import FILLER_WORDS  # noqa: E402

SHARE = 8  # one question in eight is held out for evaluation


def reserved_question(question_id) -> bool:
    return int(hashlib.sha256(f"conala-eval:{question_id}".encode()).hexdigest(), 16) % SHARE == 0


def sample_keys(domain: str) -> set:
    from cachetune.core.plugin_manager import get_plugin_manager

    filler = get_plugin_manager(load_entrypoints=False).get_domain(domain).filler_words
    path = REPO / "cachetune" / "domains" / domain / "data" / "sample_queries.txt"
    return {near_key(line, filler) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")}


def conala_pairs(conala: Path) -> list:
    records = json.loads(conala.read_text(encoding="utf-8"))
    texts_of = {}
    for record in records:
        for text in (record.get("intent"), record.get("rewritten_intent")):
            if normalize_query(text):
                texts_of.setdefault(near_key(text, FILLER_WORDS), set()).add(record["question_id"])
    blocked = sample_keys("programming")
    held, first = [], set()
    for record in records:
        qid = record["question_id"]
        if not reserved_question(qid) or qid in first:
            continue
        texts = [t for t in (record.get("intent"), record.get("rewritten_intent")) if normalize_query(t)]
        keys = [near_key(t, FILLER_WORDS) for t in texts]
        if any(k in blocked or texts_of[k] != {qid} for k in keys):
            continue  # a duplicate of another question's text or of a sample query
        if len(texts) == 2 and keys[0] != keys[1]:
            first.add(qid)
            held.append(record)
    return programming_eval.build_pairs(held, programming_eval.mining_embedder(), seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conala", type=Path, required=True)
    parser.add_argument("--rqe", type=Path, required=True)
    args = parser.parse_args()
    rows = conala_pairs(args.conala)
    out = programming_eval.PACKAGED_PAIRS
    with open(out, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    questions = {r["meta"]["question_id"] for r in rows}
    print(f"{out}: {len(rows)} pairs ({sum(r['label'] for r in rows)} positive), {len(questions)} questions")

    blocked = sample_keys("medical")
    rqe = medical_eval.read_rqe(args.rqe)
    touching = [r for r in rqe if near_key(r["sentence1"]) in blocked or near_key(r["sentence2"]) in blocked]
    if touching:
        sys.exit(f"{len(touching)} RQE pairs touch a medical sample query: {touching[0]}")
    shutil.copyfile(args.rqe, medical_eval.PACKAGED_RQE)
    print(f"{medical_eval.PACKAGED_RQE}: {len(rqe)} pairs, none touching a sample query")


if __name__ == "__main__":
    main()
