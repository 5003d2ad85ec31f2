"""Serving adapters: load a domain's adapter from the registry, many domains on one base,
merged exports, and reading/writing texts and embeddings for ``cachetune embed``.

Every adapter file is re-hashed against its registry record and the base model's weights
against the sha256 recorded at training time before anything is loaded: a corrupt or
mismatched file is an error naming it, never a silently different embedding.

The LoRA must wrap (and be merged into) ``model[0]``'s transformer module; merging any
other object leaves the encoder untouched and serves base-model embeddings.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from cachetune.core.adapters import (
    CARD_FILE,
    MERGED_INFO_FILE,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    attach_adapter,
    base_model_entry,
    check_base_model,
    check_finite_weights,
    load_adapter_model,
    read_card,
)
from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import atomic_writer, iter_jsonl, write_json
from cachetune.core.models import canonical_model_id, load_sentence_transformer
from cachetune.core.outputs import check_output
from cachetune.core.textfiles import read_json, reading_text

OUTPUT_SUFFIXES = (".json", ".jsonl", ".npy")
BACKENDS = ("torch", "onnx")
PEFT_BASE = "__base__"  # peft's adapter name for "no adapter" in a mixed-adapter batch
_NOT_BUILT = object()


@dataclass(frozen=True)
class ServedAdapter:
    """What a loaded model encodes with; set on models as ``model.cachetune_adapter``."""

    ref: Optional[str]  # registry name@version; None for a folder outside the registry
    domain: Optional[str]
    path: str
    base_model: str
    calibrated_threshold: Optional[float]
    merged: bool
    backend: str = "torch"  # or "onnx-fp32" / "onnx-int8" (core/serving/onnx.py)


def open_registry(registry=None):
    """``registry`` as an :class:`AdapterRegistry` (None -> the default location)."""
    from cachetune.registry import AdapterRegistry

    return registry if isinstance(registry, AdapterRegistry) else AdapterRegistry(registry)


def find_record(registry, domain: Optional[str] = None, name: Optional[str] = None,
                version: Optional[int] = None) -> dict:
    """The registry record to serve: ``name[@version]`` if given, else the domain's adapter."""
    if name:
        ref = f"{name}@{version}" if version is not None and "@" not in name else name
        record = registry.get(ref)
        if domain and record["domain"] != domain:
            raise CachetuneError(
                f"adapter '{record['ref']}' is for domain '{record['domain']}', not '{domain}'", registry.index.path
            )
        return record
    if version is not None:
        raise CachetuneError("a version needs an adapter name (name@version)")
    if not domain:
        raise CachetuneError("say which adapter to load: a domain or an adapter name")
    return registry.find(domain)


def check_backend(backend: str, quantize: Optional[str]) -> None:
    if backend not in BACKENDS:
        raise CachetuneError(f"unknown backend '{backend}' (--backend: {', '.join(BACKENDS)})")
    if quantize and backend != "onnx":
        raise CachetuneError("--quantize needs --backend onnx (PyTorch serves fp32)")


