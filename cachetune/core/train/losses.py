"""The ranking losses ``cachetune train`` can use, computed from a step's embeddings.

- ``mnrl`` (default): sentence-transformers' ``MultipleNegativesRankingLoss``: each anchor
  against every positive of the batch and the rows' hard negatives, scale ``1 / temperature``.
- ``symmetric``: the same loss with ``directions=("query_to_doc", "doc_to_query")`` and
  ``partition_mode="per_direction"`` (sentence-transformers' replacement for
  ``MultipleNegativesSymmetricRankingLoss``): each positive must also pick its own anchor among
  the batch's anchors. A cache compares queries with queries, so either side may be the new one.
- ``guide_filter``: GISTEmbed's in-batch false-negative filter (Solatorio 2024,
  sentence-transformers' ``GISTEmbedLoss``) with the frozen base model as the guide: a
  candidate the base model scores above the anchor's own positive (``> positive - margin``) is
  probably another wording of the same question, so it is masked out of that anchor's softmax
  instead of being pushed away. The guide embeddings are computed once before training (the
  guide never changes), not per step. Unlike ``GISTEmbedLoss`` the row's *own* hard negative is
  never masked: the training file's negatives are chosen on purpose (human-labelled, mined
  below the positive, or LLM negatives the base model does not rank backwards).
- ``pair_loss_weight`` > 0 adds that weight times CoSENT (Huang et al. 2024, sentence-transformers'
  ``CoSENTLoss``) over the step's (anchor, candidate) pairs: the rows' own positives labelled 1,
  every other candidate of the batch (other rows' positives, every hard negative) labelled 0. The
  ranking losses compare each anchor's candidates with each other; a cache compares every pair
  with one threshold, so this term asks for every positive pair of the batch above every negative
  pair, across anchors. Computed in closed form on the score matrix (CoSENT with two labels is
  ``log(1 + sum over (positive, negative) of exp(scale * (s_neg - s_pos)))``), which equals
  ``CoSENTLoss`` on the expanded pairs without building them; with the guide filter, the cells the
  guide masks are left out of the negatives too.

Every loss is a callable ``loss(embeddings, text_ids)``: ``embeddings`` the step's columns
(anchors, positives[, negatives]), ``text_ids`` the same columns as ids of the distinct texts.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

LOSSES = ("mnrl", "symmetric")


class LibraryRankingLoss:
    """sentence-transformers' MNRL (one or both directions) on precomputed embeddings."""

    def __init__(self, model, scale: float, symmetric: bool):
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        directions = ("query_to_doc", "doc_to_query") if symmetric else ("query_to_doc",)
        self.loss = MultipleNegativesRankingLoss(model, scale=scale, directions=directions,
                                                 partition_mode="per_direction" if symmetric else "joint")

    def __call__(self, embeddings: List, text_ids: Sequence[Sequence[int]]):
        return self.loss.compute_loss_from_embeddings(embeddings, None)


class GuidedRankingLoss:
    """The MNRL above with GISTEmbed's false-negative mask from fixed guide embeddings."""

    def __init__(self, guide, scale: float, symmetric: bool, margin: float = 0.0):
        self.guide = guide  # (distinct texts, dim), normalised, indexed by text id
        self.scale = scale
        self.symmetric = symmetric
        self.margin = margin

    def __call__(self, embeddings: List, text_ids: Sequence[Sequence[int]]):
        import torch
        import torch.nn.functional as F

        anchors, candidates = F.normalize(embeddings[0], dim=-1), [F.normalize(e, dim=-1) for e in embeddings[1:]]
        guide, guided_positive, own, masked = guide_false_negatives(self.guide, text_ids, self.margin, anchors.device)
        batch = anchors.size(0)
        rows = torch.arange(batch, device=anchors.device)
        forward = (anchors @ torch.cat(candidates).T).masked_fill(masked, float("-inf"))
        scores = [forward * self.scale]
        if self.symmetric:
            backward = candidates[0] @ anchors.T
            backward = backward.masked_fill((guide[1] @ guide[0].T > guided_positive - self.margin) & ~own[:, :batch],
                                            float("-inf"))
            scores.append(backward * self.scale)
        positive = scores[0][rows, rows]
        log_z = sum(torch.logsumexp(s, dim=1) for s in scores) / len(scores)
        return -(positive - log_z).mean()


