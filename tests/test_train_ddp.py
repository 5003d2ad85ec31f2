"""``cachetune train`` unchanged under ``torchrun`` (two CPU processes, gloo backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachetune.core.adapters import CARD_FILE, PEFT_CONFIG, PEFT_WEIGHTS
from test_train import conala_triplets, write_jsonl


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, shared_data, tiny_model):
    from transformers import AutoTokenizer

    from cachetune.core.train.data import TokenizedTexts, TripletBatchSampler, load_triplets

    bindir = Path(sys.executable).parent
    data = write_jsonl(tmp_path / "t.jsonl", conala_triplets(shared_data, 40))
    out = tmp_path / "ddp"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(bindir / "torchrun"), "--standalone", "--nproc_per_node=2", str(bindir / "cachetune"), "train",
         "--domain", "programming", "--train-data", str(data), "--base-model", tiny_model, "--output", str(out),
         "--batch-size", "4", "--lr", "1e-3", "--checkpoint-every", "2", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trainable parameters: 2,048") == 1  # rank 0 speaks, rank 1 does not
    assert "2 processes" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([PEFT_CONFIG, PEFT_WEIGHTS, CARD_FILE])
    card = json.loads((out / CARD_FILE).read_text())
    assert card["hyperparameters"]["world_size"] == 2

    # each rank took every other batch; the remainder batch is dropped so both step together
    triplets = load_triplets(data, "programming")
    # rank 0 dropped the triplets the base model ranks backwards and the other rank followed
    from types import SimpleNamespace

    import torch
    from sentence_transformers import SentenceTransformer

    from cachetune.core.train.scoring import drop_inverted_triplets

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' summation order
    try:
        dropped = drop_inverted_triplets(SentenceTransformer(tiny_model, device="cpu"), triplets,
                                         SimpleNamespace(device=torch.device("cpu"), distributed=False))
    finally:
        torch.set_num_threads(threads)
    assert card["data"]["skipped_by_reason"]["inverted"] == dropped
    assert card["data"]["triplets"] == len(triplets.anchors) == 40 - dropped
    texts = TokenizedTexts(AutoTokenizer.from_pretrained(tiny_model),
                           triplets.anchors + triplets.positives + triplets.negatives, 128)
    lengths = [texts.length(a) + texts.length(p) + texts.length(n)
               for a, p, n in zip(triplets.anchors, triplets.positives, triplets.negatives)]
    sampler = TripletBatchSampler(triplets.anchors, triplets.positives, triplets.negatives, lengths, 4)
    assert card["results"]["steps"] == len(sampler.all_batches(0)) // 2