def load_folder(path, domain: Optional[str] = None, merged: bool = False, device: Optional[str] = None,
                base_model: Optional[str] = None, backend: str = "torch"):
    """Load an adapter folder outside the registry, a merged export or an ONNX export."""
    path = Path(path)
    from cachetune.core.serving import onnx

    if (path / onnx.INFO_FILE).exists():
        model = onnx.load_onnx(path)
        source = model.info.get("source") or {}
        if domain and source.get("domain") != domain:
            raise CachetuneError(f"ONNX export is for domain '{source.get('domain')}', not '{domain}'",
                                 path / onnx.INFO_FILE)
        model.cachetune_adapter = ServedAdapter(source.get("ref"), source.get("domain"), str(path),
                                                (source.get("base_model") or {}).get("id", ""),
                                                model.info.get("calibrated_threshold"), True, model.backend)
        return model
    if backend == "onnx":
        raise CachetuneError("--backend onnx serves registered adapters and ONNX exports "
                             "(`cachetune adapters export NAME --format onnx`); this folder is neither", path)
    info_path = path / MERGED_INFO_FILE
    if info_path.exists():
        info = read_json(info_path)
        if domain and info.get("domain") != domain:
            raise CachetuneError(f"merged model is for domain '{info.get('domain')}', not '{domain}'", info_path)
        model = load_sentence_transformer(str(path), device=device)
        model.eval()
        model.cachetune_adapter = ServedAdapter(info.get("ref"), info.get("domain"), str(path),
                                                info.get("base_model", {}).get("id", ""),
                                                info.get("calibrated_threshold"), True)
        return model
    if not (path / PEFT_CONFIG).exists():
        raise CachetuneError(f"neither an adapter folder ({PEFT_CONFIG}) nor a merged export ({MERGED_INFO_FILE})",
                             path)
    card = read_card(path)
    from cachetune.registry.adapter_files import safetensors_tensor_names

    safetensors_tensor_names(path / PEFT_WEIGHTS)  # nothing recorded to hash against: at least a sane file
    check_finite_weights(path / PEFT_WEIGHTS)
    if domain and card.get("domain") and card["domain"] != domain:
        raise CachetuneError(f"adapter is for domain '{card['domain']}', not '{domain}'", path / CARD_FILE)
    entry = base_model_entry(path, card)
    model = load_adapter_model(path, base_model, device, merged, entry=entry)
    model.cachetune_adapter = ServedAdapter(None, card.get("domain") or domain, str(path),
                                            canonical_model_id(entry["id"]), None, merged)
    return model


def load_model(domain: Optional[str] = None, registry=None, merged: bool = False, name: Optional[str] = None,
               version: Optional[int] = None, device: Optional[str] = None, adapter: Optional[str] = None,
               base_model: Optional[str] = None, backend: str = "torch", quantize: Optional[str] = None):
    """A SentenceTransformer (or, with ``backend="onnx"``, an encoder with its ``encode``) for an adapter.

    :param domain: serve this domain's adapter (see :meth:`AdapterRegistry.find`).
    :param registry: an :class:`AdapterRegistry` or its root folder (default location when None).
    :param merged: fold the LoRA into the weights (same embeddings, base-model speed).
    :param name: / :param version: a specific registered adapter instead of the domain's.
    :param adapter: a registry reference ``name[@version]`` or an adapter / merged folder.
    :param base_model: load the base from here (must be the model the adapter was trained on).
    :param backend: ``"torch"``, or ``"onnx"``: the adapter merged and run by onnxruntime, exported
        on first use and cached beside it in the registry (see :mod:`cachetune.core.serving.onnx`).
    :param quantize: with ``backend="onnx"``, ``"int8"`` for the int8-quantized export.

    The returned model's ``cachetune_adapter`` says what it serves, including the
    calibrated threshold when the adapter has been evaluated.
    """
    check_backend(backend, quantize)
    if adapter and ("/" in str(adapter) or Path(adapter).expanduser().is_dir()):
        if not Path(adapter).expanduser().is_dir():
            raise CachetuneError("adapter folder not found (--adapter)", adapter)
        return load_folder(Path(adapter).expanduser(), domain=domain, merged=merged, device=device,
                           base_model=base_model, backend=backend)
    reg = open_registry(registry)
    record = find_record(reg, domain=domain, name=adapter or name, version=version)
    folder = reg.check(record)
    if backend == "onnx":
        from cachetune.core.serving import onnx

        if base_model:
            check_base_model(record["base_model"], base_model, reg.path_of(record))
        model = onnx.load_onnx(onnx.adapter_export(reg, record, quantize, device), onnx.adapter_source(record))
        model.cachetune_adapter = ServedAdapter(record["ref"], record["domain"], str(folder),
                                                record["base_model"]["id"], record.get("calibrated_threshold"),
                                                True, model.backend)
        return model
    model = load_adapter_model(folder, base_model, device, merged, entry=record["base_model"],
                               where=reg.path_of(record))
    model.cachetune_adapter = ServedAdapter(record["ref"], record["domain"], str(folder), record["base_model"]["id"],
                                            record.get("calibrated_threshold"), merged)
    return model


