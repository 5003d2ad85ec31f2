"""Held-out triplet metrics used by ``cachetune train --eval-data`` and the learning-rate sweep.

- margin: mean over triplets of cos(anchor, positive) - cos(anchor, negative);
- accuracy: share of triplets with cos(anchor, positive) > cos(anchor, negative);
- recall@1: share of anchors whose nearest text among *all* distinct positives is their own
  positive. Unlike the other two it does not depend on how the negatives were chosen (mined
  negatives are the base model's nearest neighbours, which handicaps the base model).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence


def encode(model, texts: Sequence[str], batch_size: int = 128):
    """Normalised embeddings as a float32 tensor (model in eval mode, no gradients)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            emb = model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                               normalize_embeddings=True, show_progress_bar=False)
    finally:
        model.train(was_training)
    return emb.float().cpu()


def triplet_metrics(model, anchors: Sequence[str], positives: Sequence[str],
                    negatives: Sequence[Optional[str]], batch_size: int = 128) -> Dict[str, float]:
    """``{"margin", "accuracy", "recall_at_1", "triplets"}`` for ``model`` on the triplets."""
    import torch

    unique = list(dict.fromkeys([*anchors, *positives, *[n for n in negatives if n is not None]]))
    where = {t: i for i, t in enumerate(unique)}
    emb = encode(model, unique, batch_size)
    a = emb[[where[t] for t in anchors]]
    p = emb[[where[t] for t in positives]]
    pos_sim = (a * p).sum(-1)
    result: Dict[str, float] = {"triplets": len(anchors), "cos_anchor_positive": round(pos_sim.mean().item(), 4)}
    rows = [i for i, n in enumerate(negatives) if n is not None]
    if rows:
        n = emb[[where[negatives[i]] for i in rows]]
        neg_sim = (a[rows] * n).sum(-1)
        result["margin"] = round((pos_sim[rows] - neg_sim).mean().item(), 4)
        result["accuracy"] = round((pos_sim[rows] > neg_sim).float().mean().item(), 4)
    targets = list(dict.fromkeys(positives))
    target_index = {t: i for i, t in enumerate(targets)}
    scores = a @ emb[[where[t] for t in targets]].T
    gold = torch.tensor([target_index[t] for t in positives])
    result["recall_at_1"] = round((scores.argmax(-1) == gold).float().mean().item(), 4)
    return result
