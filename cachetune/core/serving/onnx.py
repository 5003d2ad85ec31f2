"""ONNX serving: an adapter merged into its base, exported to ONNX and run with onnxruntime.

``quantize=None`` exports fp32 (the same vectors as PyTorch, within float rounding);
``quantize="int8"`` quantizes the weights of every matrix product to int8 per channel
(onnxruntime's dynamic quantization: activations are quantized on the fly), which is several
times faster on a CPU at a small cost in accuracy (``bench/onnx.py`` measures both).

The graph is the whole SentenceTransformer forward (transformer, pooling, normalisation):
token ids in, sentence embedding out. It is traced with ``torch.onnx`` rather than loaded
through sentence-transformers' ``backend="onnx"``, because that goes through optimum-onnx,
whose release requires transformers < 4.58 while cachetune runs on transformers 5; this
needs only ``onnx`` and ``onnxruntime`` (``pip install 'cachetune[onnx]'``).

Exports are cached beside the adapter, ``adapters/<name>/<version>/onnx/<fp32|int8>/`` (the
base model's under ``<registry root>/onnx/base-<weights sha256>/``), each folder holding
``model.onnx``, the tokenizer files and ``cachetune-onnx.json``: what it was built from (the
adapter files' and base weights' sha256) and the sha256 of each of its files. Loading
re-hashes the files and compares the source with the registry record, so a corrupt or stale
export is an error naming the file, never a silently different embedding.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import write_json
from cachetune.core.models import sha256_file

INFO_FILE = "cachetune-onnx.json"
MODEL_FILE = "model.onnx"
EXPORTS_DIR = "onnx"  # inside an adapter's version folder, and under the registry root for bases
QUANTIZE_CHOICES = ("int8",)
OPSET = 17
OUTPUT_NAME = "sentence_embedding"


def variant(quantize: Optional[str]) -> str:
    """The export's folder name: ``fp32`` or the quantization."""
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise CachetuneError(f"unknown quantization '{quantize}' (--quantize: {', '.join(QUANTIZE_CHOICES)})")
    return quantize or "fp32"


def _need_onnxruntime() -> None:
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise CachetuneError(f"ONNX serving needs {module}: pip install 'cachetune[onnx]'") from None


# -- export ----------------------------------------------------------------------------
def _trace(model, path: Path) -> List[str]:
    """Write ``model``'s forward as ONNX to ``path``; return the graph's input names."""
    import torch

    features = model.tokenize(["a short query", "a longer query, so that the first one is padded"])
    names = [name for name, value in features.items() if isinstance(value, torch.Tensor)]

    class Forward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(dict(zip(names, tensors)))[OUTPUT_NAME]

    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    axes[OUTPUT_NAME] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        try:
            torch.onnx.export(Forward().eval(), tuple(features[n] for n in names), str(path), dynamo=False,
                              input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              opset_version=OPSET)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CachetuneError(f"could not export the model to ONNX: {first}") from None
    return names


def _quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of every matrix product's weights, one scale per output channel.

    Per channel, because one scale per matrix rounds this model's weights too coarsely: the base
    model's int8 vectors then fell to cosine 0.943 to fp32 at worst on 1,000 CoNaLa queries.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process applies to static quantization
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
    finally:
        logging.disable(logging.NOTSET)


def export_onnx(model, folder: Path, quantize: Optional[str], source: dict,
                calibrated_threshold: Optional[float] = None) -> dict:
    """Export SentenceTransformer ``model`` into the empty ``folder``; return its info (also written)."""
    import numpy as np

    folder = Path(folder)
    model.eval()
    if quantize:
        traced = folder / "fp32.onnx"
        inputs = _trace(model, traced)
        _quantize_int8(traced, folder / MODEL_FILE)
        traced.unlink()
    else:
        inputs = _trace(model, folder / MODEL_FILE)
    model.tokenizer.save_pretrained(str(folder))
    sample = model.encode(["probe"], convert_to_numpy=True)
    info = {
        "format": "onnx",
        "variant": variant(quantize),
        "source": source,
        "calibrated_threshold": calibrated_threshold,
        "inputs": inputs,
        "output": OUTPUT_NAME,
        "max_seq_length": int(model.max_seq_length),
        "dimension": int(np.asarray(sample).shape[-1]),
        "files": {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()},
        "exported_with": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(folder / INFO_FILE, info)
    return info


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "onnx", "onnxruntime", "sentence-transformers", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def read_info(folder: Path) -> dict:
    import json

    path = Path(folder) / INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CachetuneError(f"not an ONNX export (no {INFO_FILE})", folder) from None
    except json.JSONDecodeError as exc:
        raise CachetuneError(f"invalid JSON: {exc.msg}", path, exc.lineno) from None
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict) or MODEL_FILE not in info["files"]:
        raise CachetuneError(f"not an ONNX export record (no files.{MODEL_FILE})", path)
    return info


def check_export(folder: Path, source: Optional[dict] = None) -> dict:
    """The export's info after re-hashing its files (and comparing its source with ``source``)."""
    folder = Path(folder)
    info = read_info(folder)
    for name, recorded in sorted(info["files"].items()):
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise CachetuneError(f"ONNX export file {name} is missing", path)
        actual = sha256_file(path)
        if actual != recorded:
            raise CachetuneError(f"ONNX export file is corrupt (sha256 {actual[:12]}, recorded {recorded[:12]})",
                                 path)
    if source is not None and info.get("source") != source:
        raise CachetuneError("ONNX export was built from other adapter files or another base model than "
                             "the registry records", folder / INFO_FILE)
    return info