class MultiAdapterModel:
    """One base SentenceTransformer carrying several named LoRA adapters.

    ``encode(texts, domain=...)`` activates that domain's adapter (peft ``set_adapter``)
    and encodes; the base weights are loaded once. The labels are domains for
    :func:`load_multi`, whatever :func:`load_shared`'s caller chose otherwise. ``domain=None`` encodes with every
    adapter disabled (the base model). Switching mutates the shared model, so calls are
    serialised with a lock.
    """

    def __init__(self, model, peft_model, adapters: Dict[str, ServedAdapter], peft_names: Dict[str, str],
                 base_model_entry: Optional[dict] = None, base_thresholds: Optional[Dict[str, float]] = None):
        self.model = model
        self.peft_model = peft_model
        self.adapters = adapters
        self._peft_names = peft_names
        self._lock = threading.Lock()
        self.base_model_entry = base_model_entry or {}  # {"id", "weights_sha256"} of the shared base
        self.base_thresholds = base_thresholds or {}  # label -> the base model's calibrated threshold
        self.router = None  # set by cachetune.core.serving.routed.attach_router: domain="auto"
        self.router_problem: Optional[str] = None  # why no router is attached, for domain="auto"'s error
        self._stacked = _NOT_BUILT  # encode_mixed's StackedLora (None: peft's mixed batches)

    @property
    def domains(self) -> List[str]:
        return list(self.adapters)

    def threshold(self, domain: str) -> Optional[float]:
        return self._adapter(domain).calibrated_threshold

    def _adapter(self, domain: str) -> ServedAdapter:
        if domain not in self.adapters:
            raise CachetuneError(f"domain '{domain}' is not loaded (loaded: {', '.join(self.adapters)})")
        return self.adapters[domain]

    def encode(self, texts, domain: Optional[str] = None, **kwargs):
        """``SentenceTransformer.encode`` through ``domain``'s adapter (keyword arguments pass through).

        ``domain="auto"`` routes each text (see :mod:`cachetune.core.routing`) and returns a
        :class:`RoutedEmbeddings`: the rows, the domain chosen per text and its cache threshold.
        """
        if domain == "auto":
            from cachetune.core.serving.routed import encode_routed

            return encode_routed(self, texts, **kwargs)
        with self._lock:
            if domain is None:
                with self.peft_model.disable_adapter():
                    return self.model.encode(texts, **kwargs)
            self._adapter(domain)
            self.peft_model.set_adapter(self._peft_names[domain])
            return self.model.encode(texts, **kwargs)

    def encode_mixed(self, texts: Sequence[str], domains: Sequence[Optional[str]], **kwargs):
        """Each text through its own domain's adapter (None: the base model), all in one ``encode``.

        The base computation is shared and each row gets only its own adapter's low-rank update
        (:mod:`cachetune.core.serving.mixed`; peft's per-row ``adapter_names`` for adapters it cannot
        stack). sentence-transformers reorders texts by length and batches them inside ``encode``, so
        each batch's adapters are set where it is tokenised (``preprocess`` sees the batch's own
        texts, in order), just before its forward.
        """
        texts = list(texts)
        if len(domains) != len(texts):
            raise CachetuneError(f"{len(texts)} texts but {len(domains)} domains")
        names: Dict[str, Optional[str]] = {}
        for text, domain in zip(texts, domains):
            if domain is not None:
                self._adapter(domain)
            name = None if domain is None else self._peft_names[domain]
            if names.setdefault(text, name) != name:
                raise CachetuneError(f"the text {text[:60]!r} is given twice with different domains")
        preprocess = self.model.preprocess

        def with_row_adapters(inputs, *args, **kw):
            features = preprocess(inputs, *args, **kw)
            if stacked is None:
                features["adapter_names"] = [names[text] or PEFT_BASE for text in inputs]
            else:
                stacked.set_rows([names[text] for text in inputs])
            return features

        with self._lock:
            stacked = self._stacked_lora()
            self.model.preprocess = with_row_adapters
            try:
                if stacked is None:
                    return self.model.encode(texts, **kwargs)
                return stacked.run(lambda: self.model.encode(texts, **kwargs))
            finally:
                del self.model.preprocess

    def _stacked_lora(self):
        """Every loaded adapter stacked per layer (built on first use; None: peft's own mixed batches)."""
        if self._stacked is _NOT_BUILT:
            from cachetune.core.serving.mixed import StackedLora

            self._stacked = StackedLora.build(self.peft_model, list(self._peft_names.values()))
        return self._stacked

    def similarity(self, a: str, b: str, domain: Optional[str] = None):
        """Cosine of ``a`` and ``b`` under ``domain``'s adapter; ``"auto"``: a :class:`RoutedSimilarity`."""
        if domain == "auto":
            from cachetune.core.serving.routed import similarity_routed

            return similarity_routed(self, a, b)
        vectors = self.encode([a, b], domain=domain, normalize_embeddings=True)
        return float((vectors[0] * vectors[1]).sum())


