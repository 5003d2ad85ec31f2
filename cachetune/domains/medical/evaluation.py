"""The ``medical`` domain's evaluation set: RQE, human-labelled consumer question <-> FAQ pairs.

Why not MedQuAD: its questions are generated from templates per question type ("What is
(are) X ?", "What are the symptoms of X ?"), so two MedQuAD questions with the same focus
and qtype are mostly the *same string*, and pairs across qtypes differ only in the template
words. Neither is a paraphrase a real user would write; a model scores them by template
overlap, not meaning.

RQE (Ben Abacha & Demner-Fushman, AMIA 2016) is what a medical cache meets: a long consumer
health question (``chq``, often a subject line and a story) paired with a short NIH FAQ
(``faq``), labelled ``true`` when the FAQ's answer answers the consumer's question. A cache
hit from the consumer question to that FAQ is right exactly when the label is true. Its test
file (302 pairs) is used as it is published; its negatives are real near misses (same
condition, different question). The training file's negatives are random questions and half
its positives are identical strings, so it is not used by default (point ``--eval-source``
at it to evaluate on it anyway).

Consumer questions are long (up to ~220 words); they are encoded up to the model's
``max_seq_length`` (256 word pieces for all-MiniLM-L6-v2) and the report counts the rows
that were truncated.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from cachetune.core.types import EvaluationContext, EvaluationSet
from cachetune.core.errors import CachetuneError
from cachetune.core.text import exact_key, normalize_query

RQE_DIR = "rqe"
RQE_TEST_GLOB = "RQE_Test*.xml"


def _find_file(path: Path, explicit: bool) -> Optional[Path]:
    if path.is_file():
        return path
    found = sorted(path.glob(RQE_TEST_GLOB)) or sorted(path.rglob(RQE_TEST_GLOB))
    if found:
        return found[0]
    if explicit:
        raise CachetuneError(f"no RQE test file ({RQE_TEST_GLOB}) in the folder (--eval-source)", path)
    return None


def read_rqe(path) -> list:
    """``<pair pid value="true|false"><chq>..</chq><faq>..</faq></pair>`` -> pair rows.

    A pair with an empty side is skipped (the published training file has one, pid 5860).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise CachetuneError(f"invalid XML: {exc}", path, exc.position[0]) from None
    if not root.tag.startswith("RQE"):
        raise CachetuneError(f"not an RQE file (root <{root.tag}>, expected <RQE-med-test> or <RQE-med-train>)", path)
    rows = []
    for pair in root.iter("pair"):
        pid = pair.get("pid", "?")
        value = (pair.get("value") or "").strip().lower()
        if value not in ("true", "false"):
            raise CachetuneError(f"pair {pid}: value must be true or false, got {pair.get('value')!r}", path)
        chq, faq = normalize_query(pair.findtext("chq")), normalize_query(pair.findtext("faq"))
        if not chq or not faq:
            continue  # the published training file has a pair with an empty question
        rows.append({"sentence1": chq, "sentence2": faq, "label": int(value == "true"),
                     "meta": {"pid": pid, "type": pair.get("type", "")}})
    if not rows:
        raise CachetuneError("no <pair> in the RQE file", path)
    return rows


def load_rqe_pairs(context: EvaluationContext) -> Optional[list]:
    """The RQE test pairs, without any whose text is a training query; ``None`` if absent."""
    from cachetune.core.evaluate.inputs import locate_eval_data, prepared_keys, sample_rows

    located = locate_eval_data(context, RQE_DIR)
    if located is None:
        return None
    path = _find_file(located, explicit=bool(context.source))
    if path is None:
        return None
    rows = read_rqe(path)
    if context.holdout:
        _, train = prepared_keys(context.holdout)
        rows = [r for r in rows if exact_key(r["sentence1"]) not in train and exact_key(r["sentence2"]) not in train]
    return sample_rows(rows, context) or None


RQE_PAIRS = EvaluationSet(
    name="rqe-test",
    kind="pairs",
    load=load_rqe_pairs,
    description="RQE test (AMIA 2016): consumer health question <-> NIH FAQ, human-labelled entailment",
)

EVALUATION_SETS = (RQE_PAIRS,)
