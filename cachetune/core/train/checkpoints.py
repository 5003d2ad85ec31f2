"""Checkpoints of a training run: everything needed to continue exactly where it stopped.

A checkpoint is ``OUTPUT/checkpoints/checkpoint-<step>/`` holding the LoRA weights
(peft's ``adapter_config.json`` + ``adapter_model.safetensors``), ``trainer_state.pt``
(optimizer, scheduler, grad scaler and every rank's RNG states) and ``train_state.json``
(the run's settings, data and base model identity, position, loss history, elapsed time).
It is written to a temporary folder and renamed into place, so a kill while saving leaves
the previous checkpoint intact; older checkpoints are removed once a newer one exists.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Optional

from cachetune.core.adapters import PEFT_CONFIG, PEFT_WEIGHTS
from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import write_json

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "train_state.json"
TENSORS_FILE = "trainer_state.pt"
PREFIX = "checkpoint-"


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_peft_files(peft_model, folder: Path, base_model_id: str) -> None:
    """Write only peft's two adapter files into ``folder`` (peft also writes a README we do not want)."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    # Record the portable id, not this machine's path to the embedded copy.
    peft_model.peft_config["default"].base_model_name_or_path = base_model_id
    with tempfile.TemporaryDirectory(dir=folder, prefix=".peft-") as tmp:
        # Only LoRA weights are trained; "auto" would look the base model up on the hub to compare vocabularies.
        peft_model.save_pretrained(tmp, save_embedding_layers=False)
        for name in (PEFT_CONFIG, PEFT_WEIGHTS):
            os.replace(os.path.join(tmp, name), folder / name)


def save_checkpoint(output: Path, step: int, peft_model, base_model_id: str, tensors: dict, state: dict) -> Path:
    """Write checkpoint ``step`` atomically; drop older checkpoints. Returns its folder."""
    import torch

    root = Path(output) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step}"
    tmp = root / f".{PREFIX}{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_peft_files(peft_model, tmp, base_model_id)
    torch.save(tensors, tmp / TENSORS_FILE)
    write_json(tmp / STATE_FILE, state)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in root.glob(f"{PREFIX}*"):
        if old != final and _step_of(old) is not None and _step_of(old) < step:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _step_of(folder: Path) -> Optional[int]:
    name = folder.name
    if not name.startswith(PREFIX) or not (folder / STATE_FILE).exists():
        return None
    try:
        return int(name[len(PREFIX):])
    except ValueError:
        return None


def find_checkpoint(path) -> Path:
    """The checkpoint to resume from: ``path`` itself, or the latest one under ``path``
    (a run's output folder or its ``checkpoints`` folder)."""
    path = Path(path)
    if not path.exists():
        raise CachetuneError("checkpoint not found (--resume-from-checkpoint)", path)
    if (path / STATE_FILE).exists() and (path / TENSORS_FILE).exists():
        return path
    for root in (path / CHECKPOINTS_DIR, path):
        found = [(s, f) for f in root.glob(f"{PREFIX}*") if (s := _step_of(f)) is not None]
        if found:
            return max(found)[1]
    raise CachetuneError("no checkpoint in this folder (--resume-from-checkpoint)", path)


def load_checkpoint(folder: Path):
    """``(state dict from train_state.json, tensors from trainer_state.pt)``."""
    import torch

    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CachetuneError(f"unreadable checkpoint state: {exc}", folder / STATE_FILE) from None
    # Our own file: optimizer state and RNG states need full unpickling.
    tensors = torch.load(folder / TENSORS_FILE, map_location="cpu", weights_only=False)
    return state, tensors


def load_lora_weights(peft_model, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(folder / PEFT_WEIGHTS))
    result = set_peft_model_state_dict(peft_model, weights)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise CachetuneError(f"checkpoint weights do not fit the model ({missing[0]} ...)", folder)


def remove_checkpoints(output: Path) -> None:
    shutil.rmtree(Path(output) / CHECKPOINTS_DIR, ignore_errors=True)
