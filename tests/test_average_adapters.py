"""`cachetune adapters average`: the averaged adapter's merged weights are the base plus the mean
of each adapter's own update (each read by merging it alone, not through peft's combination);
with --rank R, each layer's mean update cut to its best rank-R approximation (numpy's SVD)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_train import conala_triplets, tiny_args, write_jsonl


def merged_weights(adapter_dir):
    from cachetune.core.adapters import load_adapter_model

    model = load_adapter_model(adapter_dir, merged=True)
    return {name: p.detach().numpy().copy() for name, p in model[0].auto_model.named_parameters()}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory, tiny_model, shared_data):
    """Three tiny adapters of one recipe at seeds 0, 1, 2, and one of another domain."""
    from click.testing import CliRunner

    from cachetune.core.cli import make_cli

    folder = tmp_path_factory.mktemp("average")
    rows = conala_triplets(shared_data, 24)
    data = {"programming": write_jsonl(folder / "p.jsonl", rows),
            "medical": write_jsonl(folder / "m.jsonl", [{**r, "domain": "medical"} for r in rows])}
    made = []
    for seed, domain in ((0, "programming"), (1, "programming"), (2, "programming"), (0, "medical")):
        out = folder / f"{domain}-{seed}"
        args = tiny_args(data[domain], out, tiny_model, "--max-steps", "3", "--lr", "5e-2", "--seed", str(seed))
        args[args.index("--domain") + 1] = domain
        result = CliRunner().invoke(make_cli(), [str(a) for a in args])
        assert result.exit_code == 0, result.output
        made.append(out)
    return made


def test_average_is_the_mean_update_and_rank_r_its_best_approximation(run_cli, tmp_path, tiny_model, seeds):
    from cachetune.core.models import load_sentence_transformer

    folders = seeds[:3]
    done = run_cli(["adapters", "average", *folders, "--output", tmp_path / "mean"])
    assert done.exit_code == 0, done.stderr
    assert "averaged 3 adapters" in done.stdout and "LoRA r=24" in done.stdout
    card = json.loads((tmp_path / "mean" / "cachetune.json").read_text())
    assert card["lora"]["r"] == 24 and [a["seed"] for a in card["averaged"]["adapters"]] == [0, 1, 2]
    assert "results" not in card  # one seed's training figures would describe another model

    base = {n: p.detach().numpy() for n, p in
            load_sentence_transformer(tiny_model, device="cpu")[0].auto_model.named_parameters()}
    each = [merged_weights(f) for f in folders]
    mean = merged_weights(tmp_path / "mean")
    lora_layers = [n for n in base if n.endswith(("query.weight", "value.weight"))]
    assert len(lora_layers) == 4
    for name, weight in base.items():
        expected = weight + sum(w[name] - weight for w in each) / 3
        np.testing.assert_allclose(mean[name], expected, atol=1e-6, err_msg=name)
    assert all(not np.allclose(each[0][n], each[1][n]) for n in lora_layers)  # the seeds really differ

    cut = run_cli(["adapters", "average", *folders, "--output", tmp_path / "rank2", "--rank", "2"])
    assert cut.exit_code == 0, cut.stderr
    rank2 = merged_weights(tmp_path / "rank2")
    for name in lora_layers:
        u, s, vt = np.linalg.svd(mean[name] - base[name])
        best = (u[:, :2] * s[:2]) @ vt[:2]
        np.testing.assert_allclose(rank2[name] - base[name], best, atol=1e-5, err_msg=name)
    config = json.loads((tmp_path / "rank2" / "adapter_config.json").read_text())
    assert config["r"] == 2
    # The result is an adapter like any other: the registry takes it.
    added = run_cli(["adapters", "add", tmp_path / "rank2", "--name", "mean", "--registry", tmp_path / "reg"])
    assert added.exit_code == 0, added.stderr
    again = run_cli(["adapters", "average", "mean@1", folders[0], "--output", tmp_path / "from-registry",
                     "--registry", tmp_path / "reg"])
    assert again.exit_code == 0 and "LoRA r=10" in again.stdout, again.stderr


def test_average_refusals_write_nothing(run_cli, tmp_path, seeds):
    import shutil

    folders = seeds[:3]
    other_base = tmp_path / "other-base"
    shutil.copytree(folders[1], other_base)
    card = json.loads((other_base / "cachetune.json").read_text())
    card["base_model"] = {**card["base_model"], "id": "someone/else", "weights_sha256": None}
    (other_base / "cachetune.json").write_text(json.dumps(card))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    cases = [
        ([*folders, "--output", busy], "exists and is not empty (--output)"),
        ([folders[0], seeds[3], "--output", tmp_path / "o1"], "an adapter for domain 'medical', not 'programming'"),
        ([*folders, "--output", tmp_path / "o2", "--rank", "0"], "--rank must be between 1 and 24"),
        ([*folders, "--output", tmp_path / "o3", "--rank", "25"], "--rank must be between 1 and 24"),
        ([folders[0], tmp_path / "nope", "--output", tmp_path / "o4"], "adapter folder not found"),
        ([folders[0], other_base, "--output", tmp_path / "o5"],
         f"{other_base}: trained on base model 'someone/else', not"),
    ]
    for args, needle in cases:
        result = run_cli(["adapters", "average", *args])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and needle in lines[0], (needle, result.stderr)
    assert (busy / "keep.txt").read_text() == "mine" and sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    one = run_cli(["adapters", "average", folders[0], "--output", tmp_path / "o6"])
    assert one.exit_code == 2 and "at least two adapters" in one.stderr
