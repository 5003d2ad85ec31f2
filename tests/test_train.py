"""``cachetune train``: the adapter folder and card, the loss, reloading with plain peft, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cachetune.core.adapters import CARD_FILE, PEFT_CONFIG, PEFT_WEIGHTS
from cachetune.core.models import sha256_file, weights_sha256


def conala_triplets(shared_data, n=48, with_negative=True):
    """Real CoNaLa wordings; the negative is another question's intent (no model needed)."""
    from cachetune.domains.programming.training_pairs import read_conala_pairs

    pairs = read_conala_pairs(shared_data / "conala" / "conala-train.json")[:n + 10]
    rows = []
    for i, p in enumerate(pairs[:n]):
        row = {"anchor": p.paraphrase, "positive": p.query, "domain": "programming"}
        if with_negative:
            row["negative"] = next(q.query for q in pairs[i + 1:] if q.group != p.group)
        rows.append(row)
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def triplet_file(tmp_path, shared_data):
    return write_jsonl(tmp_path / "triplets.jsonl", conala_triplets(shared_data))


def tiny_args(triplets, out, model, *extra):
    return ["train", "--domain", "programming", "--train-data", triplets, "--base-model", model, "--output", out,
            "--batch-size", "8", "--quiet", "--keep-inverted", *extra]  # a random tiny model ranks at random


def test_trains_adapter_folder_with_card(run_cli, triplet_file, tmp_path, tiny_model):
    out = tmp_path / "adapter"
    res = run_cli(tiny_args(triplet_file, out, tiny_model, "--epochs", "2", "--lr", "1e-3", "--eval-data",
                            triplet_file))
    assert res.exit_code == 0, res.stderr
    assert "held-out (48 triplets): base margin " in res.stdout
    # tiny BERT: 2 layers x (query, value) x r=8 x (32 in + 32 out)
    assert "trainable parameters: 2,048 of" in res.stdout
    assert f"adapter: {out} ({PEFT_WEIGHTS} " in res.stdout and "KiB, 2,048 trainable parameters" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([PEFT_CONFIG, PEFT_WEIGHTS, CARD_FILE])
    card = json.loads((out / CARD_FILE).read_text())
    assert set(card) == {"cachetune_version", "domain", "domain_plugin", "base_model", "lora", "trainable_parameters",
                         "data", "hyperparameters", "results", "versions", "created"}
    assert card["domain"] == "programming"
    assert card["domain_plugin"]["name"] == "programming" and card["domain_plugin"]["package"] == "cachetune"
    assert card["base_model"] == {"id": tiny_model, "weights_sha256": weights_sha256(tiny_model)}
    assert card["lora"] == {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]}
    assert card["trainable_parameters"] == 2048
    assert card["data"] == {"path": str(triplet_file), "sha256": sha256_file(triplet_file), "triplets": 48,
                            "skipped": 0, "skipped_by_reason": {"duplicate": 0, "other_domain": 0},
                            "sources": {"triplets": 48}}
    hp = card["hyperparameters"]
    assert (hp["lr"], hp["batch_size"], hp["epochs"], hp["temperature"], hp["scale"]) == (1e-3, 8, 2, 0.05, 20.0)
    assert hp["hard_negatives"] is True and hp["drop_inverted"] is False and hp["max_grad_norm"] == 0.5
    # 48 rows, batch 8: at least 6 batches per epoch (more when paraphrases of one question must be kept apart)
    assert hp["total_steps"] == card["results"]["steps"] >= 12
    assert card["results"]["triplets_per_s"] > 0 and card["results"]["triplets_seen"] == 2 * 48
    assert card["results"]["final_loss"] > 0 and card["results"]["wall_time_s"] > 0
    evaluation = card["results"]["eval"]
    assert set(evaluation["base"]) == set(evaluation["adapter"]) >= {"margin", "accuracy", "recall_at_1"}
    assert evaluation["base"]["margin"] != evaluation["adapter"]["margin"]
    assert {"torch", "transformers", "sentence-transformers", "peft"} <= set(card["versions"])
    peft_cfg = json.loads((out / PEFT_CONFIG).read_text())
    assert peft_cfg["r"] == 8 and sorted(peft_cfg["target_modules"]) == ["query", "value"]
    assert peft_cfg["base_model_name_or_path"] == tiny_model