def _build(folder: Path, make) -> Path:
    """Run ``make(tmp)`` in a fresh folder next to ``folder``, then move it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        make(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / INFO_FILE).is_file():  # not another process's finished export
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def cached_export(folder: Path, source: dict, make, rebuild: bool = False) -> Path:
    """``folder`` once it holds an intact export of ``source``: built by ``make(tmp)`` if absent.

    A corrupt or stale export is an error, unless ``rebuild`` (then it is replaced).
    """
    _need_onnxruntime()
    if folder.exists():
        try:
            check_export(folder, source)
            return folder
        except CachetuneError:
            if not rebuild:
                raise
        shutil.rmtree(folder)
    return _build(folder, make)


def adapter_export(registry, record: dict, quantize: Optional[str] = None, device: Optional[str] = None,
                   rebuild: bool = False) -> Path:
    """The cached ONNX export of registry ``record``'s adapter merged into its base."""
    from cachetune.core.serving.models import load_model

    def make(tmp: Path) -> None:
        merged = load_model(adapter=record["ref"], registry=registry, merged=True, device=device)
        export_onnx(merged, tmp, quantize, adapter_source(record), record.get("calibrated_threshold"))

    folder = registry.path_of(record) / EXPORTS_DIR / variant(quantize)
    return cached_export(folder, adapter_source(record), make, rebuild)


def base_export(registry, base_entry: dict, quantize: Optional[str] = None, device: Optional[str] = None,
                rebuild: bool = False) -> Path:
    """The cached ONNX export of a base model (``{"id", "weights_sha256"}`` as in a record)."""
    from cachetune.core.adapters import check_base_model
    from cachetune.core.models import load_sentence_transformer

    resolved = check_base_model(base_entry)
    key = (base_entry.get("weights_sha256") or base_entry["id"].replace("/", "--"))[:40]
    source = {"base_model": base_entry}

    def make(tmp: Path) -> None:
        export_onnx(load_sentence_transformer(resolved, device=device), tmp, quantize, source)

    folder = registry.root / EXPORTS_DIR / f"base-{key}" / variant(quantize)
    return cached_export(folder, source, make, rebuild)


def adapter_source(record: dict) -> dict:
    """What an adapter's export is built from, as its info records it."""
    return {"ref": record["ref"], "domain": record["domain"], "adapter_files_sha256": record["files"],
            "base_model": record["base_model"]}


def copy_export(registry, quantize: Optional[str] = None, device: Optional[str] = None):
    """``write(record, folder, output)`` for :meth:`AdapterRegistry.export`: a copy of the cached
    export, its info carrying the record's current threshold."""
    def write(record: dict, folder: Path, output: Path) -> None:
        shutil.copytree(adapter_export(registry, record, quantize, device), output, dirs_exist_ok=True)
        info = read_info(output)
        info["calibrated_threshold"] = record.get("calibrated_threshold")
        write_json(output / INFO_FILE, info)

    return write


# -- running ---------------------------------------------------------------------------
class OnnxEncoder:
    """Encodes like a SentenceTransformer (``encode``, ``tokenizer``, ``max_seq_length``) with onnxruntime.

    Texts are tokenised once, sorted by length and batched, so a batch pads only to its
    longest text; rows come back in the input order.
    """

    def __init__(self, folder, info: dict, threads: Optional[int] = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.info = info
        self.max_seq_length = int(info["max_seq_length"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CachetuneError(f"onnxruntime could not load the model: {first}", self.folder / MODEL_FILE) from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.dimension = int(info["dimension"])
        self.backend = f"onnx-{info.get('variant')}"
        self.cachetune_adapter = None

    def get_embedding_dimension(self) -> int:
        return self.dimension

    get_sentence_embedding_dimension = get_embedding_dimension

    def encode(self, sentences, batch_size: int = 32, normalize_embeddings: bool = False,
               show_progress_bar: bool = False, **_ignored):
        """One float32 row per text (a 1-D vector for a single string), like SentenceTransformer.encode."""
        import numpy as np

        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if texts:
            features = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length, verbose=False)
            order = np.argsort([-len(ids) for ids in features["input_ids"]], kind="stable")
            batches = range(0, len(texts), batch_size)
            if show_progress_bar:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc="Batches")
            for start in batches:
                rows = order[start:start + batch_size]
                out[rows] = self.session.run([OUTPUT_NAME], self._batch(features, rows))[0]
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out

    def _batch(self, features, rows: Sequence[int]) -> dict:
        import numpy as np

        width = max(len(features["input_ids"][i]) for i in rows)
        pad_id = self.tokenizer.pad_token_id or 0
        feed = {}
        for name in self.inputs:
            array = np.full((len(rows), width), pad_id if name == "input_ids" else 0, dtype=np.int64)
            for r, i in enumerate(rows):
                values = features[name][i]
                array[r, :len(values)] = values
            feed[name] = array
        return feed


def load_onnx(folder, source: Optional[dict] = None, threads: Optional[int] = None) -> OnnxEncoder:
    """An :class:`OnnxEncoder` for an export folder, after :func:`check_export`."""
    _need_onnxruntime()
    info = check_export(Path(folder), source)
    return OnnxEncoder(folder, info, threads=threads)
