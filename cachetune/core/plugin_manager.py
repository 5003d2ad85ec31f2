"""Builds the plugin manager and collects what plugins register.

Built-in plugins are registered under their entry-point names first, so loading the
``cachetune`` entry-point group afterwards skips them instead of registering the same
module twice; third-party plugins then load one by one, and a plugin that fails to import
is recorded (one line) instead of taking the CLI down.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import pluggy

from cachetune.core import hookspecs
from cachetune.core.types import (
    BackendOption, Domain, EvaluationSet, GeneratorBackend, PromptTemplates, SourceReader, TrainingSet,
)
from cachetune.core.errors import CachetuneError

ENTRY_POINT_GROUP = "cachetune"
DISABLE_ENV = "CACHETUNE_DISABLE_PLUGINS"

# Entry-point name -> module. Kept in step with setup.cfg's ``cachetune`` group.
BUILTIN_PLUGINS: Dict[str, str] = {
    "programming": "cachetune.domains.programming",
    "medical": "cachetune.domains.medical",
    "llama-cpp": "cachetune.plugins.llama_cpp_generator",
    "openai": "cachetune.plugins.openai_generator",
    "vllm": "cachetune.plugins.vllm_generator",
    "transformers": "cachetune.plugins.transformers_generator",
}


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin comes from."""

    name: str
    package: str
    version: str
    builtin: bool


@dataclass(frozen=True)
class Registered:
    """Something a plugin registered, with the plugin that registered it."""

    name: str
    value: object
    plugin: str


class _Disable(Exception):
    """Raised inside a collection: plugin ``plugin`` must be disabled for ``reason``."""

    def __init__(self, plugin: str, reason: str):
        super().__init__(reason)
        self.plugin, self.reason = plugin, reason


class CachetunePluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers plugin origins, load failures and who registered what.

    Registration hooks are called through pluggy, one plugin at a time, in pluggy's call order:
    for each plugin :meth:`pluggy.PluginManager.subset_hook_caller` builds a caller without the
    other plugins' implementations (hook wrappers stay), so ``tryfirst``/``trylast``, wrappers,
    ``add_hookcall_monitoring`` and ``enable_tracing`` all apply, and the ``register`` callback
    handed to that call knows which plugin it belongs to. Pluggy calls ``tryfirst`` hooks first,
    then the others, later-registered plugins first within each group; the built-ins mark their
    hooks ``tryfirst``, so they come before installed plugins unless one marks its hook
    ``tryfirst`` too (it was registered later). The first registration of a name keeps it. A plugin that registers a name already taken, or
    whose hook fails, is disabled as a whole (every hook, so nothing half-registered stays) with
    one warning in :attr:`load_errors`, and the registrations are collected again without it.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.load_errors: List[str] = []
        self.plugin_info: Dict[str, PluginInfo] = {}
        self._cache: Dict[str, object] = {}

    # -- calling hooks ----------------------------------------------------------------
    def call_per_plugin(self, hook_name: str, make_kwargs: Callable[[str], dict],
                        after: Optional[Callable[[str], None]] = None) -> None:
        """Call ``hook_name`` through pluggy once per implementing plugin, in pluggy's call order.

        ``make_kwargs(plugin_name)`` builds that call's arguments (its ``register`` callback);
        ``after(plugin_name)`` checks what the call did. An exception from a plugin's hook becomes
        :class:`_Disable` naming the plugin.
        """
        impls = getattr(self.hook, hook_name).get_hookimpls()
        plain = [impl for impl in impls if not (impl.hookwrapper or impl.wrapper)]
        for impl in reversed(plain):  # pluggy calls the last of get_hookimpls() first
            others = [other.plugin for other in plain if other.plugin is not impl.plugin]
            caller = self.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                caller(**make_kwargs(impl.plugin_name))
            except _Disable:
                raise
            except Exception as exc:  # a broken plugin names itself, not a traceback
                raise _Disable(impl.plugin_name, f"failed in {hook_name}: {exc!r}") from exc
            if after is not None:
                after(impl.plugin_name)

    def describe(self, plugin_name: str) -> str:
        """``'name' (package version)`` for warnings."""
        info = self.plugin_info.get(plugin_name)
        return f"plugin '{plugin_name}' ({info.package} {info.version})" if info else f"plugin '{plugin_name}'"

    def forget_registrations(self) -> None:
        """Collect registrations again on next use (after a plugin was added or removed)."""
        self._cache.clear()

    def disable(self, plugin_name: str, reason: str) -> None:
        """Unregister (and block) a plugin, with one warning line, and forget what was collected."""
        self.load_errors.append(f"{self.describe(plugin_name)} disabled: {reason}")
        self.set_blocked(plugin_name)
        self.forget_registrations()

    def _collect(self, hook_name: str, accept: Callable[..., Tuple[str, object]]) -> Dict[str, Registered]:
        """Registrations of ``hook_name`` by name; ``accept(*args)`` checks one and returns (name, value)."""
        found: Dict[str, Registered] = {}

        def make_kwargs(plugin_name: str) -> dict:
            def register(*args):
                name, value = accept(*args)
                if name in found:
                    raise _Disable(plugin_name, f"{hook_name}: '{name}' is already registered by "
                                                f"{self.describe(found[name].plugin)}")
                found[name] = Registered(name, value, plugin_name)

            return {"register": register}

        self.call_per_plugin(hook_name, make_kwargs)
        return found

    def _cached(self, hook_name: str, accept) -> Dict[str, Registered]:
        """:meth:`_collect` once per manager, disabling conflicting or broken plugins until none is left."""
        while hook_name not in self._cache:
            try:
                self._cache[hook_name] = self._collect(hook_name, accept)
            except _Disable as stop:
                self.disable(stop.plugin, stop.reason)
        return self._cache[hook_name]  # type: ignore[return-value]

    def check_registrations(self) -> None:
        """Collect every registration hook now, so conflicts are found (and warned about) up front."""
        hooks = ("register_domains", "register_source_readers", "register_prompt_templates",
                 "register_evaluation_sets", "register_training_sets", "register_generators")
        while True:
            self.source_readers(), self.generators(), self._cached("register_prompt_templates", _accept_templates)
            for name in list(self.domains()):
                self.evaluation_sets(name)
                self.training_sets(name)
            if all(hook in self._cache for hook in hooks):
                return  # else a plugin was disabled on the way (that clears the cache): again

    # -- what plugins registered -------------------------------------------------------
    def domains(self) -> Dict[str, Registered]:
        """Registered domains by name (``Registered.value`` is the :class:`Domain`)."""
        return self._cached("register_domains", _accept_domain)

    def get_domain(self, name: str) -> Domain:
        domains = self.domains()
        if name not in domains:
            known = ", ".join(sorted(domains)) or "none"
            raise CachetuneError(f"unknown domain '{name}' (registered: {known})")
        return domains[name].value  # type: ignore[return-value]

    def domain_plugin(self, name: str) -> PluginInfo:
        """The plugin (package and version) that registered domain ``name``."""
        plugin = self.domains()[name].plugin
        return self.plugin_info.get(plugin, PluginInfo(plugin, "unknown", "unknown", False))

    def source_readers(self) -> List[SourceReader]:
        """Plugin readers in pluggy's call order (``prepare`` tries them in this order)."""
        readers = self._cached("register_source_readers", lambda reader: (reader.name, reader))
        return [r.value for r in readers.values()]  # type: ignore[misc]

    def prompt_templates(self, domain: str) -> PromptTemplates:
        """A plugin's override for ``domain``'s prompts, else the domain's own."""
        overrides = self._cached("register_prompt_templates", _accept_templates)
        if domain in overrides:
            return overrides[domain].value  # type: ignore[return-value]
        return self.get_domain(domain).prompts

    def evaluation_sets(self, domain: str) -> List[EvaluationSet]:
        """The domain's own evaluation sets, then those other plugins registered for it."""
        return self._domain_sets("register_evaluation_sets", domain, "evaluation_sets", EvaluationSet)

    def training_sets(self, domain: str) -> List[TrainingSet]:
        """The domain's own training sets, then those other plugins registered for it."""
        return self._domain_sets("register_training_sets", domain, "training_sets", TrainingSet)

    def _domain_sets(self, hook_name: str, domain: str, own_field: str, kind: type) -> list:
        """``domain.<own_field>`` then the ``(domain, set)`` registrations of ``hook_name`` for it;
        a plugin registering a name the domain defines itself is disabled."""

        def accept(domain_name: str, item) -> Tuple[str, tuple]:
            if not isinstance(item, kind):
                raise CachetuneError(f"{hook_name}: expected a cachetune.{kind.__name__}, got {type(item).__name__}")
            return f"{domain_name}/{item.name}", (domain_name, item)

        while True:
            extra = self._cached(hook_name, accept)
            sets = list(getattr(self.get_domain(domain), own_field))
            own = {s.name for s in sets}
            clash = next((reg for reg in extra.values() if reg.value[0] == domain and reg.value[1].name in own), None)
            if clash is None:
                return sets + [reg.value[1] for reg in extra.values() if reg.value[0] == domain]
            self.disable(clash.plugin, f"{hook_name}: '{clash.name}' is already defined by domain "
                                       f"'{domain}' ({self.describe(self.domains()[domain].plugin)})")

    def generators(self) -> Dict[str, Registered]:
        """Generator backends by name (``Registered.value`` is a :class:`GeneratorBackend`)."""
        return self._cached("register_generators", _accept_generator)

    def add_commands(self, cli) -> None:
        """Call ``register_commands`` per plugin; a plugin that replaces an existing command is disabled."""
        while True:
            original = dict(cli.commands)
            owners: Dict[str, Optional[str]] = {name: None for name in original}  # None: a built-in command
            before: dict = {}

            def make_kwargs(plugin_name: str) -> dict:
                before.clear()
                before.update(cli.commands)
                return {"cli": cli}

            def after(plugin_name: str) -> None:
                for name, command in before.items():
                    if cli.commands.get(name) is not command:
                        owner = "a built-in command" if owners[name] is None else \
                            f"added by {self.describe(owners[name])}"
                        raise _Disable(plugin_name, f"register_commands: command '{name}' is {owner}")
                owners.update({name: plugin_name for name in cli.commands if name not in before})

            try:
                self.call_per_plugin("register_commands", make_kwargs, after)
                return
            except _Disable as stop:
                cli.commands.clear()
                cli.commands.update(original)
                self.disable(stop.plugin, stop.reason)

    def hooks_of(self, plugin_name: str) -> List[str]:
        plugin = self.get_plugin(plugin_name)
        return sorted(h.name for h in (self.get_hookcallers(plugin) or []))


