"""Checkpoints of a training run: everything needed to continue exactly where it stopped.

A checkpoint is ``OUTPUT/checkpoints/checkpoint-<step>/`` holding the LoRA weights
(peft's ``adapter_config.json`` + ``adapter_model.safetensors``), ``trainer_state.safetensors``
(optimizer, scheduler, grad scaler and every rank's RNG states: tensors plus a JSON layout,
see :mod:`cachetune.core.train.safe_state`) and ``train_state.json`` (the run's settings, data
and base model identity, position, loss history, elapsed time). Nothing in a checkpoint is
unpickled, so a checkpoint from anywhere can be resumed without running its code.
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
from cachetune.core.train.safe_state import load_state, save_state

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "train_state.json"
TENSORS_FILE = "trainer_state.safetensors"
# What cachetune < 0.2 wrote: a pickle, never loaded (unpickling runs code).
LEGACY_TENSORS_FILE = "trainer_state.pt"
PREFIX = "checkpoint-"
# What a checkpoint must hold, and of which type, before anything reads it.
STATE_FIELDS = {"settings": dict, "global_step": int, "epoch": int, "batch": int, "losses": list,
                "elapsed_s": (int, float)}
SETTINGS_FIELDS = {"domain": str, "base_model": dict, "data_sha256": str, "world_size": int,
                   "hyperparameters": dict}
TENSOR_FIELDS = {"optimizer": dict, "scheduler": dict, "rng": list}


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
    root = Path(output) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step}"
    tmp = root / f".{PREFIX}{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_peft_files(peft_model, tmp, base_model_id)
    save_state(tmp / TENSORS_FILE, tensors)
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


def _refuse_legacy(folder: Path) -> None:
    if (folder / LEGACY_TENSORS_FILE).exists() and not (folder / TENSORS_FILE).exists():
        raise CachetuneError(f"checkpoint in the old pickle format ({LEGACY_TENSORS_FILE}), which is never loaded "
                             "because unpickling can run code: start again with --overwrite", folder)


def find_checkpoint(path) -> Path:
    """The checkpoint to resume from: ``path`` itself, or the latest one under ``path``
    (a run's output folder or its ``checkpoints`` folder)."""
    path = Path(path)
    if not path.exists():
        raise CachetuneError("checkpoint not found (--resume-from-checkpoint)", path)
    _refuse_legacy(path)
    if (path / STATE_FILE).exists() and (path / TENSORS_FILE).exists():
        return path
    for root in (path / CHECKPOINTS_DIR, path):
        found = [(s, f) for f in root.glob(f"{PREFIX}*") if (s := _step_of(f)) is not None]
        if found:
            latest = max(found)[1]
            _refuse_legacy(latest)
            return latest
    raise CachetuneError("no checkpoint in this folder (--resume-from-checkpoint)", path)


def _check_fields(obj, fields: dict, what: str, path: Path) -> None:
    if not isinstance(obj, dict):
        raise CachetuneError(f"bad checkpoint {what}: expected a JSON object", path)
    for key, kind in fields.items():
        if key not in obj:
            raise CachetuneError(f"bad checkpoint {what}: no '{key}'", path)
        if not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            raise CachetuneError(f"bad checkpoint {what}: '{key}' has the wrong type", path)


def load_checkpoint(folder: Path):
    """``(state dict from train_state.json, tensors from trainer_state.safetensors)``, both checked
    to hold every field a resume reads."""
    state_path = folder / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CachetuneError(f"unreadable checkpoint state: {exc}", state_path) from None
    _check_fields(state, STATE_FIELDS, "state", state_path)
    _check_fields(state["settings"], SETTINGS_FIELDS, "state (settings)", state_path)
    base = state["settings"]["base_model"]
    if not isinstance(base.get("id"), str) or "weights_sha256" not in base:
        raise CachetuneError("bad checkpoint state: settings.base_model needs 'id' and 'weights_sha256'", state_path)
    tensors = load_state(folder / TENSORS_FILE)
    _check_fields(tensors, TENSOR_FIELDS, "tensors", folder / TENSORS_FILE)
    return state, tensors


def restore(folder: Path, tensors: dict, peft_model, optimizer, scheduler, scaler, rank: int) -> None:
    """Put a checkpoint's weights, optimizer, scheduler, scaler and this rank's RNG states in place;
    a checkpoint that does not fit is one error naming it."""
    load_lora_weights(peft_model, folder)
    try:
        optimizer.load_state_dict(tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
        if scaler is not None and tensors.get("scaler"):
            scaler.load_state_dict(tensors["scaler"])
        set_rng_state(tensors["rng"][rank])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise CachetuneError(f"bad checkpoint tensors: {type(exc).__name__}: {exc}".splitlines()[0],
                             folder / TENSORS_FILE) from None


def load_lora_weights(peft_model, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(folder / PEFT_WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise CachetuneError(f"unreadable checkpoint weights: {exc}", folder / PEFT_WEIGHTS) from None
    result = set_peft_model_state_dict(peft_model, weights)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise CachetuneError(f"checkpoint weights do not fit the model ({missing[0]} ...)", folder)


def remove_checkpoints(output: Path) -> None:
    shutil.rmtree(Path(output) / CHECKPOINTS_DIR, ignore_errors=True)
