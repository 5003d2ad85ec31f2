"""The plugin manager and one test per hook, with plugins registered in-process."""

from __future__ import annotations

import types

import click
import pytest

from cachetune import (
    Domain, EvaluationSet, FewShotExample, PromptTemplates, QueryRecord, SourceReader, TrainingSet, hookimpl,
)
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
    assert len(names) == 7
    for name in names:
        doc = getattr(hookspecs, name).__doc__
        assert doc and ":param" in doc and "Called" in doc, name


def test_hook_register_domains(pm):
    register_module(pm, plugin("toyplug", register_domains=lambda register: register(make_domain())), "toyplug")
    assert pm.get_domain("toy").description == "toy questions"
    assert pm.domains()["toy"].plugin == "toyplug"


def test_hook_register_domains_rejects_non_domain(pm):
    register_module(pm, plugin("bad", register_domains=lambda register: register("nope")), "bad")
    assert "programming" in pm.domains() and pm.get_plugin("bad") is None
    assert any("expected a cachetune.Domain" in e for e in pm.load_errors)


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


def test_hook_register_training_sets(pm):
    rows = [{"sentence1": "a b c", "sentence2": "b c d", "label": 1}]
    tset = TrainingSet("extra-train", lambda ctx: rows)
    register_module(pm, plugin("tr", register_training_sets=lambda register: register("medical", tset)), "tr")
    assert [s.name for s in pm.training_sets("medical")] == ["rqe-train", "medquad-llm", "extra-train"]
    assert [s.name for s in pm.training_sets("programming")] == ["conala-train"]


def test_hook_register_training_sets_rejects_a_non_training_set(pm):
    register_module(pm, plugin("bad-tr", register_training_sets=lambda register: register(
        "medical", EvaluationSet("x", "pairs", lambda ctx: []))), "bad-tr")
    assert [s.name for s in pm.training_sets("medical")] == ["rqe-train", "medquad-llm"]
    assert pm.get_plugin("bad-tr") is None
    assert any("bad-tr" in e and "expected a cachetune.TrainingSet" in e for e in pm.load_errors)


def test_hook_register_generators(pm):
    factory = lambda options: object()  # noqa: E731
    register_module(pm, plugin("gen", register_generators=lambda register: register("echo", factory)), "gen")
    assert pm.generators()["echo"].value.factory is factory
    assert pm.generators()["echo"].plugin == "gen"


def command_hook(command_name, text):
    """A ``register_commands`` hook adding command ``command_name``, which prints ``text``."""
    def register_commands(cli):
        @cli.command(name=command_name)
        def command():
            """A plugin's command."""
            click.echo(text)

    return register_commands


def test_hook_register_commands(pm, run_cli):
    register_module(pm, plugin("cmd", register_commands=command_hook("hello", "hello from a plugin")), "cmd")
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


def test_broken_hook_disables_the_plugin_with_one_warning(pm):
    def register_domains(register):
        raise RuntimeError("boom")

    register_module(pm, plugin("broken", register_domains=register_domains), "broken")
    assert "programming" in pm.domains()
    assert pm.get_plugin("broken") is None
    assert [e for e in pm.load_errors if "broken" in e] == [
        "plugin 'broken' (broken unknown) disabled: failed in register_domains: RuntimeError('boom')"]


# -- order: pluggy calls the hooks, so tryfirst / trylast place a plugin --------------------------

def ordered_plugin(name, hook_name, fn, **order):
    """A plugin whose one hook carries pluggy's ordering flags (tryfirst / trylast)."""
    module = types.ModuleType(name)
    fn.__name__ = hook_name
    setattr(module, hook_name, hookimpl(**order)(fn))
    return module


def test_register_domains_tryfirst_takes_a_builtin_name(pm):
    mine = make_domain("programming")
    register_module(pm, ordered_plugin("mine", "register_domains", lambda register: register(mine), tryfirst=True),
                    "mine")
    assert pm.get_domain("programming") is mine and pm.domains()["programming"].plugin == "mine"
    assert pm.get_plugin("programming") is None  # the built-in that lost its name is disabled
    assert "medical" in pm.domains()


