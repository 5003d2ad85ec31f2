"""Exports for the semantic caches people run: ``cachetune adapters export NAME --for TOOL``.

Every tool gets the same folder: the adapter merged into its base model, saved as a
sentence-transformers folder whose root is a plain BERT checkpoint (``config.json``,
``model.safetensors`` under the base model's own weight names, ``tokenizer.json``), so
semantic-router and TEI load it as they load any BERT. Its module files are rewritten in the
long-standing format every sentence-transformers release and TEI read (``modules.json`` with
``sentence_transformers.models.*`` types, ``1_Pooling/config.json`` with ``pooling_mode_*``
keys, ``sentence_bert_config.json`` with ``max_seq_length``). Next to it, ``cache-config.py``
(or ``.yaml``): that tool's own code or config with the adapter's stored threshold in its units.

The units, read from each tool's source and checked against a real cache in tests:
- redisvl ``SemanticCache`` and langchain-redis ``RedisSemanticCache``: ``distance_threshold``
  is a Redis COSINE distance, 1 - cosine.
- LiteLLM ``Cache(type="redis-semantic")``: ``similarity_threshold`` is the cosine (LiteLLM
  hands 1 - it to redisvl).
- GPTCache, faiss + ``SearchDistanceEvaluation()``: faiss returns the squared L2 distance, which
  on unit vectors is 2 - 2 cos; the score is 4 - that = 2 + 2 cos, and a hit needs
  score >= 4 t, so ``similarity_threshold`` t = (1 + cos) / 2.
- vLLM semantic-router: ``semantic_cache.similarity_threshold`` is the cosine.
- sentence-transformers (and anything reading its folders): the cosine itself.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import write_json

MODULE_TYPES = {"Transformer": "sentence_transformers.models.Transformer",
                "Pooling": "sentence_transformers.models.Pooling",
                "Normalize": "sentence_transformers.models.Normalize"}
LEGACY_POOLING_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
                       "max": "pooling_mode_max_tokens", "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens"}
REDIS_URL_LINE = 'REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")'


@dataclass(frozen=True)
class Target:
    """One tool: how its threshold setting relates to the cosine, and its config template."""

    name: str
    setting: str                      # the tool's threshold setting
    unit: str                         # what that setting measures, in words
    formula: str                      # the setting as a function of the cosine threshold c
    convert: Callable[[float], float]
    file_name: str
    template: str                     # str.format fields: folder, ref, name, threshold, dims


REDISVL = '''\
import os

from redisvl.extensions.cache.llm import SemanticCache
from redisvl.utils.vectorize import HFTextVectorizer

{REDIS_URL_LINE}
cache = SemanticCache(
    name="cachetune-{name}",
    redis_url=REDIS_URL,
    vectorizer=HFTextVectorizer(model="{folder}"),
    distance_threshold={threshold},  # Redis COSINE distance = 1 - cosine similarity
)
# cache.store(prompt="how do I sort a list", response="sorted(xs)")
# cache.check(prompt="sorting a python list")  -> [] on a miss
'''

LANGCHAIN = '''\
import os

from langchain_core.globals import set_llm_cache
from langchain_huggingface import HuggingFaceEmbeddings
from langchain_redis import RedisSemanticCache

{REDIS_URL_LINE}
cache = RedisSemanticCache(
    embeddings=HuggingFaceEmbeddings(model_name="{folder}"),
    redis_url=REDIS_URL,
    name="cachetune-{name}",
    distance_threshold={threshold},  # Redis COSINE distance = 1 - cosine similarity
)
set_llm_cache(cache)
'''

LITELLM = '''\
# LiteLLM embeds through an OpenAI-compatible endpoint; serve the adapter first, e.g.
#   cachetune serve --model {ref} --port 8080
# (or any OpenAI-compatible server over the folder {folder}).
import os

import litellm
from litellm.caching.caching import Cache

{REDIS_URL_LINE}
os.environ.setdefault("HOSTED_VLLM_API_BASE", "http://127.0.0.1:8080/v1")
litellm.cache = Cache(
    type="redis-semantic",
    redis_url=REDIS_URL,
    similarity_threshold={threshold},  # cosine similarity (LiteLLM passes 1 - it to Redis)
    redis_semantic_cache_embedding_model="hosted_vllm/{ref}",
)
'''

GPTCACHE = '''\
from gptcache import Config, cache
from gptcache.manager import CacheBase, VectorBase, get_data_manager
from gptcache.processor.pre import get_prompt
from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{folder}")
cache.init(
    pre_embedding_func=get_prompt,  # for gptcache.adapter.api put/get; last_content for chat adapters
    embedding_func=lambda text, **_: model.encode(text, normalize_embeddings=True),
    data_manager=get_data_manager(CacheBase("sqlite", sql_url="sqlite:///gptcache.db"),
                                  VectorBase("faiss", dimension={dims}, index_path="gptcache.faiss")),
    similarity_evaluation=SearchDistanceEvaluation(),  # score 4 - squared L2 = 2 + 2 cos on unit vectors
    config=Config(similarity_threshold={threshold}),  # (1 + cosine) / 2
)
# from gptcache.adapter.api import get, put
# put("how do I sort a list", "sorted(xs)"); get("sorting a python list")  -> None on a miss
'''

SEMANTIC_ROUTER = '''\
# vLLM semantic-router config.yaml excerpt: {ref} as the cache's embedding model.
# The folder is a plain BERT checkpoint (config.json, tokenizer.json, model.safetensors);
# its vectors are mean-pooled and L2-normalised.
bert_model:
  model_id: {folder}
  use_cpu: true
semantic_cache:
  enabled: true
  similarity_threshold: {threshold}  # cosine similarity
'''

SENTENCE_TRANSFORMERS = '''\
# A standard sentence-transformers folder: SentenceTransformer(...) here, or a text-embeddings
# server, e.g. TEI: text-embeddings-router --model-id {folder}
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{folder}")
THRESHOLD = {threshold}  # cosine similarity: serve the cached answer when cos >= THRESHOLD


def is_hit(query: str, cached: str) -> bool:
    a, b = model.encode([query, cached], normalize_embeddings=True)
    return float(a @ b) >= THRESHOLD
'''


def _same(cosine: float) -> float:
    return cosine


TARGETS = {t.name: t for t in [
    Target("redisvl", "distance_threshold", "Redis COSINE distance", "1 - c", lambda c: 1 - c,
           "cache-config.py", REDISVL),
    Target("langchain", "distance_threshold", "Redis COSINE distance", "1 - c", lambda c: 1 - c,
           "cache-config.py", LANGCHAIN),
    Target("litellm", "similarity_threshold", "cosine similarity", "c", _same, "cache-config.py", LITELLM),
    Target("gptcache", "similarity_threshold", "GPTCache score / 4 with faiss squared L2", "(1 + c) / 2",
           lambda c: (1 + c) / 2, "cache-config.py", GPTCACHE),
    Target("semantic-router", "semantic_cache.similarity_threshold", "cosine similarity", "c", _same,
           "cache-config.yaml", SEMANTIC_ROUTER),
    Target("sentence-transformers", "THRESHOLD", "cosine similarity", "c", _same, "cache-config.py",
           SENTENCE_TRANSFORMERS),
]}


@dataclass(frozen=True)
class CacheExport:
    """What ``export_for_cache`` wrote."""

    ref: str
    tool: str
    folder: Path
    config_file: Path
    config: str
    cosine_threshold: Optional[float]
    threshold: Optional[float]  # in the tool's units


def tool_threshold(tool: str, cosine: float) -> float:
    """``cosine`` (a hit is cos >= it) in ``tool``'s units, rounded to 6 decimals."""
    return round(_target(tool).convert(float(cosine)), 6)


