"""Checking an adapter folder before it enters the registry, and hashing its files.

An adapter folder is peft's ``adapter_config.json`` + ``adapter_model.safetensors`` plus
cachetune's card ``cachetune.json``. Everything here reads files only (the safetensors
header is parsed by hand), so registering, listing and verifying never import torch. Files are
hashed with :func:`cachetune.core.models.sha256_file`, which reads them from disk every time.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path
from typing import Dict, Optional

from cachetune.core.adapters import (
    CARD_FILE,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    base_model_entry,
    check_base_model,
    check_finite_weights,
    read_card,
    read_json_object,
)
from cachetune.core.errors import CachetuneError
from cachetune.core.models import canonical_model_id, resolve_base_model, sha256_file, weights_sha256

REQUIRED_FILES = (PEFT_CONFIG, PEFT_WEIGHTS, CARD_FILE)
# peft writes a README next to the weights; kept when present, never required.
OPTIONAL_FILES = ("README.md",)
# A safetensors header is JSON; anything claiming more than this is not one.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def safetensors_tensor_names(path: Path) -> list:
    """Names of the tensors in a safetensors file; a truncated or garbled file is an error.

    The format is an 8-byte little-endian header length, a JSON header giving each
    tensor's byte range, then the data: the ranges must fit the file exactly.
    """
    if not path.exists():
        raise CachetuneError("adapter weights file is missing", path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CachetuneError("not a safetensors file (shorter than its header)", path)
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise CachetuneError("not a safetensors file (bad header length)", path)
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CachetuneError("not a safetensors file (header is not JSON)", path) from None
    if not isinstance(header, dict):
        raise CachetuneError("not a safetensors file (header is not an object)", path)
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            raise CachetuneError(f"not a safetensors file (tensor '{name}' has no data offsets)", path)
        end = max(end, int(offsets[1]))
    if 8 + header_len + end != size:
        raise CachetuneError(
            f"safetensors file is truncated or padded ({size} bytes, header describes {8 + header_len + end})", path
        )
    return sorted(header)


def _lora_from_peft(peft_cfg: dict, path: Path) -> dict:
    if str(peft_cfg.get("peft_type", "")).upper() != "LORA":
        raise CachetuneError(f"not a LoRA adapter (peft_type {peft_cfg.get('peft_type')!r})", path)
    r = peft_cfg.get("r")
    if not isinstance(r, int) or r <= 0:
        raise CachetuneError(f"LoRA rank 'r' must be a positive integer, got {r!r}", path)
    targets = peft_cfg.get("target_modules")
    if not targets:
        raise CachetuneError("LoRA config has no target_modules", path)
    if isinstance(targets, str):  # peft allows a regex here
        targets = [targets]
    return {
        "r": r,
        "alpha": peft_cfg.get("lora_alpha"),
        "dropout": peft_cfg.get("lora_dropout"),
        "target_modules": sorted(targets),
    }


def _check_card_lora(card_lora: dict, lora: dict, card_path: Path) -> None:
    """The card and peft's config must describe the same LoRA (a hand-edited card would lie)."""
    for key in ("r", "alpha"):
        if key in card_lora and card_lora[key] is not None and lora.get(key) is not None \
                and card_lora[key] != lora[key]:
            raise CachetuneError(
                f"card says lora.{key}={card_lora[key]!r} but {PEFT_CONFIG} has {lora[key]!r}", card_path
            )


def _base_model_entry(adapter_dir: Path, card: dict) -> dict:
    """The card's base model (id made canonical), checked against the local copy when there is one;
    the weights sha256 is the card's, else the local copy's."""
    entry = base_model_entry(adapter_dir, card)
    entry["id"] = canonical_model_id(entry["id"])
    try:
        resolved = resolve_base_model(entry["id"])
    except CachetuneError:  # a local path that only exists where the adapter was trained
        return entry
    check_base_model(entry, where=adapter_dir / CARD_FILE)
    entry["weights_sha256"] = entry["weights_sha256"] or weights_sha256(resolved)
    return entry


