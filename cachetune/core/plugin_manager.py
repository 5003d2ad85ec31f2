"""Builds the plugin manager and collects what plugins register.

Built-in plugins are registered under their entry-point names first, so loading the
``cachetune`` entry-point group afterwards skips them instead of registering the same
module twice; third-party plugins then load one by one, and a plugin that fails to import
is recorded (one line) instead of taking the CLI down.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import pluggy

from cachetune.core import hookspecs
from cachetune.core.types import Domain, EvaluationSet, PromptTemplates, SourceReader
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


class CachetunePluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers plugin origins and load failures."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.load_errors: List[str] = []
        self.plugin_info: Dict[str, PluginInfo] = {}
        self._cache: Dict[str, object] = {}

    # -- collection -------------------------------------------------------------------
    def _collect(self, hook_name: str, key: Callable[..., str], wrap: Callable[..., object]) -> Dict[str, Registered]:
        """Call ``hook_name`` on each plugin with a ``register`` callback; refuse duplicates."""
        found: Dict[str, Registered] = {}
        hook = getattr(self.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name

            def register(*args, _plugin=plugin_name):
                name = key(*args)
                if name in found:
                    raise CachetuneError(
                        f"{hook_name}: '{name}' is registered by both plugin '{found[name].plugin}' "
                        f"and plugin '{_plugin}'"
                    )
                found[name] = Registered(name, wrap(*args), _plugin)

            try:
                impl.function(register=register)
            except CachetuneError:
                raise
            except Exception as exc:  # a broken plugin names itself, not a traceback
                raise CachetuneError(f"plugin '{plugin_name}' failed in {hook_name}: {exc!r}") from exc
        return found

    def _cached(self, hook_name: str, key, wrap) -> Dict[str, Registered]:
        if hook_name not in self._cache:
            self._cache[hook_name] = self._collect(hook_name, key, wrap)
        return self._cache[hook_name]  # type: ignore[return-value]

    def domains(self) -> Dict[str, Registered]:
        """Registered domains by name (``Registered.value`` is the :class:`Domain`)."""

        def check(domain):
            if not isinstance(domain, Domain):
                raise CachetuneError(f"register_domains: expected a cachetune.Domain, got {type(domain).__name__}")
            return domain.name

        return self._cached("register_domains", check, lambda d: d)

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
        readers = self._cached("register_source_readers", lambda r: r.name, lambda r: r)
        return [r.value for r in readers.values()]  # type: ignore[misc]

    def prompt_templates(self, domain: str) -> PromptTemplates:
        """A plugin's override for ``domain``'s prompts, else the domain's own."""
        overrides = self._cached("register_prompt_templates", lambda d, t: d, lambda d, t: t)
        if domain in overrides:
            return overrides[domain].value  # type: ignore[return-value]
        return self.get_domain(domain).prompts

    def evaluation_sets(self, domain: str) -> List[EvaluationSet]:
        """The domain's own evaluation sets, then those other plugins registered for it."""
        extra = self._cached(
            "register_evaluation_sets", lambda d, s: f"{d}/{s.name}", lambda d, s: (d, s)
        )
        sets = list(self.get_domain(domain).evaluation_sets)
        names = {s.name for s in sets}
        for reg in extra.values():
            dom, eval_set = reg.value  # type: ignore[misc]
            if dom != domain:
                continue
            if eval_set.name in names:
                raise CachetuneError(
                    f"register_evaluation_sets: '{domain}/{eval_set.name}' is already defined by the domain "
                    f"and registered again by plugin '{reg.plugin}'"
                )
            sets.append(eval_set)
        return sets

    def generators(self) -> Dict[str, Registered]:
        """Generator backends by name (``Registered.value`` is the factory)."""
        return self._cached("register_generators", lambda n, f: n, lambda n, f: f)

    def hooks_of(self, plugin_name: str) -> List[str]:
        plugin = self.get_plugin(plugin_name)
        return sorted(h.name for h in (self.get_hookcallers(plugin) or []))


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
    pm._cache.clear()
