"""What the base embedding model does in ``generate``: the similarity filter and mined negatives.

Both work on one batch of ``(Item, Checked)`` pairs, after the replies were validated.
"""

from __future__ import annotations

from typing import List, Tuple

from cachetune.core.generate.inputs import Item
from cachetune.core.generate.prompting import NEGATIVES, PARAPHRASES, Checked


class EmbeddingFilter:
    """Drops paraphrases too far from the query and negatives too close to it (cosine)."""

    def __init__(self, model, floor: float, ceiling: float):
        self.model, self.floor, self.ceiling = model, floor, ceiling

    def similarities(self, pairs: List[Tuple[str, str]]) -> List[float]:
        if not pairs:
            return []
        enc = dict(convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False, batch_size=64)
        left = self.model.encode([a for a, _ in pairs], **enc)
        right = self.model.encode([b for _, b in pairs], **enc)
        return (left * right).sum(dim=1).tolist()

    def keeps(self, kind: str, score: float) -> bool:
        """Whether an item of ``kind`` at cosine ``score`` to its query passes."""
        return score >= self.floor if kind == PARAPHRASES else score <= self.ceiling

    def any_kept(self, query: str, kind: str, items: List[str]) -> bool:
        """Whether any of ``items`` (of ``kind``, for ``query``) passes."""
        scores = self.similarities([(query, item) for item in items])
        return any(self.keeps(kind, score) for score in scores)

    def apply(self, batch: List[Tuple[Item, Checked]]) -> None:
        pairs, where = [], []
        for index, (item, checked) in enumerate(batch):
            for text in checked.paraphrases:
                pairs.append((item.query, text)); where.append((index, PARAPHRASES, text))
            for text in checked.negatives:
                pairs.append((item.query, text)); where.append((index, NEGATIVES, text))
        drop = set()
        for (index, kind, text), score in zip(where, self.similarities(pairs)):
            if not self.keeps(kind, score):
                drop.add((index, kind, text))
                reason = "paraphrase/below_similarity_floor" if kind == PARAPHRASES else \
                    "negative/above_similarity_ceiling"
                batch[index][1].rejected[reason] += 1
        for index, (_, checked) in enumerate(batch):
            checked.paraphrases[:] = [t for t in checked.paraphrases if (index, PARAPHRASES, t) not in drop]
            checked.negatives[:] = [t for t in checked.negatives if (index, NEGATIVES, t) not in drop]


def mine_batch(miner, pairs: List[Tuple[Item, Checked]], k: int) -> List[list]:
    anchors, positives, owners = [], [], []
    for index, (item, checked) in enumerate(pairs):
        for anchor in checked.paraphrases:
            anchors.append(anchor); positives.append(item.query); owners.append(index)
    found = miner.mine(anchors, positives, k)
    per_item: List[list] = [[] for _ in pairs]
    for owner, negatives in zip(owners, found):
        per_item[owner].append(negatives)
    return per_item


def mine_where_no_negative(miner, pairs: List[Tuple[Item, Checked]]) -> List[list]:
    """One mined negative per paraphrase, only for the queries left without an LLM negative."""
    wanted = [i for i, (_, checked) in enumerate(pairs) if checked.paraphrases and not checked.negatives]
    per_item: List[list] = [[] for _ in pairs]
    if wanted:
        for index, found in zip(wanted, mine_batch(miner, [pairs[i] for i in wanted], 1)):
            per_item[index] = found
    return per_item
