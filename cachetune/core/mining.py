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

:func:`nearest_neighbours` is the one nearest-neighbour search of cachetune: this miner, the
CoNaLa training pairs' negatives and the CoNaLa evaluation set's negatives all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from cachetune.core.text import exact_key, near_key

DEFAULT_RELATIVE_MARGIN = 0.05


def _as_numpy(matrix):
    if hasattr(matrix, "detach"):  # a torch tensor, possibly on an accelerator
        return matrix.detach().float().cpu().numpy()
    return matrix


def nearest_neighbours(queries, corpus, k: int, skip: Optional[Callable[[int, int], bool]] = None,
                       ceiling: Optional[Sequence[float]] = None, chunk: int = 1024,
                       spare: int = 16) -> Iterator[List[Tuple[int, float]]]:
    """The one nearest-neighbour miner: for each row ``i`` of ``queries``, up to ``k`` pairs
    ``(j, score)`` of ``corpus`` rows, highest cosine first (ties: lowest ``j`` first).

    Both are normalised embeddings (numpy arrays or torch tensors), so cosine = dot product,
    computed in the inputs' own library. A row ``j`` is passed over when ``skip(i, j)`` is
    true or, given ``ceiling``, when its score exceeds ``ceiling[i]``. Rows are yielded one
    at a time and ``skip`` is asked lazily, so a caller may change what it skips after each
    row. The ``k + spare`` best are ranked first; only when skips leave fewer than ``k`` is
    the whole row ranked.
    """
    import numpy as np

    for start in range(0, queries.shape[0], chunk):
        scores = _as_numpy(queries[start:start + chunk] @ corpus.T)
        if ceiling is not None:
            limit = np.asarray(ceiling[start:start + chunk], dtype=scores.dtype)[:, None]
            scores = np.where(scores > limit, -np.inf, scores)
        for offset, row in enumerate(scores):
            i = start + offset
            top = min(row.shape[0], k + spare)
            picked, exhausted = _pick(row, _best(row, top), k, skip, i)
            if len(picked) < k and not exhausted and top < row.shape[0]:
                picked, _ = _pick(row, np.argsort(-row, kind="stable"), k, skip, i)
            yield picked


def _pick(row, order, k: int, skip, i: int) -> Tuple[List[Tuple[int, float]], bool]:
    """Up to ``k`` of ``order`` not skipped; True when it ran into the masked (-inf) scores."""
    picked: List[Tuple[int, float]] = []
    for j in order:
        j = int(j)
        if row[j] == float("-inf"):
            return picked, True
        if skip is not None and skip(i, j):
            continue
        picked.append((j, float(row[j])))
        if len(picked) == k:
            break
    return picked, False


def _best(row, top: int):
    """Indices of the ``top`` highest values of ``row``, highest first, ties by index (stable)."""
    import numpy as np

    if top >= row.shape[0]:
        return np.argsort(-row, kind="stable")
    threshold = np.partition(row, row.shape[0] - top)[row.shape[0] - top]
    kept = np.flatnonzero(row >= threshold)  # every tie of the top-th value, ascending index
    return kept[np.argsort(-row[kept], kind="stable")]


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
        import numpy as np

        if not anchors or k <= 0:
            return [[] for _ in anchors]
        enc = dict(batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True,
                   show_progress_bar=False)
        anchor_emb = self.model.encode(list(anchors), **enc)
        if positive_scores is None:
            positive_emb = self.model.encode(list(positives), **enc)
            positive_scores = (anchor_emb * positive_emb).sum(dim=1).tolist()
        # The margin: candidates too close to the positive (likely paraphrases of it) are out.
        pos = np.asarray(list(positive_scores), dtype=np.float32)
        ceiling = pos - np.abs(pos) * np.float32(self.margin)
        excluded = [{exact_key(a), near_key(a), exact_key(p), near_key(p)} for a, p in zip(anchors, positives)]
        found = nearest_neighbours(anchor_emb, self._embeddings, k, ceiling=ceiling,
                                   skip=lambda i, j: bool(excluded[i] & set(self._keys[j])))
        return [[Mined(self.corpus[j], round(score, 4)) for j, score in picked] for picked in found]