def _target(tool: str) -> Target:
    if tool not in TARGETS:
        raise CachetuneError(f"unknown tool '{tool}' (--for): choose from {', '.join(TARGETS)}")
    return TARGETS[tool]


def render_config(tool: str, folder, ref: str, cosine: Optional[float], dims: int = 384) -> str:
    """The config snippet for ``tool``: ``cosine`` converted, or a plain note when there is none."""
    target = _target(tool)
    name = ref.split("@")[0]
    comment = "#"
    if cosine is None:
        threshold = "null" if target.file_name.endswith(".yaml") else "None"
        head = (f"{comment} {ref} has no stored threshold. Calibrate one on pairs like your traffic\n"
                f"{comment}   cachetune evaluate --adapter {ref} --pairs PAIRS.jsonl --register-metrics --output DIR\n"
                f"{comment} and export again, or set {target.setting} yourself: {target.unit}, "
                f"{target.formula} for a cosine threshold c.\n")
    else:
        threshold = repr(tool_threshold(tool, cosine))
        head = (f"{comment} {ref}: calibrated cosine threshold {cosine:.6g}\n"
                f"{comment} -> {target.setting} = {target.formula} = {threshold} ({target.unit})\n")
    body = target.template.format(folder=Path(folder), ref=ref, name=name, threshold=threshold, dims=dims,
                                  REDIS_URL_LINE=REDIS_URL_LINE)
    return head + body


