"""Reading an adapter folder, checking its base model, attaching it (or merging it) to its base.

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
    DEFAULT_BASE_MODEL,
    canonical_model_id,
    load_sentence_transformer,
    resolve_base_model,
    sha256_file,
    weights_sha256,
)

CARD_FILE = "cachetune.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
# Written into a merged export so `embed --adapter DIR` and users know where it came from.
MERGED_INFO_FILE = "cachetune-merged.json"


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
    return peft_cfg.get("base_model_name_or_path") or DEFAULT_BASE_MODEL


def base_model_entry(adapter_dir, card: Optional[dict] = None) -> dict:
    """``{"id", "weights_sha256"}`` of the base model an adapter records (sha256 None if unrecorded)."""
    card = read_card(adapter_dir) if card is None else card
    return {"id": adapter_base_model(adapter_dir, card),
            "weights_sha256": (card.get("base_model") or {}).get("weights_sha256")}


def check_base_model(entry: dict, base_model: Optional[str] = None, where=None) -> str:
    """The path (or hub id) of the base model to load for an adapter trained on ``entry``.

    The one base-model check of evaluate, serving and the registry. ``entry`` is
    ``{"id", "weights_sha256"}`` (a card's or a registry record's ``base_model``);
    ``base_model`` (``--base-model``) must be the same model, ids compared after mapping the
    embedded copy to its hub id. Whenever the adapter records a weights sha256 and the base
    model is local, its weights must have that sha256. ``where`` names the adapter in errors.
    """
    trained_on = entry.get("id") or DEFAULT_BASE_MODEL
    if base_model and canonical_model_id(base_model) != canonical_model_id(trained_on):
        raise CachetuneError(f"base model mismatch: the adapter was trained on base model '{trained_on}', "
                             f"not '{base_model}' (--base-model)", where)
    resolved = resolve_base_model(base_model or trained_on)
    expected, actual = entry.get("weights_sha256"), weights_sha256(resolved)
    if expected and actual and expected != actual:
        adapter = f" ({where})" if where is not None else ""
        raise CachetuneError(f"base model mismatch: weights sha256 {actual[:12]} but the adapter{adapter} was "
                             f"trained on weights sha256 {expected[:12]}", resolved)
    return resolved


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
                       merged: bool = False, entry: Optional[dict] = None, where=None):
    """A SentenceTransformer (eval mode) that encodes through the adapter in ``adapter_dir``.

    ``entry`` is the base model the adapter was trained on (default: its card's); the base
    is checked with :func:`check_base_model` before anything loads. ``merged`` folds the
    LoRA into the weights: the same embeddings at the base model's speed.
    """
    entry = base_model_entry(adapter_dir) if entry is None else entry
    model = load_sentence_transformer(check_base_model(entry, base_model, where or adapter_dir), device=device)
    attach_adapter(model, adapter_dir)
    if merged:
        merge_adapter(model)  # merges model[0]'s PeftModel: the object that holds the LoRA
    model.eval()
    return model


def save_merged(adapter_dir, output, entry: dict, info: dict, device: Optional[str] = None) -> None:
    """Save the adapter merged into its base as a plain SentenceTransformer folder at ``output``,
    with ``info`` (where it came from) in :data:`MERGED_INFO_FILE`."""
    from cachetune.core.jsonl import write_json

    model = load_adapter_model(adapter_dir, device=device, merged=True, entry=entry)
    model.save(str(output))
    write_json(Path(output) / MERGED_INFO_FILE, info)


def average_adapters(adapter_dirs, output, rank: Optional[int] = None, device: Optional[str] = None) -> dict:
    """Write into the new folder ``output`` one adapter whose update is the mean of the
    adapters' updates (same domain, base model and target modules; e.g. one recipe trained at
    several seeds). Returns the new card.

    ``rank`` None: peft's ``add_weighted_adapter(combination_type="cat")`` stacks the LoRA
    factors, so the mean is exact at rank ``sum(r)`` (checked here layer by layer); ``rank`` R:
    ``combination_type="svd"``, each layer's mean update truncated to its best rank-R
    approximation (the size of a rank-R adapter).
    """
    import shutil
    import tempfile
    from datetime import datetime, timezone

    from peft import PeftModel

    from cachetune.core.jsonl import write_json

    folders = [Path(d) for d in adapter_dirs]
    if len(folders) < 2:
        raise CachetuneError("averaging needs at least two adapters")
    cards = [read_card(f) for f in folders]
    configs = [read_json_object(f / PEFT_CONFIG) for f in folders]
    entries = [base_model_entry(f, c) for f, c in zip(folders, cards)]
    # Each adapter's base through the one base-model check (its recorded weights sha256 against
    # the local copy's); one base model for all of them.
    bases = [check_base_model(entry, None, folder) for entry, folder in zip(entries, folders)]
    first = folders[0]
    for folder, card, config, entry, base in zip(folders[1:], cards[1:], configs[1:], entries[1:], bases[1:]):
        if base != bases[0]:
            raise CachetuneError(f"trained on base model '{entry['id']}', not '{entries[0]['id']}' as {first} was: "
                                 "only adapters of one base model can be averaged", folder)
        if card.get("domain") != cards[0].get("domain"):
            raise CachetuneError(f"an adapter for domain '{card.get('domain')}', not '{cards[0].get('domain')}' "
                                 f"as {first} is", folder)
        if sorted(config.get("target_modules") or []) != sorted(configs[0].get("target_modules") or []):
            raise CachetuneError(f"LoRA on {sorted(config.get('target_modules') or [])}, not "
                                 f"{sorted(configs[0].get('target_modules') or [])} as {first}", folder)
    total_rank = sum(int(c.get("r") or 0) for c in configs)
    if rank is not None and not 1 <= rank <= total_rank:
        raise CachetuneError(f"--rank must be between 1 and {total_rank} (the adapters' ranks summed), got {rank}")

    output = Path(output)
    model = load_sentence_transformer(bases[0], device=device)
    names = [f"input{i}" for i in range(len(folders))]
    try:
        peft_model = PeftModel.from_pretrained(model[0].auto_model, str(first), adapter_name=names[0])
        for name, folder in zip(names[1:], folders[1:]):
            peft_model.load_adapter(str(folder), adapter_name=name)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CachetuneError(f"could not load the adapters: {first_line}") from None
    weights = [1.0 / len(names)] * len(names)
    if rank is None:
        peft_model.add_weighted_adapter(names, weights, "mean", combination_type="cat")
    else:
        peft_model.add_weighted_adapter(names, weights, "mean", combination_type="svd", svd_rank=rank)
    layers = [m for m in peft_model.modules() if hasattr(m, "lora_A") and "mean" in m.lora_A]
    if rank is None:
        for layer in layers:
            def update(name, layer=layer):
                return layer.scaling[name] * layer.lora_B[name].weight @ layer.lora_A[name].weight

            want = sum(update(n) for n in names) / len(names)
            if float((update("mean") - want).abs().max()) > 1e-5 * max(1.0, float(want.abs().max())):
                raise CachetuneError("peft's stacked adapter is not the mean of the updates (peft version?)")
    peft_model.set_adapter("mean")
    for name in names:
        peft_model.delete_adapter(name)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        peft_model.save_pretrained(str(staging / "saved"), selected_adapters=["mean"], save_embedding_layers=False)
        saved = staging / "saved" / "mean"
        config = read_json_object(saved / PEFT_CONFIG)
        config["base_model_name_or_path"] = configs[0].get("base_model_name_or_path")
        write_json(saved / PEFT_CONFIG, config)
        card = {key: value for key, value in cards[0].items() if key not in ("results", "data", "created")}
        card["lora"] = {"r": config["r"], "alpha": config["lora_alpha"], "dropout": config.get("lora_dropout"),
                        "target_modules": sorted(config["target_modules"])}
        card["trainable_parameters"] = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        card["averaged"] = {
            "combination": "mean of the updates, exact (factors stacked)" if rank is None
            else f"mean of the updates, truncated SVD to rank {rank}",
            "adapters": [{"folder": str(f), "weights_sha256": sha256_file(f / PEFT_WEIGHTS),
                          "seed": (c.get("hyperparameters") or {}).get("seed"),
                          "data": c.get("data"), "results": c.get("results")} for f, c in zip(folders, cards)],
        }
        card["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(saved / CARD_FILE, card)
        if output.exists():
            output.rmdir()  # checked empty by the caller
        saved.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return card
