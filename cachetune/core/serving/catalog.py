"""What ``cachetune serve`` serves: registry adapters and their base models, under every name
a client may send as ``model``.

A request's ``model`` is an adapter ``name@version``, an adapter name (its latest loaded
version), a domain (the adapter the registry serves for it, if loaded) or a base model id.
Unmerged adapters on one base model share one copy of it (:func:`load_shared`) and are
switched per batch; ``merged=True`` folds each adapter into a copy of its own (base-model
speed, one copy each); ``backend="onnx"`` serves merged ONNX exports run by onnxruntime
(:mod:`cachetune.core.serving.onnx`). Every adapter is loaded with the registry's checks: file hashes and
the base model's weights.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

from cachetune.core.adapters import check_base_model
from cachetune.core.errors import CachetuneError
from cachetune.core.models import EMBEDDED_ALIASES, EMBEDDED_MODEL_ID, load_sentence_transformer
from cachetune.core.serving.models import ServedAdapter, check_backend, load_model, load_shared, open_registry


@dataclass
class Encoder:
    """One servable model: ``encode(texts)`` returns one unit-length float32 row per text."""

    id: str
    encode: Callable[[List[str]], "object"]
    tokenizer: object  # a private copy: counting runs on the event loop while another thread encodes
    max_tokens: int
    dimension: int
    base_model: str
    model: object  # the SentenceTransformer that encodes (shared by unmerged adapters on one base)
    adapter: Optional[ServedAdapter] = None
    router: Optional[dict] = None  # for "auto": {"ref", "routes": {domain: adapter ref}}; rows carry domains
    # the base of unmerged adapters: encode_mixed(texts, labels) puts each text through its own adapter
    mixed: Optional[Callable[[List[str], List[Optional[str]]], "object"]] = None
    backend: str = "torch"
    created: int = field(default_factory=lambda: int(time.time()))

    def token_counts(self, texts: Sequence[str]) -> List[int]:
        """Tokens per text as the model sees them, special tokens included, before truncation."""
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return [len(row) for row in ids]

    def describe(self) -> dict:
        """The ``/v1/models`` entry: OpenAI's fields plus what a cache needs to set its threshold."""
        adapter = self.adapter
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "cachetune",
            "base_model": self.base_model,
            "domain": adapter.domain if adapter else None,
            "calibrated_threshold": adapter.calibrated_threshold if adapter else None,
            "merged": adapter.merged if adapter else False,
            "backend": self.backend,
            "dimension": self.dimension,
            "max_tokens": self.max_tokens,
            **({"router": self.router} if self.router else {}),
        }


class ModelCatalog:
    """The loaded encoders, and the names (ids and aliases) that select them."""

    def __init__(self, encoders: Sequence[Encoder], aliases: Dict[str, str]):
        self.encoders = {encoder.id: encoder for encoder in encoders}
        self.aliases = aliases

    def resolve(self, name: str) -> Optional[Encoder]:
        """The encoder for a request's ``model`` (an id or an alias); None when not served."""
        return self.encoders.get(name) or self.encoders.get(self.aliases.get(name, ""))

    def describe(self) -> List[dict]:
        return [encoder.describe() for encoder in self.encoders.values()]


def _dimension(model) -> int:
    # sentence-transformers 5 renamed the method; older releases only have the first name
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return getter()


ENCODE_OPTIONS = dict(convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)


def _encoder(model_id: str, encode, model, base_model: str, batch_size: int,
             adapter: Optional[ServedAdapter] = None, mixed=None) -> Encoder:
    def run(texts: List[str]):
        return encode(texts, batch_size=batch_size, **ENCODE_OPTIONS)

    # SentenceTransformer.backend is "torch" here; OnnxEncoder.backend says "onnx-fp32" / "onnx-int8"
    return Encoder(model_id, run, copy.deepcopy(model.tokenizer), int(model.max_seq_length),
                   _dimension(model), base_model, model, adapter, backend=getattr(model, "backend", "torch"),
                   mixed=mixed and partial(mixed, batch_size=batch_size, **ENCODE_OPTIONS))


def _auto_encoder(reg, router_ref: Optional[str], encoders: List[Encoder], bases: Dict[str, dict]) -> Optional[Encoder]:
    """``auto``: the router (``router_ref``, else the registry's router over the most loaded domains)
    over the loaded adapters, or None when no router fits them."""
    from cachetune.core.serving.routed import read_router, router_mismatch
    from cachetune.core.routing.router import routed_encode
    from cachetune.registry.routers import RouterStore

    by_ref = {e.id: e for e in encoders}
    store = RouterStore(reg)
    candidates = [read_router(reg, router_ref)] if router_ref else \
        sorted((read_router(reg, name) for name in store.names()), key=lambda r: -len(r.domains))
    for router in candidates:
        targets = {d: by_ref.get(ref) for d, ref in router.adapters.items()}
        base_id = next(iter(targets.values())).base_model if all(targets.values()) else None
        base = by_ref.get(base_id)
        loaded = {d: (e.id if e else None) for d, e in targets.items()}
        problem = router_mismatch(router, loaded, bases.get(base_id, {}))
        if problem is None and base is not None:
            break
        if router_ref:
            raise CachetuneError(f"--router {router_ref}: {problem or 'its base model is not served'}")
    else:
        return None
    thresholds = {d: e.adapter.calibrated_threshold for d, e in targets.items()}
    encoders_by_domain = {d: e.encode for d, e in targets.items()}

    mixed = None
    if base.mixed is not None and all(e.model is base.model for e in targets.values()):  # one shared base

        def mixed(texts, domains):
            return base.mixed(texts, [None if d is None else targets[d].id for d in domains])

    def run(texts: List[str]):
        return routed_encode(router, base.model, encoders_by_domain, base.encode, texts, thresholds, mixed)

    return Encoder("auto", run, base.tokenizer, base.max_tokens, base.dimension, base.base_model, base.model,
                   None, {"ref": router.ref, "routes": dict(router.adapters)})