def _pooling_config(pooling) -> dict:
    mode = getattr(pooling, "pooling_mode", None)
    if mode is None:  # sentence-transformers < 5 keeps the legacy keys itself
        return {k: v for k, v in pooling.get_config_dict().items() if k.startswith(("word_", "pooling_mode_"))}
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    if len(modes) != 1 or modes[0] not in LEGACY_POOLING_KEYS:
        raise CachetuneError(f"cannot export pooling mode {mode!r} in the portable layout (cls, mean, max)")
    config = {"word_embedding_dimension": int(pooling.embedding_dimension)}
    config.update({key: modes[0] == m for m, key in LEGACY_POOLING_KEYS.items()})
    return config


def write_portable_layout(folder: Path) -> dict:
    """Rewrite ``folder``'s sentence-transformers module files in the long-standing format.

    Returns ``{"dims", "pooling", "normalized", "max_seq_length"}`` as read from the model.
    """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    kinds = [type(model[i]).__name__ for i in range(len(model))]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in MODULE_TYPES for k in kinds):
        raise CachetuneError(f"cannot export modules {kinds}: expected Transformer, Pooling[, Normalize]", folder)
    if modules[0].get("path"):
        raise CachetuneError("the transformer is not at the folder's root (modules.json)", folder)
    for entry, kind in zip(modules, kinds):
        entry["type"] = MODULE_TYPES[kind]
    write_json(folder / "modules.json", modules)
    pooling = _pooling_config(model[1])
    write_json(folder / modules[1]["path"] / "config.json", pooling)
    write_json(folder / "sentence_bert_config.json",
               {"max_seq_length": int(model.max_seq_length), "do_lower_case": False})
    return {"dims": int(pooling["word_embedding_dimension"]),
            "pooling": next(m for m, key in LEGACY_POOLING_KEYS.items() if pooling.get(key)),
            "normalized": "Normalize" in kinds, "max_seq_length": int(model.max_seq_length)}


def export_for_cache(registry, ref: str, tool: str, output, device: Optional[str] = None) -> CacheExport:
    """Export ``ref`` merged, in the layout ``tool`` loads, with ``cache-config.*`` beside it."""
    target = _target(tool)
    record = registry.get(ref)
    output = Path(output)
    registry.export(record["ref"], output, merged=True, device=device)  # refuses a non-empty output
    try:
        layout = write_portable_layout(output)
        if tool == "semantic-router" and (layout["pooling"] != "mean" or not layout["normalized"]):
            raise CachetuneError("semantic-router mean-pools and L2-normalises: this model pools with "
                                 f"'{layout['pooling']}'{'' if layout['normalized'] else ' without normalising'}",
                                 output)
        cosine = record.get("calibrated_threshold")
        config = render_config(tool, output.resolve(), record["ref"], cosine, dims=layout["dims"])
        config_file = output / target.file_name
        config_file.write_text(config, encoding="utf-8")
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)  # registry.export created it: leave no half export
        raise
    return CacheExport(record["ref"], tool, output, config_file, config, cosine,
                       None if cosine is None else tool_threshold(tool, cosine))
