"""cachetune: domain-specific LoRA adapters for the embedding model of a semantic cache.

Public API: :data:`hookimpl` for plugins, the :class:`Domain` family of types, and
:func:`load_model` / :func:`load_multi` / :func:`load_routed` to serve adapters. Heavy
libraries (torch, transformers) are imported only when a model is loaded.
"""

from cachetune.core.types import (
    BackendOption,
    Domain,
    EvaluationContext,
    EvaluationSet,
    FewShotExample,
    PromptTemplates,
    QueryRecord,
    SourceReader,
    TrainingContext,
    TrainingSet,
)
from cachetune.core.errors import CachetuneError
from cachetune.core.hookspecs import hookimpl

__version__ = "0.1.0"


def load_model(domain=None, registry=None, merged=False, **kwargs):
    """A SentenceTransformer that encodes with ``domain``'s adapter (see cachetune.core.serving.models)."""
    from cachetune.core.serving.models import load_model as _load_model

    return _load_model(domain=domain, registry=registry, merged=merged, **kwargs)


def load_multi(domains, registry=None, **kwargs):
    """One base model with several domain adapters; ``encode(texts, domain=...)`` switches them."""
    from cachetune.core.serving.models import load_multi as _load_multi

    return _load_multi(domains=domains, registry=registry, **kwargs)


def load_routed(registry=None, router=None, **kwargs):
    """A router's domains on one base model; ``encode(texts, domain="auto")`` picks each text's adapter."""
    from cachetune.core.serving.routed import load_routed as _load_routed

    return _load_routed(registry=registry, router=router, **kwargs)


__all__ = [
    "BackendOption",
    "CachetuneError",
    "Domain",
    "EvaluationContext",
    "EvaluationSet",
    "FewShotExample",
    "PromptTemplates",
    "QueryRecord",
    "SourceReader",
    "TrainingContext",
    "TrainingSet",
    "hookimpl",
    "load_model",
    "load_multi",
    "load_routed",
    "__version__",
]
