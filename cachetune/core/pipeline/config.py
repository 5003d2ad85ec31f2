"""The configuration of ``cachetune run``: defaults, a YAML file, and command-line overrides.

Precedence, lowest first: built-in defaults, the domain's defaults, ``--config run.yaml``,
then command-line flags (``--source``, ``-o tensor_parallel 4``, ``--set train.lr=1e-4``, ...).
``generate.options`` is a mapping merged key by key (``--set generate.options.concurrency=4``). Unknown sections or
keys are errors naming the file and the key, so a typo never silently falls back to a
default; every value is checked against its type (:data:`TYPES`) as it is merged, so
``--set train.epochs=two`` fails before any stage runs, naming the key, the expected type
and the value.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from cachetune.core.errors import CachetuneError
from cachetune.core.textfiles import read_text

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "run": {
        "workdir": None,  # runs/<domain> when not set
        "base_model": None,  # the domain's default base model when not set
        "seed": 0,
    },
    "prepare": {"source": None, "limit": None, "holdout": 0.1, "query_field": None, "group_field": None},
    "generate": {
        "backend": "llama-cpp",
        "model": None,
        "paraphrases": 3,
        "negatives": 2,
        "temperature": 0.7,
        "max_tokens": 256,
        "batch_size": None,  # the backend's default (llama-cpp 1, openai 32, vllm 256)
        "options": {},  # the backend's declared options (`cachetune plugins`), e.g. {tensor_parallel: 4}
        "limit": None,  # queries of the train split to generate for
        "holdout_limit": 200,  # held-out queries to generate evaluation triplets for
        "mine_negatives": 0,
        "mine_fallback": False,  # mine a negative for queries whose LLM negatives were all rejected
        "embedding_filter": True,
        "ask_together": False,  # send a query's two requests at once (default: negatives first)
    },
    "train": {
        "epochs": 1,
        # 32: on the default runs' own training files, batch 64 gave medical +0.012 AP (3 seeds) and
        # batch 32 +0.024, programming +0.025 either way, for half the triplets (README, Results).
        "batch_size": 32,
        "lr": None,  # the trainer's measured default when not set
        "temperature": 0.05,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.1,
        "target_modules": "query,value",
        "max_seq_length": 128,
        "hard_negatives": True,
        "drop_inverted": True,  # drop triplets the base model ranks backwards (train --keep-inverted)
        # The training signal besides the LLM triplets (cachetune.core.train.signal): the domain's
        # training sets ("all", "none" or names), files for them, the user's labelled pairs.
        "llm_triplets": True,
        "training_sets": "all",
        "training_sources": {},
        "pairs": [],
        "relative_margin": 0.05,
        # At least this many optimizer steps (more epochs over a small file): one pass over the
        # default run's data at batch 64 was 3 steps, too few to move the adapter.
        "min_steps": 60,
        "loss": "mnrl",
        "guide_filter": False,
        "pair_loss_weight": 0.0,
    },
    # eval_data: the domain sets' data (default: the pairs the domain package ships).
    "evaluate": {"target_precision": 0.95, "pairs": [], "domain_sets": True, "eval_data": None},
    "register": {"enabled": True, "registry": None, "name": None},
}


# What each key takes: (kind, may be null, lowest value). Kinds: "int", "float" (an int is
# taken as a float), "bool", "str", "str-list" (a list of strings, or one string), "mapping"
# (generate.options, train.training_sources: their users check each entry).
_POSITIVE = ("int", True, 1)
TYPES: Dict[str, tuple] = {
    "run.workdir": ("str", True, None), "run.base_model": ("str", True, None), "run.seed": ("int", False, None),
    "prepare.source": ("str", True, None), "prepare.limit": _POSITIVE, "prepare.holdout": ("float", False, 0.0),
    "prepare.query_field": ("str", True, None), "prepare.group_field": ("str", True, None),
    "generate.backend": ("str", False, None), "generate.model": ("str", True, None),
    "generate.paraphrases": ("int", False, 1), "generate.negatives": ("int", False, 0),
    "generate.temperature": ("float", False, 0.0), "generate.max_tokens": ("int", False, 1),
    "generate.batch_size": _POSITIVE, "generate.options": ("mapping", False, None), "generate.limit": _POSITIVE,
    "generate.holdout_limit": ("int", True, 0), "generate.mine_negatives": ("int", False, 0),
    "generate.mine_fallback": ("bool", False, None), "generate.embedding_filter": ("bool", False, None),
    "generate.ask_together": ("bool", False, None),
    "train.epochs": ("int", False, 1), "train.batch_size": ("int", False, 2), "train.lr": ("float", True, 0.0),
    "train.temperature": ("float", False, 0.0), "train.lora_r": ("int", False, 1),
    "train.lora_alpha": ("float", False, 0.0), "train.lora_dropout": ("float", False, 0.0),
    "train.target_modules": ("str-list", False, None), "train.max_seq_length": ("int", False, 8),
    "train.hard_negatives": ("bool", False, None), "train.drop_inverted": ("bool", False, None),
    "train.llm_triplets": ("bool", False, None), "train.training_sets": ("str-list", False, None),
    "train.training_sources": ("mapping", False, None), "train.pairs": ("str-list", False, None),
    "train.relative_margin": ("float", False, 0.0), "train.min_steps": _POSITIVE, "train.loss": ("str", False, None),
    "train.guide_filter": ("bool", False, None), "train.pair_loss_weight": ("float", False, 0.0),
    "evaluate.target_precision": ("float", False, 0.0), "evaluate.pairs": ("str-list", False, None),
    "evaluate.domain_sets": ("bool", False, None), "evaluate.eval_data": ("str", True, None),
    "register.enabled": ("bool", False, None), "register.registry": ("str", True, None),
    "register.name": ("str", True, None),
}
_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text",
               "str-list": "a list of text", "mapping": "a mapping of option names to values"}
# Upper bounds of the shares (prepare.holdout must leave training queries).
_BELOW = {"prepare.holdout": 1.0}
_AT_MOST = {"evaluate.target_precision": 1.0, "train.lora_dropout": 1.0}


def check_value(key: str, value: Any, where: str) -> Any:
    """``value`` for config key ``key`` as its type wants it (an int becomes a float where a
    number is expected), or a :class:`CachetuneError` naming the key, the type and the value."""
    kind, nullable, lowest = TYPES[key]
    expected = _KIND_NAMES[kind] + (" or null" if nullable else "")
    given = value

    def bad(why: str = ""):
        return CachetuneError(f"{key}: expected {expected}{why}, got {given!r} ({type(given).__name__})", where)

    if value is None:
        if nullable:
            return None
        raise bad()
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind == "str":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a numeric model name or folder, e.g. `--set run.workdir=2024`
        if not isinstance(value, str) or not value.strip():
            raise bad()
        return value
    if kind == "mapping":  # the backend checks its own options' types when it is chosen
        if not isinstance(value, dict):
            raise bad()
        return value
    if kind == "str-list":
        if isinstance(value, str):
            return value  # one name or file (resolve_config makes a list-valued key a list of one)
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise bad()
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and isinstance(value, float)):
        raise bad()
    value = float(value) if kind == "float" else value
    if lowest is not None and value < lowest:
        raise bad(f" >= {lowest:g}")
    if key in _BELOW and value >= _BELOW[key]:
        raise bad(f" below {_BELOW[key]:g}")
    if key in _AT_MOST and value > _AT_MOST[key]:
        raise bad(f" at most {_AT_MOST[key]:g}")
    if key == "evaluate.target_precision" and value == 0:
        raise bad(" above 0")
    return value


# Training queries generated for when the run reads the domain's built-in sample (no source).
SAMPLE_GENERATE_LIMIT = 60


def _coerce(text: str) -> Any:
    """A ``--set`` value as YAML reads it: numbers, booleans, null, lists."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string; a learning rate is meant
            return float(value)
        except ValueError:
            return value
    return value