def load_multi(domains: Sequence[str], registry=None, device: Optional[str] = None,
               base_model: Optional[str] = None, router: Optional[str] = None) -> MultiAdapterModel:
    """One base model with the adapters of ``domains`` (each the domain's registry adapter).

    The registry's router for exactly these domains (or ``router``: ``name[@version]`` or a file)
    is attached when it was trained for the adapters loaded, so ``encode(texts, domain="auto")`` works.
    """
    if not domains:
        raise CachetuneError("load_multi needs at least one domain")
    if len(set(domains)) != len(domains):
        raise CachetuneError(f"a domain is listed twice: {list(domains)}")
    reg = open_registry(registry)
    multi = load_shared({domain: reg.find(domain) for domain in domains}, reg, device=device, base_model=base_model)
    from cachetune.core.serving.routed import attach_registry_router

    attach_registry_router(multi, reg, router)
    return multi


def load_shared(records: Dict[str, dict], registry, device: Optional[str] = None,
                base_model: Optional[str] = None) -> MultiAdapterModel:
    """Registry ``records`` (label -> record) as adapters of one base model, selected by label.

    ``load_multi`` labels them by domain; ``cachetune serve`` by ``name@version``.
    """
    reg = open_registry(registry)
    first_label, first = next(iter(records.items()))
    for label, record in records.items():
        if (record["base_model"]["id"], record["base_model"].get("weights_sha256")) != \
                (first["base_model"]["id"], first["base_model"].get("weights_sha256")):
            raise CachetuneError(
                f"adapters need one base model: {first['ref']} ({first_label}) is on '{first['base_model']['id']}', "
                f"{record['ref']} ({label}) on '{record['base_model']['id']}'", reg.index.path
            )
    folders = {label: reg.check(record) for label, record in records.items()}
    model = load_sentence_transformer(check_base_model(first["base_model"], base_model, reg.path_of(first)),
                                      device=device)
    # peft adapter names become module keys, so use safe internal names, not user strings.
    peft_names = {label: f"adapter_{i}" for i, label in enumerate(records)}
    peft_model = attach_adapter(model, folders[first_label], adapter_name=peft_names[first_label])
    for label in list(records)[1:]:
        try:
            peft_model.load_adapter(str(folders[label]), adapter_name=peft_names[label])
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CachetuneError(f"could not load adapter: {first_line}", folders[label]) from None
    model.eval()
    served = {label: ServedAdapter(r["ref"], r["domain"], str(folders[label]), r["base_model"]["id"],
                                   r.get("calibrated_threshold"), False) for label, r in records.items()}
    base_thresholds = {label: _base_threshold(r) for label, r in records.items()}
    return MultiAdapterModel(model, peft_model, served, peft_names, dict(first["base_model"]), base_thresholds)