def test_loss_is_mnrl_over_positives_and_hard_negatives():
    """The loss the loop uses: cross-entropy over scale * cos(anchor, [positives; negatives])."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(0)
    a, p, n = (torch.nn.functional.normalize(torch.randn(5, 16), dim=-1) for _ in range(3))
    loss = MultipleNegativesRankingLoss(None, scale=1 / 0.05)
    expected = torch.nn.functional.cross_entropy(20.0 * a @ torch.cat([p, n]).T, torch.arange(5))
    assert torch.allclose(loss.compute_loss_from_embeddings([a, p, n], None), expected, atol=1e-5)
    in_batch_only = torch.nn.functional.cross_entropy(20.0 * a @ p.T, torch.arange(5))
    assert torch.allclose(loss.compute_loss_from_embeddings([a, p], None), in_batch_only, atol=1e-5)
    assert not torch.allclose(expected, in_batch_only)


def _embed_with_plain_peft(base, adapter_dir, texts):
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base, device="cpu")
    PeftModel.from_pretrained(model[0].auto_model, str(adapter_dir))  # the seed's snippet, as it is
    return model.encode(texts, convert_to_tensor=True)


def _check_reload(config, texts, base):
    from sentence_transformers import SentenceTransformer

    from cachetune.core.train.loop import run_training

    card, trained = run_training(config, show_progress=False, log=lambda _m: None)
    mine = trained.encode(texts, convert_to_tensor=True)
    reloaded = _embed_with_plain_peft(base, config.output, texts)
    plain = SentenceTransformer(base, device="cpu").encode(texts, convert_to_tensor=True)
    assert (mine - reloaded).abs().max().item() < 1e-5
    assert (mine - plain).abs().max().item() > 1e-3  # the adapter changed the embeddings
    return card


def test_plain_peft_reload_matches_in_process_model(tmp_path, triplet_file, tiny_model, shared_data):
    from cachetune.core.train.config import TrainConfig

    texts = [r["anchor"] for r in conala_triplets(shared_data, 12)]
    config = TrainConfig("programming", triplet_file, tmp_path / "a", base_model=tiny_model, batch_size=8, lr=5e-3)
    _check_reload(config, texts, tiny_model)


@pytest.mark.slow
def test_real_model_adapter_reloads_with_plain_peft(tmp_path, shared_data, embedded_model, capsys):
    """The real all-MiniLM-L6-v2: 73,728 trainable parameters, ~290 KiB adapter, same embeddings on reload."""
    from cachetune.core.train.config import TrainConfig

    rows = conala_triplets(shared_data, 48)
    data = write_jsonl(tmp_path / "t.jsonl", rows)
    config = TrainConfig("programming", data, tmp_path / "a", batch_size=16, lr=5e-4, max_steps=3)
    card = _check_reload(config, [r["positive"] for r in rows[:16]], embedded_model)
    assert card["trainable_parameters"] == 73728
    assert card["base_model"]["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert 280_000 < (tmp_path / "a" / PEFT_WEIGHTS).stat().st_size < 320_000


def test_triplets_the_base_model_ranks_backwards_are_dropped(run_cli, tmp_path, shared_data, embedded_model):
    from sentence_transformers import SentenceTransformer

    rows = conala_triplets(shared_data, 16)
    # Mislabelled on purpose: the "negative" is the anchor in capitals, the same text to an uncased model.
    for row in rows[:4]:
        row["negative"] = row["anchor"].upper()
    data = write_jsonl(tmp_path / "t.jsonl", rows)
    model = SentenceTransformer(embedded_model, device="cpu")
    enc = [model.encode([r[k] for r in rows], normalize_embeddings=True) for k in ("anchor", "positive", "negative")]
    inverted = [bool((a @ p) <= (a @ n)) for a, p, n in zip(*enc)]
    assert inverted[:4] == [True] * 4

    args = ["train", "--domain", "programming", "--train-data", data, "--base-model", embedded_model,
            "--batch-size", "8", "--max-steps", "1", "--quiet"]
    res = run_cli([*args, "--output", tmp_path / "dropped"])
    assert res.exit_code == 0, res.stderr
    n = sum(inverted)
    assert f"dropped {n:,} triplets the base model ranks backwards" in res.stdout
    card = json.loads((tmp_path / "dropped" / CARD_FILE).read_text())
    assert card["data"]["triplets"] == 16 - n and card["data"]["skipped_by_reason"]["inverted"] == n
    assert card["hyperparameters"]["drop_inverted"] is True

    res = run_cli([*args, "--output", tmp_path / "kept", "--keep-inverted"])
    assert res.exit_code == 0 and "ranks backwards" not in res.stdout
    card = json.loads((tmp_path / "kept" / CARD_FILE).read_text())
    assert card["data"]["triplets"] == 16 and "inverted" not in card["data"]["skipped_by_reason"]

    everything = write_jsonl(tmp_path / "all.jsonl", rows[:4])
    res = run_cli(["train", "--domain", "programming", "--train-data", everything, "--base-model", embedded_model,
                   "--output", tmp_path / "none", "--quiet"])
    assert res.exit_code == 1
    assert f"Error: {everything}: every triplet is ranked backwards by the base model" in res.stderr
    assert not (tmp_path / "none" / PEFT_WEIGHTS).exists()


def test_hard_negatives_change_training_and_can_be_left_out(run_cli, tmp_path, shared_data, tiny_model):
    from safetensors.torch import load_file

    with_neg = write_jsonl(tmp_path / "with.jsonl", conala_triplets(shared_data, 24))
    without = write_jsonl(tmp_path / "without.jsonl", conala_triplets(shared_data, 24, with_negative=False))
    steps = ("--max-steps", "2")
    assert run_cli(tiny_args(with_neg, tmp_path / "hn", tiny_model, *steps)).exit_code == 0
    res = run_cli(tiny_args(with_neg, tmp_path / "nohn", tiny_model, "--no-hard-negatives", *steps))
    assert res.exit_code == 0, res.stderr
    assert run_cli(tiny_args(without, tmp_path / "nohn2", tiny_model, "--no-hard-negatives", *steps)).exit_code == 0
    hn, nohn, nohn2 = (load_file(str(tmp_path / d / PEFT_WEIGHTS)) for d in ("hn", "nohn", "nohn2"))
    key = next(k for k in hn if "lora_B" in k)
    assert not hn[key].equal(nohn[key])  # the negative column is in the loss
    assert nohn[key].equal(nohn2[key])  # and --no-hard-negatives ignores it completely
    assert json.loads((tmp_path / "nohn" / CARD_FILE).read_text())["hyperparameters"]["hard_negatives"] is False


def test_bad_input_is_one_line(run_cli, tmp_path, triplet_file, tiny_model, shared_data):
    rows = conala_triplets(shared_data, 4)
    del rows[2]["negative"]
    missing = write_jsonl(tmp_path / "missing.jsonl", rows)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    out = tmp_path / "out"
    cases = [
        (tiny_args(missing, out, tiny_model), f"Error: {missing}:3: triplet has no 'negative' field"),
        (tiny_args(empty, out, tiny_model), f"Error: {empty}: no triplets (the file is empty)"),
        (tiny_args(tmp_path / "nope.jsonl", out, tiny_model), f"Error: {tmp_path / 'nope.jsonl'}: file not found"),
        (tiny_args(triplet_file, out, str(tmp_path / "no-model")),
         f"Error: {tmp_path / 'no-model'}: base model path does not exist"),
        (tiny_args(triplet_file, out, tiny_model, "--target-modules", "query,nonexistent_proj"),
         "Error: --target-modules query,nonexistent_proj:"),
        (tiny_args(triplet_file, out, tiny_model, "--lora-dropout", "1.5"), "Error: --lora-dropout must be in [0, 1)"),
        (tiny_args(triplet_file, out, tiny_model, "--max-seq-length", "4096"),
         "Error: --max-seq-length 4096 exceeds the base model's limit (128)"),
        (tiny_args(triplet_file, out, tiny_model, "--precision", "fp16"),
         "Error: --precision fp16 needs a CUDA device"),
        (tiny_args(triplet_file, out, tiny_model, "--resume-from-checkpoint", tmp_path),
         f"Error: {tmp_path}: no checkpoint in this folder (--resume-from-checkpoint)"),
    ]
    for args, expected in cases:
        res = run_cli(args)
        assert res.exit_code == 1, (args, res.stdout)
        lines = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and lines[0].startswith(expected), (expected, res.stderr)
        assert "Traceback" not in res.stderr
        assert not (out / PEFT_WEIGHTS).exists()


def test_finished_adapter_is_not_overwritten_silently(run_cli, tmp_path, triplet_file, tiny_model):
    out = tmp_path / "a"
    assert run_cli(tiny_args(triplet_file, out, tiny_model, "--max-steps", "1")).exit_code == 0
    before = (out / PEFT_WEIGHTS).read_bytes()
    res = run_cli(tiny_args(triplet_file, out, tiny_model, "--max-steps", "1", "--lr", "1e-2"))
    assert res.exit_code == 1 and "already holds a trained adapter (pass --overwrite" in res.stderr
    assert (out / PEFT_WEIGHTS).read_bytes() == before
    res = run_cli(tiny_args(triplet_file, out, tiny_model, "--max-steps", "1", "--lr", "1e-2", "--overwrite"))
    assert res.exit_code == 0 and (out / PEFT_WEIGHTS).read_bytes() != before


def test_bf16_autocast_path_runs(run_cli, tmp_path, triplet_file, tiny_model):
    """The autocast branch (`--precision bf16` or fp16) exercised on CPU with bf16."""
    out = tmp_path / "bf16"
    res = run_cli(tiny_args(triplet_file, out, tiny_model, "--precision", "bf16", "--max-steps", "2"))
    assert res.exit_code == 0, res.stderr
    assert "cpu, bf16" in res.stdout
    card = json.loads((out / CARD_FILE).read_text())
    assert card["hyperparameters"]["precision"] == "bf16" and card["results"]["final_loss"] > 0


def test_register_flag_reaches_the_registry(run_cli, tmp_path, triplet_file, tiny_model, monkeypatch):
    import cachetune.registry as registry

    calls = []
    monkeypatch.setattr(registry, "register_trained_adapter",
                        lambda adapter_dir, registry_dir=None: calls.append(adapter_dir) or {"ref": "programming@7"},
                        raising=False)
    out = tmp_path / "a"
    res = run_cli(tiny_args(triplet_file, out, tiny_model, "--max-steps", "1", "--register"))
    assert res.exit_code == 0, res.stderr
    assert calls == [out] and "registered: programming@7" in res.stdout
    assert run_cli(tiny_args(triplet_file, tmp_path / "b", tiny_model, "--max-steps", "1")).exit_code == 0
    assert calls == [out]  # --no-register is the default


def test_threads_default_to_physical_cores():
    import os

    from cachetune.core.train.runtime import physical_cores

    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def test_register_adds_to_the_real_registry(run_cli, tmp_path, triplet_file, tiny_model, monkeypatch):
    from cachetune.registry import HOME_ENV, AdapterRegistry

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "registry"))
    res = run_cli(tiny_args(triplet_file, tmp_path / "a", tiny_model, "--max-steps", "1", "--register"))
    assert res.exit_code == 0, res.stderr
    records = AdapterRegistry(tmp_path / "registry").list("programming")
    assert len(records) == 1 and f"registered: {records[0]['ref']}" in res.stdout
    # --registry wins over $CACHETUNE_HOME
    res = run_cli(tiny_args(triplet_file, tmp_path / "b", tiny_model, "--max-steps", "1", "--register",
                            "--registry", tmp_path / "other"))
    assert res.exit_code == 0, res.stderr
    assert len(AdapterRegistry(tmp_path / "other").list("programming")) == 1
    assert len(AdapterRegistry(tmp_path / "registry").list("programming")) == 1


def test_help_does_not_import_torch_and_defaults_agree():
    code = ("import sys; from cachetune.core.cli import main; "
            "rc = main(['train', '--help']); assert rc == 0; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for option in ("--no-hard-negatives", "--register / --no-register", "--resume-from-checkpoint",
                   "--checkpoint-every", "--temperature", "--target-modules", "--eval-data"):
        assert option in out.stdout
    from cachetune.core.cli import train as command
    from cachetune.core.train.config import DEFAULT_LR, TrainConfig

    assert command.DEFAULT_LR == DEFAULT_LR == TrainConfig("d", "t", "o").lr


def test_diverging_loss_stops_with_one_line_and_no_adapter(run_cli, triplet_file, tmp_path, tiny_model):
    out = tmp_path / "adapter"
    res = run_cli(tiny_args(triplet_file, out, tiny_model, "--lr", "1e30", "--warmup-ratio", "0"))
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error")]
    assert res.exit_code == 1 and len(errors) == 1, res.stderr
    assert errors[0].startswith(f"Error: {out}: training diverged at step ") and "the loss is nan" in errors[0]
    assert "Traceback" not in res.stderr
    assert not (out / PEFT_WEIGHTS).exists() and not (out / CARD_FILE).exists()


def test_too_few_triplets_warn_and_say_how_many_steps_ran(run_cli, shared_data, tmp_path, tiny_model):
    one = write_jsonl(tmp_path / "one.jsonl", conala_triplets(shared_data, 1))
    res = run_cli(tiny_args(one, tmp_path / "a", tiny_model))
    assert res.exit_code == 0, res.stderr
    assert "Warning: only 1 triplet(s) to train on (1 step(s)): too few" in res.stderr
    assert "; 1 steps, final loss " in res.stdout
    assert json.loads((tmp_path / "a" / CARD_FILE).read_text())["results"]["steps"] == 1
