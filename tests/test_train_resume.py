"""Checkpoints: a run killed (SIGKILL) after a checkpoint resumes and ends exactly where an
uninterrupted run ends; a resume that would train something else is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from cachetune.core.adapters import CARD_FILE, PEFT_WEIGHTS
from test_train import conala_triplets, write_jsonl

CLI = "import sys; from cachetune.core.cli import main; sys.exit(main(sys.argv[1:]))"
# Save the first checkpoint, then die as abruptly as `kill -9` would make it.
KILL_AFTER_CHECKPOINT = """
import os, signal, sys
from cachetune.core.train import checkpoints as train_checkpoints
save = train_checkpoints.save_checkpoint
def save_then_die(*args, **kwargs):
    folder = save(*args, **kwargs)
    print(f"saved {folder}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
train_checkpoints.save_checkpoint = save_then_die
from cachetune.core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(code, args):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_kill_then_resume_matches_uninterrupted_run(tmp_path, shared_data, tiny_model, run_cli, embedded_model):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "t.jsonl", conala_triplets(shared_data, 40))

    def args(out, *extra, base=tiny_model):
        # one thread: the same float summation order in every process, so results match bit for bit
        return ["train", "--domain", "programming", "--train-data", data, "--base-model", base, "--output", out,
                "--batch-size", "8", "--epochs", "2", "--lr", "3e-3", "--checkpoint-every", "3", "--threads", "1",
                "--quiet", *extra]

    ref = run(CLI, args(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    assert not (tmp_path / "ref" / "checkpoints").exists()  # removed once the adapter is saved

    out = tmp_path / "run"
    killed = run(KILL_AFTER_CHECKPOINT, args(out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoint = out / "checkpoints" / "checkpoint-3"
    assert f"saved {checkpoint}" in killed.stdout
    assert {p.name for p in checkpoint.iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                                      "trainer_state.safetensors", "train_state.json"}
    assert not (out / PEFT_WEIGHTS).exists() and not (out / CARD_FILE).exists()

    # Refused: starting over on top of the checkpoints, another base model, another learning rate.
    res = run_cli(args(out))
    assert res.exit_code == 1 and "holds checkpoints of an unfinished run" in res.stderr
    res = run_cli(args(out, "--resume-from-checkpoint", out, base=embedded_model))
    assert res.exit_code == 1
    assert f"Error: {checkpoint}: checkpoint was trained on base model '{tiny_model}', not " \
           "'sentence-transformers/all-MiniLM-L6-v2' (--base-model)" in res.stderr
    res = run_cli(args(out, "--resume-from-checkpoint", checkpoint, "--lr", "1e-3"))
    assert res.exit_code == 1 and "checkpoint was trained with --lr 0.003, not 0.001" in res.stderr
    res = run_cli(args(out, "--resume-from-checkpoint", checkpoint, "--keep-inverted"))
    assert res.exit_code == 1
    assert "checkpoint was trained with drop_inverted=True, not False (--keep-inverted)" in res.stderr
    res = run_cli(args(out, "--resume-from-checkpoint", checkpoint, "--pair-loss-weight", "1"))
    assert res.exit_code == 1 and "checkpoint was trained with --pair-loss-weight 0.0, not 1.0" in res.stderr

    resumed = run(CLI, args(out, "--resume-from-checkpoint", out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {checkpoint} at step 3" in resumed.stdout
    want, got = load_file(str(tmp_path / "ref" / PEFT_WEIGHTS)), load_file(str(out / PEFT_WEIGHTS))
    assert want.keys() == got.keys()
    for key in want:
        assert want[key].equal(got[key]), key
    ref_card = json.loads((tmp_path / "ref" / CARD_FILE).read_text())
    card = json.loads((out / CARD_FILE).read_text())
    assert card["results"]["steps"] == ref_card["results"]["steps"] > 3
    assert card["results"]["final_loss"] == ref_card["results"]["final_loss"]
    # the random tiny model ranks some triplets backwards: both runs dropped the same ones
    assert card["data"] == ref_card["data"] and 0 < card["data"]["triplets"] < 40
    assert card["results"]["triplets_seen"] == ref_card["results"]["triplets_seen"] == 2 * card["data"]["triplets"]
    assert not (out / "checkpoints").exists()
