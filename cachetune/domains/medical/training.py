"""The ``medical`` domain's training set: RQE training pairs (question <-> shorter question, entailed).

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
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cachetune.core.errors import CachetuneError
from cachetune.core.types import TrainingContext, TrainingSet

PACKAGED_TRAINING_PAIRS = Path(__file__).parent / "data" / "train" / "rqe_train_pairs.jsonl"


def load_rqe_training(context: TrainingContext) -> Optional[list]:
    """The true pairs of an RQE training XML (the run's source or the named file), else the packaged ones."""
    from cachetune.core.evaluate.inputs import read_pairs
    from cachetune.domains.medical.evaluation import read_rqe

    source = Path(context.source).expanduser() if context.source else None
    if source is not None and source.suffix.lower() == ".xml" and source.is_file():
        return [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": 1}
                for r in read_rqe(source) if r["label"] == 1]
    if context.explicit:
        raise CachetuneError("--training-source rqe-train: expected the RQE training XML "
                             "(RQE_Train_8588_AMIA2016.xml)", source)
    if PACKAGED_TRAINING_PAIRS.exists():
        return read_pairs(PACKAGED_TRAINING_PAIRS, both_labels=False)
    return None


RQE_TRAINING = TrainingSet(
    name="rqe-train",
    load=load_rqe_training,
    description="RQE training pairs (AMIA 2016): a clinical question <-> a shorter question it entails",
)

TRAINING_SETS = (RQE_TRAINING,)
