"""Generator backend options: the generic ones every backend takes, and those a backend declares.

``model``, ``temperature``, ``max_tokens`` and ``seed`` mean the same to every backend and are
``cachetune generate`` flags. Everything else (a server URL, GPUs per model, CPU threads, ...) is
declared by the backend that uses it (:class:`cachetune.BackendOption`, passed to ``register``
in ``register_generators``) and set with ``-o NAME VALUE`` or the run config's
``generate.options``. :func:`backend_settings` checks those against the declaration -- one
error naming the backend and the option -- before any model loads.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

from cachetune.core.errors import CachetuneError
from cachetune.core.types import BackendOption, GeneratorBackend

GENERIC_OPTIONS = {"model": None, "temperature": 0.7, "max_tokens": 256, "seed": 0}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def backend_options(options: Optional[dict], declared: Iterable[BackendOption] = ()) -> dict:
    """``options`` over the generic defaults and the ``declared`` options' defaults (``None`` values
    are unset). What a backend's constructor reads, also when a test builds it directly."""
    merged = dict(GENERIC_OPTIONS)
    merged.update({option.name: option.default for option in declared})
    merged.update({k: v for k, v in (options or {}).items() if v is not None})
    return merged


def _convert(backend: str, option: BackendOption, value):
    """``value`` (text from ``-o``, or a YAML value) as ``option.type``, else one clear error."""
    kind = option.type
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text in _TRUE | _FALSE:
                    return text in _TRUE
                raise ValueError(value)
            converted = kind(text)
            if kind is float and not math.isfinite(converted):
                raise CachetuneError(f"backend '{backend}': option '{option.name}' must be a finite number, "
                                     f"got {value!r}")
            return converted
        except ValueError:
            pass
    elif isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        if kind is float and not math.isfinite(value):
            raise CachetuneError(f"backend '{backend}': option '{option.name}' must be a finite number, got {value!r}")
        return value
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise CachetuneError(f"backend '{backend}': option '{option.name}' takes {_TYPE_WORDS[kind]}, got {value!r}")


def backend_settings(backend: GeneratorBackend, generic: dict, given: Optional[dict]) -> dict:
    """The options ``backend``'s factory gets: ``generic`` (model, temperature, ...) and ``given``
    (``-o`` / ``generate.options``) checked and converted against what the backend declares."""
    declared = {option.name: option for option in backend.options}
    values = {}
    for raw_name, value in (given or {}).items():
        name = str(raw_name).replace("-", "_")
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            hint = f"; '{name}' is a generate setting, not a -o option" if name in GENERIC_OPTIONS else ""
            raise CachetuneError(f"backend '{backend.name}' has no option '{raw_name}' (its options: {known}){hint}")
        if value is not None:
            values[name] = _convert(backend.name, declared[name], value)
    check_generic(generic)
    return backend_options({**generic, **values}, backend.options)


def check_generic(generic: dict) -> None:
    """The settings every backend takes, checked before any model loads (``--temperature nan``
    would otherwise fail only in the backend, after the model loaded, with the backend's error)."""
    temperature, max_tokens = generic.get("temperature"), generic.get("max_tokens")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not math.isfinite(temperature) or temperature < 0):
        raise CachetuneError(f"--temperature (generate.temperature) must be a finite number >= 0, got {temperature!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise CachetuneError(f"--max-tokens (generate.max_tokens) must be an integer >= 1, got {max_tokens!r}")


def describe_options(backend: GeneratorBackend) -> list:
    """``[{"name", "type", "default", "help"}]`` for ``cachetune plugins``."""
    return [{"name": o.name, "type": o.type.__name__, "default": o.default, "help": o.help} for o in backend.options]
