"""Nested training state (optimizer, scheduler, RNG states) on disk without pickles.

``torch.save`` pickles, and unpickling a file runs whatever code it names: a checkpoint
someone hands you could do anything. Here the tensors go into a safetensors file and the
structure around them (dicts, lists, tuples, numbers, strings, numpy arrays) into JSON kept
in that file's metadata, so loading a checkpoint only ever parses data. Anything the
layout does not describe exactly is an error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from cachetune.core.errors import CachetuneError

LAYOUT_KEY = "cachetune.layout"
# Markers of the values JSON has no type for; a dict using a key like these is stored as items.
TENSOR, TUPLE, ITEMS, NDARRAY = "__tensor__", "__tuple__", "__items__", "__ndarray__"
MARKERS = {TENSOR: 1, TUPLE: 1, ITEMS: 1, NDARRAY: 2}


def _encode(value, tensors: dict):
    import numpy as np
    import torch

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous().clone()
        return {TENSOR: name}
    if isinstance(value, np.ndarray):
        return {NDARRAY: value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {TUPLE: [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {ITEMS: [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def _decode(value, tensors: dict, path: Path):
    import numpy as np

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, tensors, path) for v in value]
    if not isinstance(value, dict):
        raise CachetuneError(f"bad checkpoint layout: unexpected {type(value).__name__}", path)
    marker = next((k for k in value if k in MARKERS), None)
    if marker is None:
        return {k: _decode(v, tensors, path) for k, v in value.items()}
    if len(value) != MARKERS[marker]:
        raise CachetuneError(f"bad checkpoint layout: malformed {marker} entry", path)
    content = value[marker]
    if marker == TENSOR:
        if content not in tensors:
            raise CachetuneError(f"bad checkpoint layout: no tensor named {content!r}", path)
        return tensors[content]
    if marker == NDARRAY:
        try:
            return np.asarray(content, dtype=np.dtype(value.get("dtype")))
        except (TypeError, ValueError) as exc:
            raise CachetuneError(f"bad checkpoint layout: bad array ({exc})", path) from None
    if not isinstance(content, list):
        raise CachetuneError(f"bad checkpoint layout: {marker} must hold a list", path)
    if marker == TUPLE:
        return tuple(_decode(v, tensors, path) for v in content)
    if not all(isinstance(pair, list) and len(pair) == 2 for pair in content):
        raise CachetuneError(f"bad checkpoint layout: {ITEMS} must hold [key, value] pairs", path)
    items = [(_decode(k, tensors, path), _decode(v, tensors, path)) for k, v in content]
    try:
        return dict(items)
    except TypeError:  # an unhashable key
        raise CachetuneError("bad checkpoint layout: a dict key that cannot be one", path) from None


def save_state(path, state) -> None:
    """Write ``state`` (nested dicts/lists/tuples of tensors, arrays and plain values) to ``path``."""
    from safetensors.torch import save_file

    tensors: dict = {}
    layout = _encode(state, tensors)
    save_file(tensors, str(path), metadata={LAYOUT_KEY: json.dumps(layout)})


def load_state(path):
    """The state :func:`save_state` wrote; a file that is not one is a :class:`CachetuneError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CachetuneError(f"unreadable checkpoint tensors: {str(exc).splitlines()[0]}", path) from None
    if LAYOUT_KEY not in metadata:
        raise CachetuneError("not a cachetune checkpoint (its safetensors metadata has no layout)", path)
    try:
        layout = json.loads(metadata[LAYOUT_KEY])
    except json.JSONDecodeError as exc:
        raise CachetuneError(f"bad checkpoint layout: {exc.msg}", path) from None
    return _decode(layout, tensors, path)
