"""Routers on loaded models: read one from the registry, attach it to a :class:`MultiAdapterModel`,
and encode with ``domain="auto"``.

A router is attached only when it was trained on the same base model (id and weights) and for
exactly the adapter versions loaded: its confidence centroids live in those adapters' spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from cachetune.core.errors import CachetuneError
from cachetune.core.routing.router import RoutedEmbeddings, Router, routed_encode


def router_mismatch(router: Router, loaded_refs: Dict[str, Optional[str]], base_entry: dict) -> Optional[str]:
    """Why ``router`` cannot route over these adapters (None when it can).

    ``loaded_refs`` maps each domain to the adapter ``name@version`` loaded for it; ``base_entry``
    is the loaded base model's ``{"id", "weights_sha256"}``.
    """
    if (router.base_model.get("id"), router.base_model.get("weights_sha256")) != \
            (base_entry.get("id"), base_entry.get("weights_sha256")):
        return (f"router {router.ref} was trained on base model '{router.base_model.get('id')}' "
                f"(weights {str(router.base_model.get('weights_sha256'))[:12]}), not the one loaded")
    for domain in router.domains:
        loaded = loaded_refs.get(domain)
        if loaded is None:
            return f"router {router.ref} routes to '{domain}', which is not loaded"
        if loaded != router.adapters[domain]:
            return (f"router {router.ref} was trained for {router.adapters[domain]}, but {loaded} is loaded: "
                    f"retrain it with `cachetune router train`")
    return None


def _multi_mismatch(router: Router, multi) -> Optional[str]:
    if sorted(router.domains) != sorted(multi.domains):
        return f"router {router.ref} routes to {', '.join(router.domains)}; loaded: {', '.join(multi.domains)}"
    return router_mismatch(router, {d: a.ref for d, a in multi.adapters.items()}, multi.base_model_entry)


def attach_router(multi, router: Router) -> None:
    """Route ``multi``'s ``domain="auto"`` with ``router``; an error if they do not fit."""
    problem = _multi_mismatch(router, multi)
    if problem:
        raise CachetuneError(problem)
    multi.router, multi.router_problem = router, None


def read_router(registry, router: Optional[str] = None, domains=None) -> Router:
    """``router`` (``name[@version]`` or a router file), else the registry's router for ``domains``
    (None: its only router)."""
    from cachetune.registry.routers import RouterStore, read_router_file

    if router and (str(router).endswith(".json") or Path(router).is_file()):
        document, ref, path = read_router_file(router), str(router), Path(router)
    else:
        store = RouterStore(registry)
        document, ref, path = store.load(router) if router else store.find(domains)
    return Router.from_json(document, where=path, ref=ref)


def attach_registry_router(multi, registry, router: Optional[str] = None) -> None:
    """Attach ``router`` (or the registry's router for ``multi``'s domains) if it fits.

    A named router that does not fit is an error; a default one that does not (or none at all)
    only leaves the reason for ``domain="auto"`` to report.
    """
    try:
        found = read_router(registry, router, multi.domains)
    except CachetuneError as exc:
        if router:
            raise
        multi.router_problem = exc.message
        return
    problem = _multi_mismatch(found, multi)
    if problem and router:
        raise CachetuneError(problem)
    multi.router, multi.router_problem = (None, problem) if problem else (found, None)


def load_routed(registry=None, router: Optional[str] = None, device: Optional[str] = None):
    """A :class:`MultiAdapterModel` with a router's domains, their adapters and the router attached.

    ``router`` is ``name[@version]`` or a router file; None picks the registry's only router. The
    adapters loaded are the versions the router was trained for.
    """
    from cachetune.core.serving.models import load_shared, open_registry

    reg = open_registry(registry)
    found = read_router(reg, router)
    multi = load_shared({d: reg.get(found.adapters[d]) for d in found.domains}, reg, device=device)
    attach_router(multi, found)
    return multi


def _require_router(multi) -> Router:
    if multi.router is None:
        raise CachetuneError(f"domain 'auto' needs a router: {multi.router_problem or 'none is attached'}")
    return multi.router


def encode_routed(multi, texts, **kwargs) -> RoutedEmbeddings:
    """``multi.encode(texts, domain="auto")``: each text through its domain's adapter (or the base model)."""
    router = _require_router(multi)
    if kwargs.get("convert_to_tensor"):
        raise CachetuneError("domain 'auto' returns numpy rows: drop convert_to_tensor")
    kwargs = {**kwargs, "convert_to_numpy": True}
    single = isinstance(texts, str)
    batch = [texts] if single else list(texts)
    encoders = {d: (lambda part, d=d: multi.encode(part, domain=d, **kwargs)) for d in router.domains}
    routed = routed_encode(router, multi.model, encoders, lambda part: multi.encode(part, domain=None, **kwargs),
                           batch, {d: multi.threshold(d) for d in router.domains},
                           mixed_encode=lambda part, domains: multi.encode_mixed(part, domains, **kwargs))
    if single:
        routed.embeddings = routed.embeddings[0]
    return routed


@dataclass(frozen=True)
class RoutedSimilarity:
    """``similarity(a, b, domain="auto")``: the cosine under ``a``'s route and each text's domain.

    ``hit`` is False whenever the two texts route to different domains: a cache that keeps each
    domain's entries apart never compares them.
    """

    cosine: float
    domains: Tuple[Optional[str], Optional[str]]
    threshold: Optional[float]

    @property
    def same_domain(self) -> bool:
        return self.domains[0] == self.domains[1]

    @property
    def hit(self) -> Optional[bool]:
        if not self.same_domain:
            return False
        return None if self.threshold is None else self.cosine >= self.threshold


def similarity_routed(multi, a: str, b: str) -> RoutedSimilarity:
    routed = encode_routed(multi, [a, b], normalize_embeddings=True)
    first, second = routed.domains
    vectors = routed.embeddings
    if first != second:  # b in a's space, so the cosine still means something
        vectors = np.stack([vectors[0], multi.encode([b], domain=first, normalize_embeddings=True)[0]])
    return RoutedSimilarity(float(vectors[0] @ vectors[1]), (first, second), routed.thresholds[0])


__all__ = ["RoutedSimilarity", "attach_router", "encode_routed", "load_routed", "similarity_routed"]