def _check_regular_files(adapter_dir: Path) -> None:
    """Every adapter file present must be a regular file: a link could point at any file on this
    machine (which the registry would then copy, and ``export`` ship), a fifo would hang a read."""
    if not adapter_dir.is_dir():
        raise CachetuneError("adapter folder not found", adapter_dir)
    for name in REQUIRED_FILES + OPTIONAL_FILES:
        path = adapter_dir / name
        if not os.path.lexists(path):
            continue
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            raise CachetuneError("is a symbolic link: the registry copies only regular files", path)
        if not stat.S_ISREG(mode):
            raise CachetuneError("is not a regular file", path)


def copy_regular_file(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest``, refusing a link or special file even if one was swapped in
    after :func:`inspect_adapter` looked (the file is opened without following links)."""
    try:
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise CachetuneError(f"cannot read adapter file: {exc.strerror} (a symbolic link?)", src) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise CachetuneError("is not a regular file", src)
        with open(dest, "xb") as out:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                out.write(chunk)


def _check_peft_base(peft_cfg: dict, card: dict, peft_path: Path) -> None:
    """peft's config and the card must name the same base model (ids compared canonically)."""
    peft_base = peft_cfg.get("base_model_name_or_path")
    card_base = (card.get("base_model") or {}).get("id")
    if peft_base and card_base and canonical_model_id(peft_base) != canonical_model_id(card_base):
        raise CachetuneError(f"names base model '{peft_base}' but the card says '{card_base}'", peft_path)


def inspect_adapter(adapter_dir) -> dict:
    """Validate an adapter folder; return what a registry record needs from it.

    Returns ``{"card", "domain", "base_model", "lora", "domain_plugin", "files"}`` where
    ``files`` lists the file names to copy. Every problem is a :class:`CachetuneError`
    naming the file at fault.
    """
    adapter_dir = Path(adapter_dir)
    _check_regular_files(adapter_dir)
    card = read_card(adapter_dir)  # checks the folder and adapter_config.json exist
    card_path = adapter_dir / CARD_FILE
    if not card_path.exists():
        raise CachetuneError(
            f"no {CARD_FILE} card (the registry needs its domain and base model; `cachetune train` writes it)",
            adapter_dir,
        )
    domain = card.get("domain")
    if not isinstance(domain, str) or not domain.strip():
        raise CachetuneError("card has no 'domain'", card_path)
    for key in ("base_model", "lora", "domain_plugin"):
        if key in card and not isinstance(card[key], dict):
            raise CachetuneError(f"card's '{key}' must be an object", card_path)

    peft_path = adapter_dir / PEFT_CONFIG
    peft_cfg = read_json_object(peft_path)
    lora = _lora_from_peft(peft_cfg, peft_path)
    _check_peft_base(peft_cfg, card, peft_path)
    if "lora" in card:
        _check_card_lora(card["lora"], lora, card_path)

    weights = adapter_dir / PEFT_WEIGHTS
    names = safetensors_tensor_names(weights)
    if not any("lora_" in n for n in names):
        raise CachetuneError("no LoRA tensors in the weights file", weights)
    check_finite_weights(weights)

    plugin = card.get("domain_plugin")
    files = list(REQUIRED_FILES) + [f for f in OPTIONAL_FILES if (adapter_dir / f).is_file()]
    return {
        "card": card,
        "domain": domain,
        "base_model": _base_model_entry(adapter_dir, card),
        "lora": lora,
        "domain_plugin": plugin,
        "files": files,
    }


def hash_files(folder: Path, names) -> Dict[str, str]:
    return {name: sha256_file(folder / name) for name in names}


def file_problems(folder: Path, expected: Dict[str, str]) -> Dict[str, Optional[str]]:
    """``{file name: problem}`` for each file that is missing or whose sha256 changed."""
    problems: Dict[str, Optional[str]] = {}
    for name, sha in sorted(expected.items()):
        path = folder / name
        if path.is_symlink():
            problems[name] = "a symbolic link, not the registered file"
            continue
        if not path.is_file():
            problems[name] = "missing"
            continue
        actual = sha256_file(path)
        if actual != sha:
            problems[name] = f"corrupt (sha256 {actual[:12]}, recorded {sha[:12]})"
    return problems