def _merge(config: dict, updates: dict, where: str) -> None:
    for section, values in updates.items():
        if section not in config:
            raise CachetuneError(f"unknown section '{section}' (known: {', '.join(config)})", where)
        if not isinstance(values, dict):
            raise CachetuneError(f"section '{section}' must be a mapping", where)
        for key, value in values.items():
            if key not in config[section]:
                known = ", ".join(config[section])
                raise CachetuneError(f"unknown key '{section}.{key}' (known: {known})", where)
            value = check_value(f"{section}.{key}", value, where)
            if isinstance(config[section][key], dict) and isinstance(value, dict):
                config[section][key] = {**config[section][key], **value}
            else:
                config[section][key] = value


def load_config_file(path: Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CachetuneError("config file not found", path)
    try:
        data = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise CachetuneError(f"invalid YAML: {getattr(exc, 'problem', exc)}", path,
                             line + 1 if line is not None else None) from None
    if not isinstance(data, dict):
        raise CachetuneError("a run config must be a mapping of sections", path)
    return data


def parse_overrides(pairs: Iterable[str]) -> dict:
    """``["train.lr=1e-4", "generate.options.concurrency=4"]`` -> nested dict."""
    updates: Dict[str, dict] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise CachetuneError(f"--set expects SECTION.KEY=VALUE, got '{pair}'")
        name, dot, option = name.partition(".")
        updates.setdefault(section, {})[name] = {option: _coerce(value)} if dot else _coerce(value)
    return updates


def resolve_config(
    domain,
    config_file: Optional[Path] = None,
    overrides: Optional[dict] = None,
    sets: Iterable[str] = (),
) -> dict:
    """The full config for ``domain``; ``overrides`` are nested dicts from explicit CLI flags."""
    config = copy.deepcopy(DEFAULTS)
    config["run"]["base_model"] = domain.default_base_model
    if config_file is not None:
        file_config = load_config_file(config_file)
        file_domain = file_config.pop("domain", None)
        if file_domain not in (None, domain.name):
            raise CachetuneError(f"config is for domain '{file_domain}', not '{domain.name}'", config_file)
        _merge(config, file_config, str(config_file))
    flags = {section: {k: v for k, v in values.items() if v is not None and v != {}}
             for section, values in (overrides or {}).items()}
    _merge(config, flags, "command line")
    _merge(config, parse_overrides(sets), "--set")
    for section, values in DEFAULTS.items():  # one value for a list setting (--set evaluate.pairs=FILE) is a list of one
        for key, default in values.items():
            if isinstance(default, list) and isinstance(config[section][key], str):
                config[section][key] = [config[section][key]]
    if config["prepare"]["source"] is None and config["generate"]["limit"] is None:
        # The offline default run must finish in under 15 minutes on 2 cores: measured there,
        # all 270 sample training queries took 13 of its 14 minutes generating.
        config["generate"]["limit"] = SAMPLE_GENERATE_LIMIT
    if not config["run"]["workdir"]:
        config["run"]["workdir"] = str(Path("runs") / domain.name)
    config["domain"] = domain.name
    return config


def dump_config(config: dict) -> str:
    import yaml

    ordered = {"domain": config["domain"], **{k: v for k, v in config.items() if k != "domain"}}
    return yaml.safe_dump(ordered, sort_keys=False)
