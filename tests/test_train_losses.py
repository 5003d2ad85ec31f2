"""The training losses against sentence-transformers' own: MNRL, its symmetric form, GISTEmbed's filter."""

from __future__ import annotations

import json

import pytest

from cachetune.core.train.losses import GuidedRankingLoss, make_loss


def embeddings(n=6, dim=16, columns=3, seed=0):
    import torch

    torch.manual_seed(seed)
    return [torch.nn.functional.normalize(torch.randn(n, dim), dim=-1) for _ in range(columns)]


def ids(n, columns=3):
    return [list(range(c * n, (c + 1) * n)) for c in range(columns)]


def conala_pair_triplets(shared_data, path, n=30):
    """``n`` CoNaLa training pairs as triplets (another pair's question as the negative), written to ``path``."""
    from cachetune.domains.programming.training_pairs import read_conala_pairs

    pairs = read_conala_pairs(shared_data / "conala" / "conala-train.json")[:n]
    rows = [{"anchor": p.paraphrase, "positive": p.query, "negative": pairs[(i + 7) % n].query}
            for i, p in enumerate(pairs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_mnrl_and_symmetric_are_the_library_losses():
    import torch
    import torch.nn.functional as F

    a, p, n = embeddings()
    target = torch.arange(6)
    forward = F.cross_entropy(20.0 * a @ torch.cat([p, n]).T, target)
    backward = F.cross_entropy(20.0 * p @ a.T, target)
    mnrl = make_loss("mnrl", None, 20.0)
    symmetric = make_loss("symmetric", None, 20.0)
    assert torch.allclose(mnrl([a, p, n], ids(6)), forward, atol=1e-5)
    assert torch.allclose(symmetric([a, p, n], ids(6)), (forward + backward) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="unknown loss 'triplet'"):
        make_loss("triplet", None, 20.0)


@pytest.mark.parametrize("name", ["mnrl", "symmetric"])
def test_guided_loss_without_a_masked_candidate_is_the_library_loss(name):
    import torch

    a, p, n = embeddings()
    # A guide that finds every candidate far below every positive masks nothing.
    guide = torch.cat([torch.eye(18, 18)[:6] + torch.eye(18, 18)[6:12], torch.eye(18, 18)[6:12],
                       torch.eye(18, 18)[12:]])
    guided = make_loss(name, None, 20.0, guide=guide)
    assert isinstance(guided, GuidedRankingLoss)
    assert torch.allclose(guided([a, p, n], ids(6)), make_loss(name, None, 20.0)([a, p, n], ids(6)), atol=1e-5)


def test_guided_loss_is_gistembed_with_the_base_model_as_guide(tiny_model):
    """Two columns (no hard negatives): the same value as sentence-transformers' GISTEmbedLoss
    with the model itself as its guide, and different from plain MNRL (something was masked)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss

    model = SentenceTransformer(tiny_model, device="cpu")
    model.eval()  # no dropout: both losses see the same embeddings
    anchors = ["reverse a list", "sort a dict by value", "read a csv file", "merge two lists", "int to str"]
    positives = ["flip a list", "order a dictionary by its values", "load a csv", "join two lists",
                 "integer as string"]
    texts = anchors + positives
    guide = torch.nn.functional.normalize(model.encode(texts, convert_to_tensor=True), dim=-1)
    with torch.no_grad():
        features = [model.preprocess(anchors), model.preprocess(positives)]
        emb = [model(dict(f))["sentence_embedding"] for f in features]
        expected = GISTEmbedLoss(model, guide=model, temperature=0.05, contrast_anchors=False,
                                 contrast_positives=False)(
            [dict(f) for f in features], None)
        mine = make_loss("mnrl", model, 20.0, guide=guide)(emb, ids(5, columns=2))
        plain = make_loss("mnrl", model, 20.0)(emb, ids(5, columns=2))
    assert torch.allclose(mine, expected, atol=1e-4)
    assert not torch.allclose(mine, plain, atol=1e-4)


def test_guided_loss_masks_in_batch_candidates_but_keeps_a_rows_own_positive_and_negative():
    import torch

    a, p, n = embeddings(4)
    eye, ones = torch.eye(4), torch.ones(4, 4)
    # To the guide, anchor i scores its own positive 0.5 and every other candidate 0.9: all masked
    # but the row's own positive and its own hard negative.
    guide = torch.cat([eye, 0.9 * ones - 0.4 * eye, 0.9 * ones])
    loss = GuidedRankingLoss(guide, 20.0, symmetric=False)([a, p, n], ids(4))
    own = torch.stack([(a * p).sum(-1), (a * n).sum(-1)], dim=1) * 20.0
    expected = torch.nn.functional.cross_entropy(own, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(loss, expected, atol=1e-5)


def test_min_steps_symmetric_and_guide_filter_reach_the_card(run_cli, tmp_path, tiny_model, shared_data):
    data = conala_pair_triplets(shared_data, tmp_path / "t.jsonl")
    out = tmp_path / "a"
    res = run_cli(["train", "--domain", "programming", "--train-data", data, "--base-model", tiny_model,
                   "--output", out, "--batch-size", "16", "--keep-inverted", "--quiet", "--min-steps", "9",
                   "--loss", "symmetric", "--guide-filter"])
    assert res.exit_code == 0, res.stderr
    card = json.loads((out / "cachetune.json").read_text())
    hp = card["hyperparameters"]
    assert hp["epochs"] == 1 and hp["min_steps"] == 9 and hp["total_steps"] == card["results"]["steps"] >= 9
    assert hp["epochs_run"] >= 3  # 30 rows in batches of 16: at most 3 steps an epoch
    assert hp["loss"] == "symmetric" and hp["guide_filter"] is True
    assert hp["loss_function"] == "MultipleNegativesRankingLoss (symmetric), guide filter: base model"
    assert card["data"]["sources"] == {"triplets": 30}


def cosent_on_expanded_pairs(anchors, candidates, labels, keep=None):
    """sentence-transformers' CoSENTLoss on every (anchor, candidate) cell as its own pair."""
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    rows, cols = labels.shape
    left = anchors.repeat_interleave(cols, 0)
    right = candidates.repeat(rows, 1)
    flat = labels.reshape(-1).float()
    if keep is not None:
        keep = keep.reshape(-1)
        left, right, flat = left[keep], right[keep], flat[keep]
    return CoSENTLoss(None, scale=20.0).compute_loss_from_embeddings([left, right], flat)


@pytest.mark.parametrize("name", ["mnrl", "symmetric"])
def test_pair_term_is_the_library_cosent_on_the_batch_pairs(name):
    import torch

    from cachetune.core.train.losses import WithPairLoss

    a, p, n = embeddings(5)
    labels = torch.zeros(5, 10)
    labels[range(5), range(5)] = 1  # each row's own positive; other positives and every negative: 0
    expected = cosent_on_expanded_pairs(a, torch.cat([p, n]), labels)
    combined = make_loss(name, None, 20.0, pair_weight=0.5)
    assert isinstance(combined, WithPairLoss)
    ranking = make_loss(name, None, 20.0)([a, p, n], ids(5))
    assert torch.allclose(combined.pair_term([a, p, n], ids(5)), expected, atol=1e-4)
    assert torch.allclose(combined([a, p, n], ids(5)), ranking + 0.5 * expected, atol=1e-4)
    assert not isinstance(make_loss(name, None, 20.0, pair_weight=0.0), WithPairLoss)


def test_guided_pair_term_leaves_out_the_cells_the_guide_masks():
    import torch

    a, p, n = embeddings(4)
    eye, ones = torch.eye(4), torch.ones(4, 4)
    # As above: the guide masks every in-batch candidate but a row's own positive and negative,
    # so the pair term ranks own positives above own negatives only.
    guide = torch.cat([eye, 0.9 * ones - 0.4 * eye, 0.9 * ones])
    term = make_loss("mnrl", None, 20.0, guide=guide, pair_weight=1.0).pair_term([a, p, n], ids(4))
    labels = torch.cat([eye, torch.zeros(4, 4)], dim=1)
    keep = torch.cat([eye, eye], dim=1).bool()
    assert torch.allclose(term, cosent_on_expanded_pairs(a, torch.cat([p, n]), labels, keep), atol=1e-4)
    unguided = make_loss("mnrl", None, 20.0, pair_weight=1.0).pair_term([a, p, n], ids(4))
    assert not torch.allclose(term, unguided, atol=1e-4)


def test_pair_loss_weight_reaches_the_card(run_cli, tmp_path, tiny_model, shared_data):
    data = conala_pair_triplets(shared_data, tmp_path / "t.jsonl")
    common = ["train", "--domain", "programming", "--train-data", data, "--base-model", tiny_model,
              "--batch-size", "8", "--keep-inverted", "--quiet"]
    bad = run_cli(common + ["--output", tmp_path / "bad", "--pair-loss-weight", "-1"])
    assert bad.exit_code != 0 and "--pair-loss-weight must not be negative" in bad.stderr
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "a"
    res = run_cli(common + ["--output", out, "--pair-loss-weight", "0.5", "--max-steps", "4"])
    assert res.exit_code == 0, res.stderr
    card = json.loads((out / "cachetune.json").read_text())
    assert card["hyperparameters"]["pair_loss_weight"] == 0.5
    assert card["hyperparameters"]["loss_function"] == "MultipleNegativesRankingLoss + 0.5 x CoSENT (batch pairs)"
