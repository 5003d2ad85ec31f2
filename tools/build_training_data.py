"""Builds the human training pairs the built-in domains ship as package data (run by a developer, not the product).

    python tools/build_training_data.py --conala ../shared/data/conala/conala-train.json \
        --rqe-train ../shared/data/rqe/RQE_Train_8588_AMIA2016.xml --conala-pairs 600 --rqe-pairs 600

programming (``conala_train_pairs.jsonl``): CoNaLa curated intent <-> rewritten_intent pairs
(label 1, ``group`` = the Stack Overflow question id) of questions outside the packaged
evaluation set: no question id of an evaluation pair (either side), no text that is a near
duplicate (``cachetune.core.text.near_key``) of an evaluation text. A seeded sample of
``--conala-pairs`` questions.

medical (``rqe_train_pairs.jsonl``): true RQE training pairs (clinical question <-> the shorter
question it entails) whose two texts differ and share no near-duplicate text with the RQE test
file (the evaluation set); a seeded sample of ``--rqe-pairs``.

medical (``medquad_llm_pairs.jsonl``, ``--medquad-llm TRIPLETS``): the triplets of a ``cachetune
generate`` run on MedQuAD questions as pairs (anchor <-> positive label 1 once per triplet,
anchor <-> negative label 0, ``group`` = the question), every triplet touching a near duplicate
of an RQE test text left out:

    cachetune prepare --domain medical --source ../shared/data/medquad --limit 3000 --output runs/q2/medical
    cachetune generate --domain medical --input runs/q2/medical/train.jsonl --output runs/full/medical/train.jsonl --limit 1500
    python tools/build_training_data.py --medquad-llm runs/full/medical/train.jsonl

Each option given rewrites its own file only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cachetune.core.text import exact_key, near_key  # noqa: E402
from cachetune.domains.medical import evaluation as medical_eval, training as medical_training  # noqa: E402
from cachetune.domains.programming import training_pairs  # noqa: E402
from cachetune.domains.programming.rules import FILLER_WORDS  # noqa: E402


EVAL_OVERRIDES: dict = {}


def evaluation_rows(domain: str) -> list:
    """The domain's evaluation pairs as ``evaluate`` loads them with no prepared folder
    (or the file ``--eval-pairs DOMAIN=FILE`` names)."""
    from cachetune.core.evaluate.inputs import read_pairs
    from cachetune.core.plugin_manager import get_plugin_manager
    from cachetune.core.types import EvaluationContext

    if domain in EVAL_OVERRIDES:
        path = Path(EVAL_OVERRIDES[domain])
        return medical_eval.read_rqe(path) if path.suffix == ".xml" else read_pairs(path)
    pm = get_plugin_manager(load_entrypoints=False)
    rows = []
    for eval_set in pm.evaluation_sets(domain):
        rows += eval_set.load(EvaluationContext(domain=domain)) or []
    if not rows:
        sys.exit(f"no evaluation pairs found for {domain}: build them first (tools/build_eval_data.py)")
    return rows


def conala_rows(conala: Path, count: int, seed: int) -> list:
    held = evaluation_rows("programming")
    held_ids = {str(r["meta"][k]) for r in held for k in ("question_id", "negative_question_id")
                if r.get("meta", {}).get(k) is not None}
    held_keys = {near_key(r[f], FILLER_WORDS) for r in held for f in ("sentence1", "sentence2")}
    by_group = {}
    for pair in training_pairs.read_conala_pairs(conala):
        if pair.group in held_ids or {near_key(pair.query, FILLER_WORDS), near_key(pair.paraphrase, FILLER_WORDS)} \
                & held_keys:
            continue
        by_group.setdefault(pair.group, []).append(pair)
    groups = sorted(by_group)
    random.Random(seed).shuffle(groups)
    rows = []
    for group in sorted(groups[:count], key=lambda g: int(g) if g.isdigit() else 0):
        rows += [{"sentence1": p.query, "sentence2": p.paraphrase, "label": 1, "group": p.group} for p in by_group[group]]
    print(f"programming: {len(by_group)} questions outside the evaluation set, {len(groups[:count])} kept")
    return rows


def rqe_test_keys() -> set:
    """Near keys of every text of the medical evaluation pairs (the RQE test file)."""
    return {near_key(r[f]) for r in evaluation_rows("medical") for f in ("sentence1", "sentence2")}


def rqe_rows(rqe_train: Path, count: int, seed: int) -> list:
    held_keys = rqe_test_keys()
    rows = [r for r in medical_eval.read_rqe(rqe_train) if r["label"] == 1
            and exact_key(r["sentence1"]) != exact_key(r["sentence2"])
            and not {near_key(r["sentence1"]), near_key(r["sentence2"])} & held_keys]
    print(f"medical: {len(rows)} true pairs of two different texts outside the evaluation set")
    keep = sorted(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))
    return [{"sentence1": rows[i]["sentence1"], "sentence2": rows[i]["sentence2"], "label": 1} for i in keep]


def medquad_llm_rows(triplets: Path) -> list:
    held_keys = rqe_test_keys()
    rows = medical_training.triplets_as_pairs(triplets)
    touching = {r["group"] for r in rows if {near_key(r["sentence1"]), near_key(r["sentence2"])} & held_keys}
    kept = [r for r in rows if r["group"] not in touching]
    print(f"medical: {sum(r['label'] == 1 for r in rows)} LLM triplets of {len({r['group'] for r in rows})} "
          f"questions, {len(touching)} questions touching the evaluation set left out")
    return kept


def write(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conala", type=Path, help="CoNaLa curated training JSON")
    parser.add_argument("--rqe-train", type=Path, help="RQE_Train_8588_AMIA2016.xml")
    parser.add_argument("--medquad-llm", type=Path, help="cachetune generate triplets of MedQuAD questions")
    parser.add_argument("--conala-pairs", type=int, default=600, help="questions to ship")
    parser.add_argument("--rqe-pairs", type=int, default=600, help="pairs to ship")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-pairs", action="append", default=[], metavar="DOMAIN=FILE",
                        help="the evaluation pairs to stay apart from (default: the domain's evaluation sets)")
    args = parser.parse_args()
    EVAL_OVERRIDES.update(item.split("=", 1) for item in args.eval_pairs)
    if not (args.conala or args.rqe_train or args.medquad_llm):
        parser.error("nothing to build: give --conala, --rqe-train and/or --medquad-llm")
    if args.conala:
        write(training_pairs.PACKAGED_TRAINING_PAIRS, conala_rows(args.conala, args.conala_pairs, args.seed))
    if args.rqe_train:
        write(medical_training.PACKAGED_TRAINING_PAIRS, rqe_rows(args.rqe_train, args.rqe_pairs, args.seed))
    if args.medquad_llm:
        write(medical_training.PACKAGED_LLM_PAIRS, medquad_llm_rows(args.medquad_llm))


if __name__ == "__main__":
    main()
