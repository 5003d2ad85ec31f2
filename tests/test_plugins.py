"""The plugin manager and one test per hook, with plugins registered in-process."""

from __future__ import annotations

import types

import click
import pytest

from cachetune import Domain, EvaluationSet, FewShotExample, PromptTemplates, QueryRecord, SourceReader, hookimpl
from cachetune.core import hookspecs
from cachetune.core.errors import CachetuneError
from cachetune.core.plugin_manager import BUILTIN_PLUGINS, get_plugin_manager, register_module

PROMPTS = PromptTemplates("sys", "para {n} {query}", "neg {n} {query}", (FewShotExample("q", ["p"], ["n"]),))


def make_domain(name="toy", **kw):
    return Domain(name=name, description=f"{name} questions", default_source="unused.txt", prompts=PROMPTS, **kw)


def plugin(name, **hooks):
    """A plugin object with the given hook functions marked as hookimpls."""
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        fn.__name__ = hook_name
        setattr(module, hook_name, hookimpl(fn))
    return module


@pytest.fixture
def pm():
    return get_plugin_manager(load_entrypoints=False)


def test_builtins_registered_under_entry_point_names(pm):
    assert set(BUILTIN_PLUGINS) <= {name for name, _ in pm.list_name_plugin()}
    assert {"programming", "medical"} <= set(pm.domains())
    info = pm.domain_plugin("programming")
    assert info.package == "cachetune" and info.builtin


def test_every_hookspec_is_documented():
    names = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert len(names) == 6
    for name in names:
        doc = getattr(hookspecs, name).__doc__
        assert doc and ":param" in doc and "Called" in doc, name


def test_hook_register_domains(pm):
    register_module(pm, plugin("toyplug", register_domains=lambda register: register(make_domain())), "toyplug")
    assert pm.get_domain("toy").description == "toy questions"
    assert pm.domains()["toy"].plugin == "toyplug"


def test_hook_register_domains_duplicate_names_both_plugins(pm):
    register_module(pm, plugin("a", register_domains=lambda register: register(make_domain("programming"))), "dup-a")
    with pytest.raises(CachetuneError) as err:
        pm.domains()
    assert "'programming'" in str(err.value) and "programming" in str(err.value) and "dup-a" in str(err.value)


def test_hook_register_domains_rejects_non_domain(pm):
    register_module(pm, plugin("bad", register_domains=lambda register: register("nope")), "bad")
    with pytest.raises(CachetuneError, match="expected a cachetune.Domain"):
        pm.domains()


def test_hook_register_source_readers(pm, tmp_path):
    def read(source, options):
        for i, line in enumerate(open(source, encoding="utf-8"), 1):
            if line.startswith("Q:"):
                yield QueryRecord(line[2:], f"{source}:{i}")

    reader = SourceReader("qfile", lambda s: s.endswith(".q"), read)
    register_module(pm, plugin("qr", register_source_readers=lambda register: register(reader)), "qr")
    assert [r.name for r in pm.source_readers()] == ["qfile"]

    from cachetune.core.data.prepare import prepare

    src = tmp_path / "x.q"
    src.write_text("Q: how do I sort a list by a key\nnoise\nQ: how do I read a csv file\n", encoding="utf-8")
    summary = prepare(pm.get_domain("programming"), tmp_path / "out", source=str(src), readers=pm.source_readers(),
                      holdout=0.0)
    assert summary["counts"]["read"] == 2 and summary["counts"]["kept"] == 2


def test_hook_register_prompt_templates(pm):
    better = PromptTemplates("better", "p {n} {query}", "n {n} {query}")
    register_module(pm, plugin("pt", register_prompt_templates=lambda register: register("medical", better)), "pt")
    assert pm.prompt_templates("medical") is better
    assert pm.prompt_templates("programming") is pm.get_domain("programming").prompts


def test_hook_register_evaluation_sets(pm):
    rows = [{"sentence1": "a", "sentence2": "b", "label": 1}]
    eset = EvaluationSet("extra-pairs", "pairs", lambda ctx: rows)
    register_module(pm, plugin("ev", register_evaluation_sets=lambda register: register("medical", eset)), "ev")
    names = [s.name for s in pm.evaluation_sets("medical")]
    assert "extra-pairs" in names
    assert "extra-pairs" not in [s.name for s in pm.evaluation_sets("programming")]


def test_hook_register_generators(pm):
    factory = lambda options: object()  # noqa: E731
    register_module(pm, plugin("gen", register_generators=lambda register: register("echo", factory)), "gen")
    assert pm.generators()["echo"].value is factory
    assert pm.generators()["echo"].plugin == "gen"


def test_hook_register_generators_duplicate(pm):
    register_module(pm, plugin("g1", register_generators=lambda register: register("same", lambda o: 1)), "g1")
    register_module(pm, plugin("g2", register_generators=lambda register: register("same", lambda o: 2)), "g2")
    with pytest.raises(CachetuneError, match="g1.*g2|g2.*g1"):
        pm.generators()


def test_hook_register_commands(pm, run_cli):
    def register_commands(cli):
        @cli.command()
        def hello():
            """Say hello."""
            click.echo("hello from a plugin")

    register_module(pm, plugin("cmd", register_commands=register_commands), "cmd")
    result = run_cli(["hello"], pm=pm)
    assert result.exit_code == 0 and "hello from a plugin" in result.stdout


def test_plugin_command_exit_code_reaches_the_shell(pm, run_cli):
    def register_commands(cli):
        @cli.command()
        @click.pass_context
        def check(ctx):
            """Exit 3 like a failed check."""
            click.echo("3 problems")
            ctx.exit(3)

        @cli.command()
        def value():
            """Return a non-integer value."""
            return {"not": "an exit code"}

    register_module(pm, plugin("cmd", register_commands=register_commands), "cmd")
    assert run_cli(["check"], pm=pm).exit_code == 3
    assert run_cli(["value"], pm=pm).exit_code == 0


def test_blocked_plugins(monkeypatch):
    monkeypatch.setenv("CACHETUNE_DISABLE_PLUGINS", "medical, vllm")
    pm = get_plugin_manager(load_entrypoints=False)
    assert "medical" not in pm.domains() and "programming" in pm.domains()
    assert pm.get_plugin("vllm") is None
    pm2 = get_plugin_manager(load_entrypoints=False, blocked=["programming"])
    assert "programming" not in pm2.domains()


def test_broken_hook_names_the_plugin(pm):
    def register_domains(register):
        raise RuntimeError("boom")

    register_module(pm, plugin("broken", register_domains=register_domains), "broken")
    with pytest.raises(CachetuneError, match="plugin 'broken' failed in register_domains"):
        pm.domains()
