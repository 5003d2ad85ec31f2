"""The hooks a cachetune plugin can implement.

Every hook is a registration hook: cachetune calls it through pluggy, once per plugin, with a
``register`` callback, and the plugin calls ``register(...)`` for each thing it provides. The
order is pluggy's (``tryfirst``/``trylast``; the built-ins are ``tryfirst``); the first
registration of a name keeps it, and a plugin that registers a name already taken -- or whose
hook raises -- is disabled with one warning naming both plugins' packages (see
:mod:`cachetune.core.plugin_manager`). A hook may be called again after a plugin is disabled,
so it should only register. Nothing here imports torch: the types below are only imported for
type checkers.
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
        PromptTemplates,
        SourceReader,
        TrainingSet,
    )

PROJECT_NAME = "cachetune"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_domains(register: Callable[["Domain"], None]) -> None:
    """Register the domains this plugin provides.

    :param register: call ``register(domain)`` once per :class:`cachetune.Domain`.
        A domain bundles its name, description, default base model, default query
        source, readers, prompt templates, evaluation sets and its rules for generated
        text (``answer_pattern``, ``filler_words``).

    Called when the plugin manager's registrations are first collected (building the CLI,
    ``--domain`` choices, the pipeline). Returns nothing. A plugin registering a domain
    name already taken is disabled with a warning naming both.
    """


@hookspec
def register_source_readers(register: Callable[["SourceReader"], None]) -> None:
    """Register readers of query sources (dataset loading).

    :param register: call ``register(reader)`` with a :class:`cachetune.SourceReader`:
        a name, a ``detect(source) -> bool`` for sources it understands, and a
        ``read(source, options) -> Iterator[QueryRecord]``.

    Called when ``prepare`` resolves ``--source``; the domain's own ``load_queries``
    is tried first, then readers registered here in pluggy's call order, then the
    generic JSONL/CSV/TXT readers. Returns nothing.
    """


@hookspec
def register_prompt_templates(register: Callable[[str, "PromptTemplates"], None]) -> None:
    """Register prompt templates for a domain, for domains this plugin does not own.

    :param register: call ``register(domain_name, templates)`` with a
        :class:`cachetune.PromptTemplates` (system text, paraphrase and hard-negative
        instructions, few-shot examples).

    Called by ``generate``. Templates registered here replace the domain's own
    ``prompts`` (so a plugin can ship better prompts for ``programming``); of two plugins
    registering templates for the same domain the first in pluggy's order keeps them and the
    other is disabled with a warning. Returns nothing.
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
def register_training_sets(register: Callable[[str, "TrainingSet"], None]) -> None:
    """Register extra training pairs for a domain (beyond the domain's own ``training_sets``).

    :param register: call ``register(domain_name, training_set)``. A
        :class:`cachetune.TrainingSet` has a name and ``load(context: TrainingContext) ->
        list[dict] | None``: rows ``{"sentence1", "sentence2", "label", "group"?}`` (label 1: the
        same question, label 0: a hard negative for ``sentence1``), or ``None`` when its data is
        not available (the set is skipped with a note). The rows must be disjoint from the
        domain's evaluation pairs; cachetune drops any that share a text or a group with one.
        A set whose texts a model wrote names it (``TrainingSet(generator=...)``): its label-0
        partners are then treated as generated negatives (dropped when the base model ranks
        them above the positive).

    Called by ``train`` and ``run`` when they assemble the training file: every set registered
    for the trained domain is used unless ``--training-sets`` names others; pairs become
    triplets with negatives mined from the domain's query pool. Of two sets with one name for
    a domain the first in pluggy's order keeps it and the other plugin is disabled with a
    warning. Returns nothing.
    """


@hookspec
def register_generators(register: Callable[..., None]) -> None:
    """Register LLM generator backends for triplet generation.

    :param register: call ``register(name, factory, options=())``; ``name`` is what users pass
        to ``cachetune generate --backend``; ``options`` is a sequence of
        :class:`cachetune.BackendOption` (name, type, default, help) the backend takes, set with
        ``-o NAME VALUE`` or the run config's ``generate.options`` and listed by ``cachetune
        plugins``. ``factory(options)`` gets a dict of ``model``, ``temperature``,
        ``max_tokens``, ``seed`` and every declared option (checked and converted, defaults
        filled) and returns a :class:`cachetune.core.generate.prompting.Generator`.

    Called when registrations are collected; ``generate`` builds the chosen backend. The
    factory must import heavy libraries (vllm, llama_cpp, transformers) inside itself, not at
    module import. Returns nothing.
    """


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add click commands to the ``cachetune`` command group.

    :param cli: the root click group; call ``cli.command()`` or ``cli.add_command``.

    Called once while :func:`cachetune.core.cli.make_cli` builds the CLI. A plugin whose
    command replaces a built-in or another plugin's command is disabled with a warning.
    Returns nothing.
    """