def _accept_domain(domain) -> Tuple[str, Domain]:
    if not isinstance(domain, Domain):
        raise CachetuneError(f"register_domains: expected a cachetune.Domain, got {type(domain).__name__}")
    if domain.answer_pattern:
        try:
            re.compile(domain.answer_pattern)
        except re.error as exc:
            raise CachetuneError(f"domain '{domain.name}': answer_pattern is not a regular expression: {exc}") from None
    return domain.name, domain


def _accept_templates(domain_name: str, templates: PromptTemplates) -> Tuple[str, PromptTemplates]:
    return domain_name, templates


def _accept_generator(name: str, factory, options: Sequence[BackendOption] = ()) -> Tuple[str, GeneratorBackend]:
    backend = GeneratorBackend(name, factory, tuple(options))
    backend.check()
    return name, backend


def _blocked_from_env() -> Tuple[str, ...]:
    raw = os.environ.get(DISABLE_ENV, "")
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _dist_of(module_name: str) -> Tuple[str, str]:
    top = module_name.split(".")[0]
    for dist_name in metadata.packages_distributions().get(top, []):
        try:
            return dist_name, metadata.version(dist_name)
        except metadata.PackageNotFoundError:  # pragma: no cover - broken install
            continue
    if top == "cachetune":
        from cachetune import __version__

        return "cachetune", __version__
    return top, "unknown"


def _iter_entry_points() -> Iterable[metadata.EntryPoint]:
    seen = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen:  # the same dist found twice on sys.path
            continue
        seen.add(ep.name)
        yield ep


def get_plugin_manager(load_entrypoints: bool = True, blocked: Iterable[str] = ()) -> CachetunePluginManager:
    """Build a fresh plugin manager.

    :param load_entrypoints: also load third-party plugins from the ``cachetune``
        entry-point group (tests turn this off to register plugins by hand).
    :param blocked: plugin names not to load, added to ``$CACHETUNE_DISABLE_PLUGINS``.
    """
    pm = CachetunePluginManager()
    for name in (*blocked, *_blocked_from_env()):
        pm.set_blocked(name)

    for name, module_name in BUILTIN_PLUGINS.items():
        if pm.is_blocked(name):
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            pm.load_errors.append(f"plugin '{name}' ({module_name}) failed to load: {exc!r}")
            continue
        pm.register(module, name=name)
        from cachetune import __version__

        pm.plugin_info[name] = PluginInfo(name, "cachetune", __version__, True)

    if load_entrypoints:
        for ep in _iter_entry_points():
            if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                pm.load_errors.append(f"plugin '{ep.name}' ({ep.value}) failed to load: {exc!r}")
                continue
            dist = getattr(ep, "dist", None)
            if dist is not None:
                package, version = dist.metadata["Name"], dist.version
            else:  # pragma: no cover - Python < 3.10 entry points have no dist
                package, version = _dist_of(ep.value.split(":")[0])
            pm.plugin_info[ep.name] = PluginInfo(ep.name, package, version, False)

    _check_pending(pm)
    return pm


def _check_pending(pm: CachetunePluginManager) -> None:
    """Unregister plugins whose hooks match no hookspec (a misspelled hook), with a note."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            pm.load_errors.append(f"plugin '{name}' rejected: {exc}")
            pm.unregister(exc.plugin)
            pm.plugin_info.pop(name, None)


def register_module(pm: CachetunePluginManager, module: object, name: str) -> None:
    """Register an in-process plugin (tests, notebooks) and forget cached registrations."""
    pm.register(module, name=name)
    package, version = _dist_of(getattr(module, "__name__", name))
    pm.plugin_info[name] = PluginInfo(name, package, version, False)
    pm.forget_registrations()
