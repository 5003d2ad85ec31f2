"""The hooks a cachetune plugin can implement.

Every hook is a registration hook: cachetune calls it once per plugin manager with a
``register`` callback, and the plugin calls ``register(...)`` for each thing it provides.
Registering the same name twice is an error that names both plugins (see
:mod:`cachetune.core.plugin_manager`). Nothing here imports torch: the types below are only
imported for type checkers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click

    from cachetune.core.types import (
        Domain,
        EvaluationSet,
        EvaluationContext,
        GeneratorFactory,
        PromptTemplates,
        SourceReader,
    )

PROJECT_NAME = "cachetune"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_domains(register: Callable[["Domain"], None]) -> None:
    """Register the domains this plugin provides.

    :param register: call ``register(domain)`` once per :class:`cachetune.Domain`.
        A domain bundles its name, description, default base model, default query
        source, query loader, prompt templates and evaluation sets.

    Called once when the plugin manager's domains are first listed (``cachetune
    domains``, ``--domain`` choices, the pipeline). Returns nothing. Two plugins
    registering the same domain name is an error naming both.
    """


@hookspec
def register_source_readers(register: Callable[["SourceReader"], None]) -> None:
    """Register readers of query sources (dataset loading).

    :param register: call ``register(reader)`` with a :class:`cachetune.SourceReader`:
        a name, a ``detect(source) -> bool`` for sources it understands, and a
        ``read(source, options) -> Iterator[QueryRecord]``.

    Called when ``prepare`` resolves ``--source``; the domain's own ``load_queries``
    is tried first, then readers registered here in registration order, then the
    generic JSONL/CSV/TXT readers. Returns nothing.
    """


@hookspec
def register_prompt_templates(register: Callable[[str, "PromptTemplates"], None]) -> None:
    """Register prompt templates for a domain, for domains this plugin does not own.

    :param register: call ``register(domain_name, templates)`` with a
        :class:`cachetune.PromptTemplates` (system text, paraphrase and hard-negative
        instructions, few-shot examples).

    Called by ``generate``. Templates registered here replace the domain's own
    ``prompts`` (so a plugin can ship better prompts for ``programming``); two plugins
    registering templates for the same domain is an error naming both. Returns nothing.
    """


@hookspec
def register_evaluation_sets(register: Callable[[str, "EvaluationSet"], None]) -> None:
    """Register extra evaluation sets for a domain (beyond the domain's own).

    :param register: call ``register(domain_name, evaluation_set)``. An
        :class:`cachetune.EvaluationSet` has a name, a kind (``"pairs"`` or
        ``"triplets"``) and ``load(context: EvaluationContext) -> list[dict] | None``;
        returning ``None`` means the set's data is not available and it is skipped.

    Called by ``evaluate``; every set registered for the evaluated domain runs by
    default. Returns nothing.
    """


@hookspec
def register_generators(register: Callable[[str, "GeneratorFactory"], None]) -> None:
    """Register LLM generator backends for triplet generation.

    :param register: call ``register(name, factory)``; ``factory(options)`` returns a
        :class:`cachetune.core.generate.prompting.Generator`. ``name`` is what users pass to
        ``cachetune generate --backend``.

    Called by ``generate`` to list and build backends. The factory must import heavy
    libraries (vllm, llama_cpp, transformers) inside itself, not at module import.
    Returns nothing.
    """


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add click commands to the ``cachetune`` command group.

    :param cli: the root click group; call ``cli.command()`` or ``cli.add_command``.

    Called once while :func:`cachetune.core.cli.make_cli` builds the CLI. Returns nothing.
    """
