"""Checkpoints hold no pickles: a crafted checkpoint never runs code, through `train
--resume-from-checkpoint` or `cachetune run`'s automatic resume; the safe format round-trips
the optimizer, scheduler and RNG states exactly; a malformed one is one line naming its file."""

from __future__ import annotations

import json
import random

import pytest

from cachetune.core.errors import CachetuneError
from cachetune.core.train import checkpoints as ckpt
from cachetune.core.train.safe_state import load_state, save_state
from test_train import conala_triplets, tiny_args, write_jsonl


class Payload:
    """Unpickling this object writes ``marker``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def plant_checkpoint(folder, marker, tensors_file):
    """A checkpoint folder whose tensors file is a pickle that runs code when loaded."""
    import torch

    folder.mkdir(parents=True)
    settings = {"domain": "programming", "base_model": {"id": "x", "weights_sha256": None}, "data_sha256": "0",
                "world_size": 1, "hyperparameters": {}}
    (folder / ckpt.STATE_FILE).write_text(json.dumps({"settings": settings, "global_step": 1, "epoch": 0,
                                                      "batch": 1, "losses": [1.0], "elapsed_s": 1.0}))
    torch.save({"optimizer": Payload(marker)}, folder / tensors_file)
    return folder


@pytest.mark.parametrize("tensors_file", [ckpt.LEGACY_TENSORS_FILE, ckpt.TENSORS_FILE])
def test_malicious_checkpoint_does_not_execute(run_cli, tmp_path, shared_data, tiny_model, tensors_file):
    marker = tmp_path / "pwned"
    out = tmp_path / "out"
    plant_checkpoint(out / ckpt.CHECKPOINTS_DIR / "checkpoint-1", marker, tensors_file)
    data = write_jsonl(tmp_path / "t.jsonl", conala_triplets(shared_data, 16))
    res = run_cli(tiny_args(data, out, tiny_model, "--resume-from-checkpoint", out))
    assert not marker.exists()
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.stderr
    assert "checkpoint-1" in lines[0]


def test_run_does_not_execute_a_checkpoint_in_its_work_folder(tmp_path, shared_data, tiny_model):
    """`cachetune run` resumes from a checkpoint in work/adapter/checkpoints that a run under the same
    options left (no flag needed), and never executes one."""
    from cachetune.core.pipeline.config import resolve_config
    from cachetune.core.pipeline.run import Pipeline
    from cachetune.core.plugin_manager import get_plugin_manager

    pm = get_plugin_manager(load_entrypoints=False)
    work, marker = tmp_path / "work", tmp_path / "pwned"
    (work / "triplets").mkdir(parents=True)
    write_jsonl(work / "triplets" / "train.jsonl", conala_triplets(shared_data, 16))
    plant_checkpoint(work / "adapter" / ckpt.CHECKPOINTS_DIR / "checkpoint-2", marker, ckpt.LEGACY_TENSORS_FILE)
    config = resolve_config(pm.get_domain("programming"), None,
                            {"run": {"workdir": str(work), "base_model": tiny_model}}, ["train.batch_size=8"])
    # A folder no run of this work folder started is not resumed: it is moved aside, unread.
    Pipeline(pm, config, log=lambda _m: None, progress=False).stage_train(3)
    assert not marker.exists()
    assert list((work / "stale").glob(f"train-*/{ckpt.CHECKPOINTS_DIR}/checkpoint-2"))
    # A crashed run of the same options does resume from its checkpoints: a planted one is refused.
    import shutil

    shutil.rmtree(work / "adapter")  # a crash leaves only checkpoints behind
    plant_checkpoint(work / "adapter" / ckpt.CHECKPOINTS_DIR / "checkpoint-2", marker, ckpt.LEGACY_TENSORS_FILE)
    with pytest.raises(CachetuneError, match="checkpoint-2: checkpoint in the old pickle format"):
        Pipeline(pm, config, log=lambda _m: None, progress=False).stage_train(3)
    assert not marker.exists()


def test_safe_state_round_trips_optimizer_scheduler_and_rng(tmp_path):
    import numpy as np
    import torch

    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    params[0].sum().backward()
    params[1].sum().backward()
    opt.step()
    sched.step()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": None,
             "rng": [ckpt.rng_state()]}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")

    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    assert set(opt2.state_dict()["state"]) == {0, 1}  # integer keys survive JSON
    for k in (0, 1):
        for name, value in opt.state_dict()["state"][k].items():
            assert torch.equal(value, opt2.state_dict()["state"][k][name])
    assert back["scheduler"] == sched.state_dict()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(back["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("layout, needle", [
    ({"__tensor__": "t9"}, "no tensor named 't9'"),
    ({"__tuple__": 3}, "__tuple__ must hold a list"),
    ({"__items__": [[1]]}, "[key, value] pairs"),
    ({"__ndarray__": [1], "dtype": "object-ish"}, "bad array"),
    ({"__tensor__": "t0", "extra": 1}, "malformed __tensor__"),
])
def test_malformed_layout_is_one_error_naming_the_file(tmp_path, layout, needle):
    from safetensors.torch import save_file
    import torch

    path = tmp_path / ckpt.TENSORS_FILE
    save_file({"t0": torch.zeros(1)}, str(path), metadata={"cachetune.layout": json.dumps(layout)})
    with pytest.raises(CachetuneError) as info:
        load_state(path)
    assert str(path) in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize("state, needle", [
    ({}, "bad checkpoint state: no 'settings'"),
    ({"settings": {}, "global_step": 1, "epoch": 0, "batch": 1, "losses": [], "elapsed_s": 0},
     "bad checkpoint state (settings): no 'domain'"),
    ({"settings": [], "global_step": 1}, "'settings' has the wrong type"),
])
def test_bad_checkpoint_state_names_the_file(tmp_path, state, needle):
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    (folder / ckpt.STATE_FILE).write_text(json.dumps(state))
    save_state(folder / ckpt.TENSORS_FILE, {"optimizer": {}, "scheduler": {}, "rng": []})
    with pytest.raises(CachetuneError) as info:
        ckpt.load_checkpoint(folder)
    assert str(folder / ckpt.STATE_FILE) in str(info.value) and needle in str(info.value)