def test_register_domains_without_tryfirst_a_plugin_cannot_take_a_builtin_name(pm):
    register_module(pm, plugin("dup-a", register_domains=lambda register: register(make_domain("programming"))),
                    "dup-a")
    assert pm.domains()["programming"].plugin == "programming"
    assert pm.get_plugin("dup-a") is None
    warnings = [e for e in pm.load_errors if "dup-a" in e]
    assert len(warnings) == 1
    assert "plugin 'dup-a' (dup-a unknown) disabled" in warnings[0]
    assert "'programming' is already registered by plugin 'programming' (cachetune " in warnings[0]


def test_register_source_readers_tryfirst_comes_first(pm):
    first = SourceReader("first", lambda s: True, lambda s, o: iter(()))
    later = SourceReader("later", lambda s: True, lambda s, o: iter(()))
    register_module(pm, ordered_plugin("r1", "register_source_readers", lambda register: register(first),
                                       tryfirst=True), "r1")
    # registered later: pluggy would call it first, were r1 not tryfirst
    register_module(pm, plugin("r2", register_source_readers=lambda register: register(later)), "r2")
    assert [r.name for r in pm.source_readers()] == ["first", "later"]


def test_register_source_readers_plain_order_is_lifo(pm):
    register_module(pm, plugin("r1", register_source_readers=lambda register: register(
        SourceReader("a", lambda s: True, lambda s, o: iter(())))), "r1")
    register_module(pm, plugin("r2", register_source_readers=lambda register: register(
        SourceReader("b", lambda s: True, lambda s, o: iter(())))), "r2")
    assert [r.name for r in pm.source_readers()] == ["b", "a"]


def test_register_prompt_templates_tryfirst_wins(pm):
    mine, theirs = PromptTemplates("mine", "p {n} {query}", "n"), PromptTemplates("theirs", "p {n} {query}", "n")
    register_module(pm, ordered_plugin("t1", "register_prompt_templates",
                                       lambda register: register("medical", mine), tryfirst=True), "t1")
    register_module(pm, plugin("t2", register_prompt_templates=lambda register: register("medical", theirs)), "t2")
    assert pm.prompt_templates("medical") is mine
    assert pm.get_plugin("t2") is None and any("'t2'" in e and "'t1'" in e for e in pm.load_errors)


def test_register_evaluation_sets_tryfirst_comes_first(pm):
    def eset(name):
        return EvaluationSet(name, "pairs", lambda ctx: [])

    register_module(pm, ordered_plugin("e1", "register_evaluation_sets",
                                       lambda register: register("medical", eset("first")), tryfirst=True), "e1")
    register_module(pm, plugin("e2", register_evaluation_sets=lambda register: register("medical", eset("later"))),
                    "e2")
    names = [s.name for s in pm.evaluation_sets("medical")]
    assert names.index("first") < names.index("later")


def test_register_evaluation_sets_clash_with_the_domain_disables_the_plugin(pm):
    own = pm.get_domain("medical").evaluation_sets[0].name
    register_module(pm, plugin("e3", register_evaluation_sets=lambda register: register(
        "medical", EvaluationSet(own, "pairs", lambda ctx: []))), "e3")
    assert [s.name for s in pm.evaluation_sets("medical")] == [s.name for s in pm.get_domain("medical").evaluation_sets]
    assert pm.get_plugin("e3") is None and any(f"'medical/{own}'" in e for e in pm.load_errors)


def test_register_training_sets_tryfirst_comes_first(pm):
    register_module(pm, ordered_plugin("t1", "register_training_sets",
                                       lambda register: register("programming", TrainingSet("first", lambda c: [])),
                                       tryfirst=True), "t1")
    register_module(pm, plugin("t2", register_training_sets=lambda register: register(
        "programming", TrainingSet("later", lambda c: []))), "t2")
    assert [s.name for s in pm.training_sets("programming")] == ["conala-train", "first", "later"]