def select_records(registry, refs: Sequence[str] = ()) -> List[dict]:
    """The records to serve: ``refs`` (``name[@version]`` or a domain), else every name's latest version."""
    if not refs:
        return [registry.get(name) for name in sorted({r["name"] for r in registry.list()})]
    records: Dict[str, dict] = {}
    for ref in refs:
        try:
            record = registry.get(ref)
        except CachetuneError as exc:
            if "@" in ref or not registry.list(domain=ref):
                raise CachetuneError(f"--model {ref}: {exc.message}", exc.path) from None
            record = registry.find(ref)
        records.setdefault(record["ref"], record)
    return list(records.values())


def _aliases(registry, records: List[dict], base_ids: Sequence[str]) -> Dict[str, str]:
    """Adapter names, then domains, then base-model short names, each pointing at one loaded id."""
    aliases: Dict[str, str] = {}
    loaded = {r["ref"] for r in records}
    for record in sorted(records, key=lambda r: r["version"]):
        aliases[record["name"]] = record["ref"]  # the latest loaded version wins
    for domain in {r["domain"] for r in records} - set(aliases):
        chosen = registry.find(domain)["ref"]
        aliases[domain] = chosen if chosen in loaded else [r["ref"] for r in records if r["domain"] == domain][-1]
    for base_id in base_ids:
        names = EMBEDDED_ALIASES if base_id == EMBEDDED_MODEL_ID else {base_id.rstrip("/").rsplit("/", 1)[-1]}
        for name in names:
            aliases.setdefault(name, base_id)
    return {name: target for name, target in aliases.items() if name != target}


def _base_loader(reg, backend: str, quantize: Optional[str], device: Optional[str]):
    """``load(base_entry, where)``: the base model as this backend serves it."""
    if backend == "onnx":
        from cachetune.core.serving import onnx

        return lambda entry, where=None: onnx.load_onnx(onnx.base_export(reg, entry, quantize, device))
    return lambda entry, where=None: load_sentence_transformer(check_base_model(entry, None, where), device=device)


def load_catalog(registry=None, refs: Sequence[str] = (), merged: bool = False, device: Optional[str] = None,
                 batch_size: int = 64, router: Optional[str] = None, backend: str = "torch",
                 quantize: Optional[str] = None) -> ModelCatalog:
    """Load the adapters named by ``refs`` (default: every adapter in the registry) and their bases.

    ``auto`` is served too when a router in the registry (or ``router``) routes over loaded adapters.
    ``backend="onnx"`` serves each adapter merged and run by onnxruntime (``quantize="int8"``:
    the int8 export), the bases too; routing reads PyTorch token embeddings, so not with it.
    """
    check_backend(backend, quantize)
    if router and backend == "onnx":
        raise CachetuneError("--router needs --backend torch (the router reads the base model's token embeddings)")
    reg = open_registry(registry)
    records = select_records(reg, refs)
    groups: Dict[str, List[dict]] = {}
    for record in records:
        groups.setdefault(record["base_model"]["id"], []).append(record)
    load_base = _base_loader(reg, backend, quantize, device)
    encoders: List[Encoder] = []
    for base_id, group in groups.items():
        if merged or backend == "onnx":
            base = load_base(group[0]["base_model"], reg.path_of(group[0]))
            encoders.append(_encoder(base_id, base.encode, base, base_id, batch_size))
            for record in group:
                model = load_model(adapter=record["ref"], registry=reg, merged=True, device=device, backend=backend,
                                   quantize=quantize)
                encoders.append(_encoder(record["ref"], model.encode, model, base_id, batch_size,
                                         model.cachetune_adapter))
            continue
        multi = load_shared({r["ref"]: r for r in group}, reg, device=device)
        encoders.append(_encoder(base_id, partial(multi.encode, domain=None), multi.model, base_id, batch_size,
                                 mixed=multi.encode_mixed))
        for record in group:
            encoders.append(_encoder(record["ref"], partial(multi.encode, domain=record["ref"]), multi.model,
                                     base_id, batch_size, multi.adapters[record["ref"]]))
    if not records:  # an empty registry still serves the base model
        from cachetune.core.models import resolve_base_model, weights_sha256

        base = load_base({"id": EMBEDDED_MODEL_ID, "weights_sha256": weights_sha256(resolve_base_model(None))})
        encoders.append(_encoder(EMBEDDED_MODEL_ID, base.encode, base, EMBEDDED_MODEL_ID, batch_size))
    auto = None if backend == "onnx" else \
        _auto_encoder(reg, router, encoders, {base_id: group[0]["base_model"] for base_id, group in groups.items()})
    if auto is not None:
        encoders.append(auto)
    return ModelCatalog(encoders, _aliases(reg, records, list(groups) or [EMBEDDED_MODEL_ID]))
