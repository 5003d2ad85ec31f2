"""bench/quality.py reuses a finished adapter only under the settings and data it was trained with."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

from cachetune.core.train.config import TrainConfig
from test_train import conala_triplets, write_jsonl

BENCH = Path(__file__).resolve().parent.parent / "bench" / "quality.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_finished_adapter_is_reused_only_under_its_own_settings(tmp_path, shared_data, tiny_model):
    from cachetune.core.train.loop import train

    bench = _bench()
    (tmp_path / "run").mkdir()
    data = write_jsonl(tmp_path / "run" / "data-programming-human.jsonl", conala_triplets(shared_data, 16))
    config = TrainConfig("programming", data, tmp_path / "run" / "adapter", base_model=tiny_model, batch_size=8,
                         seed=1, max_steps=2, min_steps=2, checkpoint_every=0, drop_inverted=False, overwrite=True)
    card = train(config, log=lambda m: None, show_progress=False)  # a real card
    assert bench.settings_differ(card, config) == []
    # A copied output folder: the same file under another path is still the same data.
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    moved = dataclasses.replace(config, train_data=tmp_path / "copy" / data.name)
    assert bench.settings_differ(card, moved) == []
    assert bench.settings_differ(card, dataclasses.replace(config, seed=2, pair_loss_weight=0.2)) == [
        "seed 1, now 2", "pair_loss_weight 0.0, now 0.2"]
    assert bench.settings_differ(card, dataclasses.replace(config, lora_r=16, target_modules=("query", "key"))) == [
        "lora_r 8, now 16", "target_modules ['query', 'value'], now ['query', 'key']"]
    other = tmp_path / "run" / "data-programming-human-sameside.jsonl"
    shutil.copy(data, other)
    assert bench.settings_differ(card, dataclasses.replace(config, train_data=other)) == [
        "data data-programming-human.jsonl, now data-programming-human-sameside.jsonl"]
    with open(data, "a", encoding="utf-8") as fh:
        fh.write('{"anchor": "a b", "positive": "c d", "negative": "e f", "domain": "programming"}\n')
    assert bench.settings_differ(card, config) == [f"{data} is not the file it was trained on"]
