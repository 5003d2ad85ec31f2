"""tools/average_adapters.py: the averaged adapter's merged weights are the base plus the mean of
each adapter's own update (each read by merging it alone, not through peft's stacking)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from test_train import conala_triplets, tiny_args, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def average(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(ROOT / "tools" / "average_adapters.py"), *map(str, args)],
                          capture_output=True, text=True, env=env)


def merged_weights(adapter_dir):
    from cachetune.core.adapters import load_adapter_model

    model = load_adapter_model(adapter_dir, merged=True)
    return {name: p.detach().clone() for name, p in model[0].auto_model.named_parameters()}


def test_average_is_the_mean_update_and_refuses_mixed_bases(run_cli, tmp_path, tiny_model, shared_data):
    data = write_jsonl(tmp_path / "t.jsonl", conala_triplets(shared_data, 24))
    folders = []
    for seed in (0, 1, 2):
        out = tmp_path / f"seed{seed}"
        res = run_cli(tiny_args(data, out, tiny_model, "--max-steps", "3", "--lr", "5e-2", "--seed", str(seed)))
        assert res.exit_code == 0, res.stderr
        folders.append(out)
    done = average("--output", tmp_path / "mean", *folders)
    assert done.returncode == 0, done.stderr
    assert "mean of 3 adapters, rank 24" in done.stdout
    card = json.loads((tmp_path / "mean" / "cachetune.json").read_text())
    assert [Path(a["folder"]) for a in card["averaged_from"]] == folders and card["lora"]["r"] == 24

    import torch

    from cachetune.core.models import load_sentence_transformer

    base = {n: p.detach() for n, p in load_sentence_transformer(tiny_model, device="cpu")[0].auto_model.named_parameters()}
    each = [merged_weights(f) for f in folders]
    mean = merged_weights(tmp_path / "mean")
    changed = 0
    for name, weight in base.items():
        expected = weight + sum(w[name] - weight for w in each) / 3
        assert torch.allclose(mean[name], expected, atol=1e-6), name
        changed += not torch.allclose(each[0][name], each[1][name])
    assert changed >= 4  # query and value of both layers: the seeds really differ

    # Refused: an existing output, one adapter, adapters of different base models.
    again = average("--output", tmp_path / "mean", *folders)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert average("--output", tmp_path / "one", folders[0]).returncode == 2
    other = tmp_path / "other-base"
    shutil.copytree(folders[1], other)
    card = json.loads((other / "cachetune.json").read_text())
    card["base_model"] = {**card["base_model"], "id": "someone/else"}
    (other / "cachetune.json").write_text(json.dumps(card))
    mixed = average("--output", tmp_path / "mixed", folders[0], other)
    assert mixed.returncode == 1 and "different base models" in mixed.stderr
    assert not (tmp_path / "mixed").exists()
