"""Hard negatives mined from the corpus with the base embedding model (no LLM).

For an anchor (a paraphrase) and its positive (the original query), the candidates are the
other queries of the corpus; a candidate is kept only if its similarity to the anchor stays
below the positive's by a relative margin (``score <= positive - |positive| * margin``), which
keeps near duplicates of the positive -- false negatives -- out. The ``k`` most similar of the
rest are the hard negatives. This is the ``sampling_strategy="top"`` / ``relative_margin`` rule
of sentence-transformers' ``mine_hard_negatives``; that function is not called because it
embeds the corpus again on every call and wants every anchor up front, while generation
streams queries batch by batch (and resumes): here the corpus is embedded once and each
batch's anchors are scored against it -- over the whole corpus, where ``mine_hard_negatives``
looks at its top ``10 * k + 1`` only and may return nothing for an anchor far from its
positive. Candidates that are the positive or the anchor up to normalisation (see
:mod:`cachetune.core.text`) are excluded as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from cachetune.core.text import exact_key, near_key

DEFAULT_RELATIVE_MARGIN = 0.05


@dataclass(frozen=True)
class Mined:
    text: str
    score: float


class HardNegativeMiner:
    """Mines negatives for anchors from a fixed corpus of queries.

    :param model: a SentenceTransformer (the base model).
    :param corpus: the candidate texts (the queries of the input file).
    :param relative_margin: a candidate must score at most ``positive * (1 - margin)``.
    """

    def __init__(self, model, corpus: Sequence[str], relative_margin: float = DEFAULT_RELATIVE_MARGIN,
                 batch_size: int = 64, show_progress: bool = False):
        if not 0.0 <= relative_margin < 1.0:
            raise ValueError(f"relative_margin must be in [0, 1), got {relative_margin}")
        self.model = model
        self.corpus = list(dict.fromkeys(corpus))  # order kept, duplicates dropped
        self.margin = relative_margin
        self.batch_size = batch_size
        self._keys = [(exact_key(t), near_key(t)) for t in self.corpus]
        self._embeddings = model.encode(self.corpus, batch_size=batch_size, convert_to_tensor=True,
                                        normalize_embeddings=True, show_progress_bar=show_progress)

    def mine(self, anchors: Sequence[str], positives: Sequence[str], k: int,
             positive_scores: Optional[Sequence[float]] = None) -> List[List[Mined]]:
        """Up to ``k`` negatives per (anchor, positive) pair, most similar first."""
        import torch

        if not anchors or k <= 0:
            return [[] for _ in anchors]
        enc = dict(batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True,
                   show_progress_bar=False)
        anchor_emb = self.model.encode(list(anchors), **enc)
        if positive_scores is None:
            positive_emb = self.model.encode(list(positives), **enc)
            positive_scores = (anchor_emb * positive_emb).sum(dim=1).tolist()
        scores = anchor_emb @ self._embeddings.T
        # The margin: candidates too close to the positive (likely paraphrases of it) are out.
        pos = torch.as_tensor(list(positive_scores), dtype=scores.dtype, device=scores.device)
        ceiling = (pos - pos.abs() * self.margin).unsqueeze(1)
        scores = scores.masked_fill(scores > ceiling, float("-inf"))
        # A few spare candidates for the exclusions by text below.
        top = min(len(self.corpus), k + 16)
        values, indices = torch.topk(scores, k=top, dim=1)
        results: List[List[Mined]] = []
        for row, (anchor, positive) in enumerate(zip(anchors, positives)):
            excluded = {exact_key(anchor), near_key(anchor), exact_key(positive), near_key(positive)}
            picked: List[Mined] = []
            for value, index in zip(values[row].tolist(), indices[row].tolist()):
                if value == float("-inf") or excluded & set(self._keys[index]):
                    continue
                picked.append(Mined(self.corpus[index], round(float(value), 4)))
                if len(picked) == k:
                    break
            results.append(picked)
        return results
