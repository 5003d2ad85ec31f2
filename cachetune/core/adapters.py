"""Reading an adapter folder and attaching it to its base SentenceTransformer.

An adapter folder holds peft's ``adapter_config.json`` + ``adapter_model.safetensors`` and
cachetune's card ``cachetune.json`` (domain, base model id and weights sha256, LoRA config,
data, hyperparameters, results). The peft files alone also load (the base model then
comes from ``adapter_config.json``'s ``base_model_name_or_path`` or ``--base-model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cachetune.core.errors import CachetuneError
from cachetune.core.textfiles import read_json
from cachetune.core.models import (
    canonical_model_id,
    load_sentence_transformer,
    resolve_base_model,
    weights_sha256,
)

CARD_FILE = "cachetune.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def read_card(adapter_dir) -> dict:
    """The adapter's ``cachetune.json`` ({} when the folder only has peft files)."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise CachetuneError("adapter folder not found", adapter_dir)
    if not (adapter_dir / PEFT_CONFIG).exists():
        raise CachetuneError(f"not a LoRA adapter folder (no {PEFT_CONFIG})", adapter_dir)
    card_path = adapter_dir / CARD_FILE
    if not card_path.exists():
        return {}
    return read_json_object(card_path)


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object; invalid JSON, another value or text that is not UTF-8 is an
    error naming the file."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise CachetuneError(f"expected a JSON object, got {type(obj).__name__}", path, 1)
    return obj


def adapter_base_model(adapter_dir, card: Optional[dict] = None) -> str:
    """The base model id an adapter was trained on."""
    card = read_card(adapter_dir) if card is None else card
    if card.get("base_model", {}).get("id"):
        return card["base_model"]["id"]
    peft_cfg = read_json_object(Path(adapter_dir) / PEFT_CONFIG)
    return peft_cfg.get("base_model_name_or_path") or "sentence-transformers/all-MiniLM-L6-v2"


def check_base_model(adapter_dir, base_model: Optional[str], card: Optional[dict] = None) -> str:
    """The base model to load for ``adapter_dir``; a mismatch with ``base_model`` is an error.

    Ids are compared after mapping the embedded copy to its hub id; when both sides are
    local, the weights' sha256 must match too.
    """
    card = read_card(adapter_dir) if card is None else card
    trained_on = adapter_base_model(adapter_dir, card)
    if base_model is None:
        return trained_on
    wanted = canonical_model_id(base_model)
    if wanted != canonical_model_id(trained_on):
        raise CachetuneError(
            f"adapter was trained on base model '{trained_on}', not '{wanted}' (--base-model)", adapter_dir
        )
    expected_sha = card.get("base_model", {}).get("weights_sha256")
    actual_sha = weights_sha256(resolve_base_model(base_model))
    if expected_sha and actual_sha and expected_sha != actual_sha:
        raise CachetuneError(
            f"base model '{base_model}' has different weights (sha256 {actual_sha[:12]}) than the adapter was "
            f"trained on ({expected_sha[:12]})",
            adapter_dir,
        )
    return base_model


def set_auto_model(transformer, module) -> None:
    """Replace the transformer module's model, whichever attribute holds it.

    sentence-transformers >= 5 keeps it in ``.model`` behind a read-only ``auto_model``
    property; older releases store ``auto_model`` directly.
    """
    if isinstance(getattr(type(transformer), "auto_model", None), property):
        transformer.model = module
    else:
        transformer.auto_model = module


def attach_adapter(model, adapter_dir, adapter_name: str = "default", trainable: bool = False):
    """Wrap ``model[0].auto_model`` in peft with the adapter; returns the peft model.

    peft must wrap the transformer module itself: wrapping the SentenceTransformer or
    merging on another object leaves the encoder's weights untouched.
    """
    from peft import PeftModel

    transformer = model[0]
    try:
        peft_model = PeftModel.from_pretrained(
            transformer.auto_model, str(adapter_dir), adapter_name=adapter_name, is_trainable=trainable
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CachetuneError(f"could not load adapter: {first}", adapter_dir) from None
    set_auto_model(transformer, peft_model)
    return peft_model


def check_finite_weights(path) -> None:
    """Refuse an adapter weights file holding NaN or infinite values (a diverged training run):
    it would turn every embedding into NaN. Reads the file with numpy, so torch stays unloaded."""
    import numpy as np
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            for name in fh.keys():
                try:
                    values = fh.get_tensor(name)
                except (TypeError, ValueError, SafetensorError):  # a dtype numpy lacks (bf16)
                    values = _as_numpy(path, name)
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    raise CachetuneError(f"adapter weights hold NaN or infinite values (tensor '{name}'): "
                                         "the training that wrote them diverged", path)
    except (SafetensorError, OSError) as exc:
        raise CachetuneError(f"unreadable adapter weights: {exc}", path) from None


def _as_numpy(path: Path, name: str):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return fh.get_tensor(name).float().numpy()


def merge_adapter(model) -> None:
    """Fold LoRA weights into the base weights of ``model[0]`` (in place)."""
    transformer = model[0]
    set_auto_model(transformer, transformer.auto_model.merge_and_unload())


def load_adapter_model(adapter_dir, base_model: Optional[str] = None, device: Optional[str] = None,
                       merged: bool = False):
    """A SentenceTransformer that encodes through the adapter in ``adapter_dir``."""
    card = read_card(adapter_dir)
    base = check_base_model(adapter_dir, base_model, card)
    model = load_sentence_transformer(base, device=device)
    attach_adapter(model, adapter_dir)
    if merged:
        merge_adapter(model)
    model.eval()
    return model