def guide_false_negatives(guide, text_ids: Sequence[Sequence[int]], margin: float, device):
    """What the guide says of one step: ``(guide rows per column, each anchor's guided positive
    score, own, masked)``. ``own`` marks a row's own positive and own hard negative among the
    (anchor, candidate) cells; ``masked`` the cells the guide scores above the anchor's own
    positive (``> positive - margin``), probable false negatives, never an ``own`` cell."""
    import torch

    rows_guide = [guide[torch.as_tensor(list(ids), dtype=torch.long)].to(device) for ids in text_ids]
    batch, columns = len(text_ids[0]), len(text_ids) - 1
    rows = torch.arange(batch, device=device)
    own = torch.zeros((batch, batch * columns), dtype=torch.bool, device=device)
    for column in range(columns):
        own[rows, column * batch + rows] = True
    guided_positive = (rows_guide[0] * rows_guide[1]).sum(-1, keepdim=True)
    masked = (rows_guide[0] @ torch.cat(rows_guide[1:]).T > guided_positive - margin) & ~own
    return rows_guide, guided_positive, own, masked


class WithPairLoss:
    """A ranking loss plus ``weight`` x CoSENT over the step's (anchor, candidate) pairs."""

    def __init__(self, ranking, weight: float, scale: float, guide=None, margin: float = 0.0):
        self.ranking = ranking
        self.weight = weight
        self.scale = scale
        self.guide = guide
        self.margin = margin

    def pair_term(self, embeddings: List, text_ids: Sequence[Sequence[int]]):
        import torch
        import torch.nn.functional as F

        anchors = F.normalize(embeddings[0].float(), dim=-1)
        candidates = torch.cat([F.normalize(e.float(), dim=-1) for e in embeddings[1:]])
        scores = anchors @ candidates.T  # (batch, batch * candidate columns)
        batch = anchors.size(0)
        rows = torch.arange(batch, device=anchors.device)
        is_positive = torch.zeros_like(scores, dtype=torch.bool)
        is_positive[rows, rows] = True
        negative = ~is_positive
        if self.guide is not None:  # the guide's probable false negatives are not negatives here either
            negative &= ~guide_false_negatives(self.guide, text_ids, self.margin, anchors.device)[3]
        spread = torch.logsumexp(self.scale * scores[negative], dim=0) + torch.logsumexp(-self.scale * scores[is_positive], dim=0)
        return F.softplus(spread)

    def __call__(self, embeddings: List, text_ids: Sequence[Sequence[int]]):
        return self.ranking(embeddings, text_ids) + self.weight * self.pair_term(embeddings, text_ids)


def make_loss(name: str, model, scale: float, guide=None, margin: float = 0.0, pair_weight: float = 0.0):
    """The loss called ``name`` (:data:`LOSSES`); with ``guide`` embeddings, guided; with
    ``pair_weight`` > 0, plus that weight x the CoSENT pair term (:class:`WithPairLoss`)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}' (known: {', '.join(LOSSES)})")
    if guide is not None:
        ranking = GuidedRankingLoss(guide, scale, symmetric=name == "symmetric", margin=margin)
    else:
        ranking = LibraryRankingLoss(model, scale, symmetric=name == "symmetric")
    return WithPairLoss(ranking, pair_weight, scale, guide, margin) if pair_weight > 0 else ranking


def guide_embeddings(model, texts, batch_size: int = 64) -> Optional[object]:
    """Normalised embeddings of ``texts`` (a :class:`TokenizedTexts`' distinct texts, in id order)
    by ``model`` as it is now (the base model, before LoRA is attached)."""
    import torch

    from cachetune.core.models import encode

    ordered = sorted(texts.index, key=texts.index.get)
    return torch.from_numpy(encode(model, ordered, batch_size=batch_size))
