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
file (302 pairs) ships with the package, unchanged (``data/eval/RQE_Test_302_pairs_AMIA2016.xml``;
source, licence CC BY 4.0 and attribution in ``data/eval/RQE_SOURCE.md``); no pair touches a
shipped sample query (checked by ``tools/build_eval_data.py``). Its negatives are real near
misses (same condition, different question). The training file's negatives are random
questions and half its positives are identical strings, so it is not used by default (point
``--eval-data`` at it, or at any pairs file, to evaluate on it anyway). With a prepared folder
pairs touching a training query (by ``prepare``'s near-duplicate rule) are dropped.

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
from cachetune.core.text import normalize_query

PACKAGED_RQE = Path(__file__).parent / "data" / "eval" / "RQE_Test_302_pairs_AMIA2016.xml"


def read_rqe(path) -> list:
    """``<pair pid value="true|false"><chq>..</chq><faq>..</faq></pair>`` -> pair rows.

    A pair with an empty side is skipped (the published training file has one, pid 5860). A
    pair labelled false whose two texts are those of a pair labelled true is dropped: each
    published file has one, a slip in building its negatives. The test file's part3 pairs
    (pids 186-301, all false) set part2's consumer questions against *another* FAQ, and pid
    300 drew the question's own FAQ back (its texts are pid 184's, labelled true); in the
    training file pid 95 ("originalQ-shortRandQ", a random question) drew the question itself
    (pid 94). Kept, such a row ties with its true twin in every model: a false hit above the
    rest that no model can avoid (on the test file it alone sets every model's out-of-sample
    threshold out of reach and costs each about 0.027 AP).
    """
    from cachetune.core.evaluate.inputs import pair_key

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
    true_pairs = {pair_key(r) for r in rows if r["label"] == 1}
    return [r for r in rows if r["label"] == 1 or pair_key(r) not in true_pairs]


def load_rqe_pairs(context: EvaluationContext) -> Optional[list]:
    """The packaged RQE test pairs (or ``--eval-data``: an RQE XML file or a pairs file),
    without any that touch a training query."""
    import os

    from cachetune.core.evaluate.inputs import drop_training_pairs, read_pairs, sample_rows

    path = PACKAGED_RQE
    if context.eval_data:
        path = Path(os.path.expanduser(str(context.eval_data)))
        if not path.is_file():
            raise CachetuneError("evaluation data not found (--eval-data: an RQE XML file or a pairs file)", path)
    rows = read_rqe(path) if path.suffix.lower() == ".xml" else read_pairs(path)
    rows = drop_training_pairs(rows, context.holdout)
    return sample_rows(rows, context) or None


RQE_PAIRS = EvaluationSet(
    name="rqe-test",
    kind="pairs",
    load=load_rqe_pairs,
    description="RQE test (AMIA 2016): consumer health question <-> NIH FAQ, human-labelled entailment",
)

EVALUATION_SETS = (RQE_PAIRS,)