def test_register_training_sets_clash_disables_the_plugin(pm):
    register_module(pm, ordered_plugin("t1", "register_training_sets",
                                       lambda register: register("programming", TrainingSet("mine", lambda c: [])),
                                       tryfirst=True), "t1")
    register_module(pm, plugin("t2", register_training_sets=lambda register: register(
        "programming", TrainingSet("mine", lambda c: None))), "t2")
    register_module(pm, plugin("t3", register_training_sets=lambda register: register(
        "programming", TrainingSet("conala-train", lambda c: None))), "t3")
    assert [s.name for s in pm.training_sets("programming")] == ["conala-train", "mine"]
    assert pm.get_plugin("t2") is None and any("'t2'" in e and "'t1'" in e for e in pm.load_errors)
    assert pm.get_plugin("t3") is None and any("'programming/conala-train'" in e for e in pm.load_errors)


def test_register_generators_tryfirst_takes_a_builtin_backend(pm):
    factory = lambda options: object()  # noqa: E731
    register_module(pm, ordered_plugin("myllama", "register_generators",
                                       lambda register: register("llama-cpp", factory), tryfirst=True), "myllama")
    assert pm.generators()["llama-cpp"].value.factory is factory
    assert pm.get_plugin("llama-cpp") is None and "openai" in pm.generators()


def test_register_generators_conflict_keeps_the_builtin(pm):
    register_module(pm, plugin("g1", register_generators=lambda register: register("openai", lambda o: 1)), "g1")
    assert pm.generators()["openai"].plugin == "openai"
    assert pm.get_plugin("g1") is None
    assert len([e for e in pm.load_errors if "'g1'" in e and "'openai'" in e]) == 1


def test_register_commands_tryfirst_wins(pm, run_cli):
    register_module(pm, ordered_plugin("c1", "register_commands", command_hook("hello", "from c1"), tryfirst=True),
                    "c1")
    register_module(pm, plugin("c2", register_commands=command_hook("hello", "from c2")), "c2")
    result = run_cli(["hello"], pm=pm)
    assert result.exit_code == 0 and "from c1" in result.stdout
    assert pm.get_plugin("c2") is None and "command 'hello' is added by plugin 'c1'" in result.stderr


def test_register_commands_cannot_replace_a_builtin_command(pm, run_cli):
    register_module(pm, plugin("c3", register_commands=command_hook("domains", "hijacked")), "c3")
    result = run_cli(["domains"], pm=pm)
    assert result.exit_code == 0 and "hijacked" not in result.stdout and "programming" in result.stdout
    assert "command 'domains' is a built-in command" in result.stderr


def test_hook_wrapper_and_monitoring_see_every_call(pm):
    seen = []

    @hookimpl(wrapper=True)
    def register_generators(register):
        seen.append("before")
        result = yield
        seen.append("after")
        return result

    wrapper = types.ModuleType("wrapper")
    wrapper.register_generators = register_generators
    register_module(pm, wrapper, "wrapper")
    traced = []
    undo = pm.add_hookcall_monitoring(lambda name, impls, kwargs: traced.append(name), lambda *a: None)
    try:
        assert "openai" in pm.generators()
    finally:
        undo()
    # a registration hook is called plugin by plugin: once per built-in backend plugin
    assert seen == ["before", "after"] * 4
    assert traced.count("register_generators") == 4


def test_conflicting_fixture_plugin_is_disabled_and_the_rest_works(pm, run_cli):
    cooking = pytest.importorskip("cachetune_cooking")
    register_module(pm, cooking, "cooking")
    copy = types.ModuleType("cooking_copy")
    copy.register_domains = hookimpl(cooking.register_domains)
    register_module(pm, copy, "cooking-copy")
    result = run_cli(["domains"], pm=pm)
    assert result.exit_code == 0
    assert {"cooking", "programming", "medical"} <= {line.split()[0] for line in result.stdout.splitlines()[2:]}
    warnings = [line for line in result.stderr.splitlines() if "disabled" in line]
    assert len(warnings) == 1 and "cooking-copy" in warnings[0] and "cachetune-cooking" in warnings[0]
