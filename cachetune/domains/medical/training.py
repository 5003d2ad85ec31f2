"""The ``medical`` domain's training sets: RQE training pairs (question <-> shorter question,
entailed) and MedQuAD questions with LLM-written paraphrases and hard negatives.

The RQE training file (Ben Abacha & Demner-Fushman, AMIA 2016; 8,588 pairs) pairs a clinical
question, often long, with a shorter question it entails (``value="true"``): the cache's task of
matching a wordy incoming question to a short cached one, in human wording. Only its true pairs
are used: its false pairs pair a question with a *random* other one (too easy to teach anything
a mined negative does not), and a third of its true pairs are the same text twice (dropped as
such when the training file is assembled). Read from the RQE training XML the run names
(``--training-source rqe-train=FILE``), else from the subset the package ships
(``data/train/rqe_train_pairs.jsonl``; source, licence CC BY 4.0 and attribution in
``data/train/RQE_TRAIN_SOURCE.md``). The test file's pairs are the evaluation set; no training
pair shares a text with them.

``medquad-llm``: what the measured signal for medical is (README, Results): MedQuAD questions,
each with paraphrases (label 1) and hard negatives (label 0: same topic, another question)
written by the default generator, ``group`` = the question. A default run generates for a few
dozen queries only; this set ships the triplets of a full-size generation so that run trains on
that signal too (``data/train/medquad_llm_pairs.jsonl``; source, generator and licence in
``data/train/MEDQUAD_LLM_SOURCE.md``). ``--training-source medquad-llm=FILE`` reads the
triplets of a ``cachetune generate`` run of one's own instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cachetune.core.errors import CachetuneError
from cachetune.core.types import TrainingContext, TrainingSet

PACKAGED_TRAINING_PAIRS = Path(__file__).parent / "data" / "train" / "rqe_train_pairs.jsonl"
PACKAGED_LLM_PAIRS = Path(__file__).parent / "data" / "train" / "medquad_llm_pairs.jsonl"
# Who wrote medquad-llm's paraphrases and negatives (cachetune generate's default generator).
GENERATOR = "llama-cpp:qwen2.5-coder-0.5b-instruct-q4_k_m"


def load_rqe_training(context: TrainingContext) -> Optional[list]:
    """The true pairs of an RQE training XML (the run's source or the named file), else the packaged ones."""
    from cachetune.domains.medical.evaluation import read_rqe

    source = Path(context.source).expanduser() if context.source else None
    if source is not None and source.suffix.lower() == ".xml" and source.is_file():
        return [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": 1}
                for r in read_rqe(source) if r["label"] == 1]
    if context.explicit:
        raise CachetuneError("--training-source rqe-train: expected the RQE training XML "
                             "(RQE_Train_8588_AMIA2016.xml)", source)
    return _packaged(PACKAGED_TRAINING_PAIRS)


def _packaged(path: Path) -> Optional[list]:
    """The pairs the package ships at ``path`` (``None`` when a trimmed install left them out)."""
    from cachetune.core.evaluate.inputs import read_pairs

    return read_pairs(path, both_labels=False) if path.exists() else None


RQE_TRAINING = TrainingSet(
    name="rqe-train",
    load=load_rqe_training,
    description="RQE training pairs (AMIA 2016): a clinical question <-> a shorter question it entails",
)


def triplets_as_pairs(path: Path) -> list:
    """``cachetune generate`` triplets as training pairs, grouped by the query they were written
    for: (anchor, positive) label 1 once per triplet (an anchor with two negatives makes two
    triplets again: its label-0 partners are handed out in turn) and (anchor, negative) label 0
    once per distinct negative."""
    from cachetune.core.jsonl import TRIPLET_FIELDS, check_triplet_fields, iter_jsonl
    from cachetune.core.text import normalize_query

    rows, seen = [], set()
    for line, row in iter_jsonl(path):
        check_triplet_fields(row, path, line)
        if row.get("domain") not in (None, "medical"):
            raise CachetuneError(f"a triplet of domain '{row['domain']}', not 'medical'", path, line)
        anchor, positive, negative = (normalize_query(row[k]) for k in TRIPLET_FIELDS)
        group = str(row.get("query_id") or anchor)
        rows.append({"sentence1": anchor, "sentence2": positive, "label": 1, "group": group})
        if (anchor, negative) not in seen:
            seen.add((anchor, negative))
            rows.append({"sentence1": anchor, "sentence2": negative, "label": 0, "group": group})
    if not rows:
        raise CachetuneError("no triplets in the file", path)
    return rows


def load_medquad_llm(context: TrainingContext) -> Optional[list]:
    """The triplets file the run names (``--training-source medquad-llm=FILE``), else the packaged pairs."""
    if context.explicit:
        source = Path(context.source).expanduser()
        if not source.is_file():
            raise CachetuneError("--training-source medquad-llm: file not found", source)
        return triplets_as_pairs(source)
    return _packaged(PACKAGED_LLM_PAIRS)


MEDQUAD_LLM = TrainingSet(
    name="medquad-llm",
    load=load_medquad_llm,
    description="MedQuAD questions with paraphrases and hard negatives written by the default generator",
    generator=GENERATOR,
)

TRAINING_SETS = (RQE_TRAINING, MEDQUAD_LLM)
