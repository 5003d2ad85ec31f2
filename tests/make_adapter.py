"""Builds real LoRA adapter folders for registry and serving tests.

Training lives elsewhere; these tests only need adapters that genuinely change the
embeddings, so the LoRA ``B`` matrices (zero at initialisation, which would make the
adapter a no-op) are filled with small seeded random values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from cachetune.core.adapters import CARD_FILE
from cachetune.core.models import canonical_model_id, resolve_base_model, weights_sha256


def write_card(adapter_dir, base_model: str, domain: str, lora: dict, **overrides) -> dict:
    """Write a ``cachetune.json`` card in the training card's format; return it."""
    card = {
        "cachetune_version": "0.1.0",
        "domain": domain,
        "domain_plugin": {"name": domain, "package": "cachetune", "version": "0.1.0"},
        "base_model": {"id": canonical_model_id(base_model),
                       "weights_sha256": weights_sha256(resolve_base_model(base_model))},
        "lora": lora,
        "trainable_parameters": 0,
        "data": {"path": "triplets.jsonl", "sha256": "0" * 64, "triplets": 0, "skipped": 0},
        "hyperparameters": {"epochs": 1, "learning_rate": 2e-4, "batch_size": 16},
        "results": {"final_loss": 0.0, "wall_time_s": 0.0, "triplets_per_s": 0.0, "steps": 0},
        "versions": {},
        "created": "2025-01-01T00:00:00+0000",
    }
    card.update(overrides)
    Path(adapter_dir, CARD_FILE).write_text(json.dumps(card, indent=2), encoding="utf-8")
    return card


def make_adapter(base_model: str, out_dir, domain: str = "programming", seed: int = 0, scale: float = 0.05,
                 r: int = 8, target_modules: Sequence[str] = ("query", "value"),
                 card: Optional[dict] = None) -> Path:
    """Save a LoRA adapter for ``base_model`` (a SentenceTransformer folder) plus its card."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base_model, device="cpu")
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules), lora_dropout=0.1)
    torch.manual_seed(seed)  # peft draws lora_A from the global generator: same adapter whatever ran before
    peft_model = get_peft_model(model[0].auto_model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    lora = {"r": r, "alpha": 2 * r, "dropout": 0.1, "target_modules": list(target_modules)}
    write_card(out_dir, base_model, domain, lora, trainable_parameters=trainable, **(card or {}))
    return out_dir