def _base_threshold(record: dict) -> Optional[float]:
    """The base model's calibrated threshold from the adapter's evaluation, if it has one."""
    try:
        value = record["metrics"]["base"]["pairs"]["calibrated_threshold"]
    except (KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# -- texts in, embeddings out (cachetune embed) --------------------------------------------
def _text_of(obj: dict, path, line: int) -> str:
    for key in ("query", "text"):
        if isinstance(obj.get(key), str):
            if not obj[key].strip():
                raise CachetuneError(f"'{key}' is empty", path, line)
            return obj[key]
    raise CachetuneError("expected a 'query' or 'text' string field", path, line)


def read_texts(path) -> List[str]:
    """Texts to embed: ``.jsonl`` / ``.json`` (``query`` or ``text`` fields, or strings), else one per line.

    ``-`` reads lines from standard input.
    """
    if str(path) == "-":
        return [line.strip() for line in sys.stdin if line.strip()]
    path = Path(path)
    if not path.is_file():
        raise CachetuneError("input file not found (--input)", path)
    if path.suffix == ".jsonl":
        return [_text_of(obj, path, line) for line, obj in iter_jsonl(path)]
    if path.suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("texts"), list):
            data = data["texts"]
        if not isinstance(data, list):
            raise CachetuneError("expected a JSON list of texts (or of objects with 'query'/'text')", path)
        texts = [item if isinstance(item, str) else _text_of(item if isinstance(item, dict) else {}, path, None)
                 for item in data]
        check_not_empty(((f"text {i}", text) for i, text in enumerate(texts, 1)), path)
        return texts
    with reading_text(path), open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def check_not_empty(labelled: Iterable[Tuple[str, str]], path=None) -> None:
    """Refuse an empty ``(label, text)``: it has nothing to embed (two empty texts would be a
    perfect match, a cache HIT between nothing and nothing)."""
    for label, text in labelled:
        if not text.strip():
            raise CachetuneError(f"{label} is empty: there is nothing to embed", path)


def check_output_path(path, overwrite: bool = False) -> Path:
    """An embeddings file ``embed`` may write: a known suffix, outside the registry, and not an
    existing file unless ``overwrite``."""
    path = Path(path)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise CachetuneError(f"--output must end in {', '.join(OUTPUT_SUFFIXES)}", path)
    return check_output(path, "--output", overwrite=overwrite)


def write_embeddings(path, texts: Sequence[str], vectors, served: Optional[ServedAdapter] = None,
                     domains: Optional[Sequence[Optional[str]]] = None) -> Path:
    """Write ``vectors`` (one row per text) to ``.npy``, ``.json`` or ``.jsonl``, atomically.

    ``domains`` (routed encodes) adds each text's domain to ``.json`` and ``.jsonl``.
    """
    import numpy as np

    if Path(path).suffix not in OUTPUT_SUFFIXES:
        raise CachetuneError(f"--output must end in {', '.join(OUTPUT_SUFFIXES)}", path)
    path = Path(path)
    vectors = np.asarray(vectors, dtype=np.float32)
    if path.suffix == ".npy":
        with atomic_writer(path, "wb") as fh:
            np.save(fh, vectors)
    elif path.suffix == ".jsonl":
        with atomic_writer(path) as fh:
            for line in iter_embedding_lines(texts, vectors, domains):
                fh.write(line + "\n")
    else:
        write_json(path, {
            "adapter": asdict(served) if served else None,
            **({"domains": list(domains)} if domains is not None else {}),
            "dimension": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
            "count": len(texts),
            "texts": list(texts),
            "embeddings": vectors.tolist(),
        })
    return path


def iter_embedding_lines(texts: Iterable[str], vectors, domains: Optional[Sequence[Optional[str]]] = None
                         ) -> Iterable[str]:
    for i, (text, vec) in enumerate(zip(texts, vectors)):
        row = {"text": text, **({"domain": domains[i]} if domains is not None else {}),
               "embedding": [float(x) for x in vec]}
        yield json.dumps(row, ensure_ascii=False)


def cosine(model, a: str, b: str) -> float:
    vectors = model.encode([a, b], normalize_embeddings=True)
    return float((vectors[0] * vectors[1]).sum())
