"""Training data for ``cachetune train``: reading triplets, tokenising once, building batches.

- :func:`load_triplets` reads and validates a triplet JSONL file (one clear error naming the
  file, line and field), skipping exact repeats and rows of another domain.
- :class:`TokenizedTexts` tokenises every distinct text once, without padding; a batch is
  padded only to its own longest text (dynamic padding).
- :class:`TripletBatchSampler` builds each epoch's batches: seeded shuffle, length grouping
  inside large windows (rows of similar length share a batch, so padding is small) and no
  batch holds two rows that would turn a correct match into an in-batch negative (same
  anchor, or a positive that is another row's positive or hard negative). Its state is just
  ``(epoch, batch index)``: batches are a pure function of seed and epoch, so a resumed run
  sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import iter_jsonl
from cachetune.core.text import exact_key

REQUIRED_FIELDS = ("anchor", "positive", "negative")


@dataclass
class TripletData:
    """Validated triplets of one file."""

    path: Path
    anchors: List[str]
    positives: List[str]
    negatives: List[Optional[str]]
    skipped: Dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.anchors)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def load_triplets(path, domain: Optional[str] = None, need_negative: bool = True) -> TripletData:
    """Read ``{"anchor", "positive", "negative", ...}`` rows from a JSONL file.

    A missing, empty or non-string field is an error naming the line: a silently dropped row
    would hide a broken generator. Skipped (counted, not errors): exact repeats of a row, and
    rows whose ``domain`` names another domain than ``domain``. ``negative`` may be absent
    only when ``need_negative`` is false (``--no-hard-negatives``).
    """
    path = Path(path)
    if path.is_dir():
        raise CachetuneError("expected a triplet JSONL file, got a folder", path)
    fields = REQUIRED_FIELDS if need_negative else REQUIRED_FIELDS[:2]
    data = TripletData(path, [], [], [], {"duplicate": 0, "other_domain": 0})
    seen = set()
    for line, row in iter_jsonl(path):
        for name in fields:
            value = row.get(name)
            if name not in row or value is None:
                raise CachetuneError(f"triplet has no '{name}' field", path, line)
            if not isinstance(value, str):
                raise CachetuneError(f"'{name}' must be a string, got {type(value).__name__}", path, line)
            if not value.strip():
                raise CachetuneError(f"'{name}' is empty", path, line)
        negative = row.get("negative") if need_negative else None
        if domain is not None and row.get("domain") not in (None, domain):
            data.skipped["other_domain"] += 1
            continue
        if exact_key(row["anchor"]) == exact_key(row["positive"]):
            raise CachetuneError("'anchor' and 'positive' are the same text", path, line)
        if negative is not None and exact_key(negative) == exact_key(row["positive"]):
            raise CachetuneError("'negative' is the same text as 'positive'", path, line)
        key = (row["anchor"], row["positive"], negative)
        if key in seen:
            data.skipped["duplicate"] += 1
            continue
        seen.add(key)
        data.anchors.append(row["anchor"])
        data.positives.append(row["positive"])
        data.negatives.append(negative)
    if not data.anchors:
        if data.skipped_total:
            raise CachetuneError(f"no usable triplets for domain '{domain}' "
                                 f"({data.skipped['other_domain']} rows of another domain)", path)
        raise CachetuneError("no triplets (the file is empty)", path)
    return data


class TokenizedTexts:
    """Every distinct text tokenised once (truncated, unpadded); batches are padded on demand."""

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int):
        self.tokenizer = tokenizer
        self.index: Dict[str, int] = {}
        unique: List[str] = []
        for text in texts:
            if text not in self.index:
                self.index[text] = len(unique)
                unique.append(text)
        encoded = tokenizer(unique, truncation=True, max_length=max_length, padding=False)
        self.keys = [k for k in encoded.keys() if k != "attention_mask"]
        self.features = {k: encoded[k] for k in self.keys}
        self.lengths = [len(ids) for ids in encoded["input_ids"]]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.left = getattr(tokenizer, "padding_side", "right") == "left"

    def ids(self, texts: Sequence[str]) -> List[int]:
        return [self.index[t] for t in texts]

    def length(self, text: str) -> int:
        return self.lengths[self.index[text]]

    def batch(self, text_ids: Sequence[int]) -> dict:
        """Tensors for ``text_ids`` padded to the longest of them (dynamic padding)."""
        import torch

        width = max(self.lengths[i] for i in text_ids)
        out = {}
        mask = torch.zeros((len(text_ids), width), dtype=torch.long)
        for key in self.keys:
            pad = self.pad_id if key == "input_ids" else 0
            tensor = torch.full((len(text_ids), width), pad, dtype=torch.long)
            for row, i in enumerate(text_ids):
                values = self.features[key][i]
                if self.left:
                    tensor[row, width - len(values):] = torch.tensor(values, dtype=torch.long)
                else:
                    tensor[row, : len(values)] = torch.tensor(values, dtype=torch.long)
            out[key] = tensor
        for row, i in enumerate(text_ids):
            n = self.lengths[i]
            if self.left:
                mask[row, width - n:] = 1
            else:
                mask[row, :n] = 1
        out["attention_mask"] = mask
        out["modality"] = "text"
        return out


class TripletBatchSampler:
    """Seeded, length-grouped batches of row indices without in-batch false negatives.

    ``lengths[i]`` is row i's size (summed token counts). Each epoch: shuffle all rows with
    ``Random(seed, epoch)``, cut the order into windows of ``batch_size * group_window`` rows,
    sort each window by length, fill batches greedily in that order (a row that conflicts
    with the open batch waits for the next one), then shuffle the batch order so lengths do
    not come in a sweep. With ``world_size > 1`` rank r takes batches r, r + world, ... and
    every rank gets the same number (the remainder is dropped) so gradient averaging lines up.
    """

    def __init__(self, anchors: Sequence[str], positives: Sequence[str], negatives: Sequence[Optional[str]],
                 lengths: Sequence[int], batch_size: int, seed: int = 0, group_window: int = 50,
                 world_size: int = 1, rank: int = 0):
        if batch_size < 1:
            raise CachetuneError(f"--batch-size must be at least 1, got {batch_size}")
        self.anchor_keys = [exact_key(t) for t in anchors]
        self.positive_keys = [exact_key(t) for t in positives]
        self.negative_keys = [exact_key(t) if t is not None else None for t in negatives]
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_window = max(1, group_window)
        self.world_size = world_size
        self.rank = rank
        self._cache: Dict[int, List[List[int]]] = {}

    def all_batches(self, epoch: int) -> List[List[int]]:
        """Every batch of ``epoch`` (all ranks), deterministic in (seed, epoch)."""
        if epoch in self._cache:
            return self._cache[epoch]
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        window = self.batch_size * self.group_window
        batches: List[List[int]] = []
        waiting: List[int] = []
        for start in range(0, len(order), window):
            # Rows left over from the last window are sorted in with this one.
            chunk = sorted(waiting + order[start:start + window], key=lambda i: self.lengths[i])
            batches_chunk, waiting = self._fill(chunk)
            batches.extend(batches_chunk)
        # Rows still waiting conflict with every batch that was open: they form the last batches.
        while waiting:
            batches_chunk, rest = self._fill(waiting, flush=True)
            if not batches_chunk:  # cannot happen: a lone row never conflicts with itself
                break
            batches.extend(batches_chunk)
            waiting = rest
        rng.shuffle(batches)
        self._cache[epoch] = batches
        return batches

    def _fill(self, rows: List[int], flush: bool = False):
        """Greedy batches over ``rows``; returns (full batches, rows left for later)."""
        batches: List[List[int]] = []
        pending = list(rows)
        while pending:
            batch, anchors, positives, candidates, rest = [], set(), set(), set(), []
            for i in pending:
                if len(batch) == self.batch_size:
                    rest.append(i)
                    continue
                a, p, n = self.anchor_keys[i], self.positive_keys[i], self.negative_keys[i]
                if a in anchors or p in candidates or (n is not None and n in positives):
                    rest.append(i)
                    continue
                batch.append(i)
                anchors.add(a)
                positives.add(p)
                candidates.add(p)
                if n is not None:
                    candidates.add(n)
            if len(batch) < self.batch_size and not flush:
                # A partial batch waits for rows of the next window, which may fit it.
                return batches, batch + rest
            batches.append(batch)
            pending = rest
        return batches, []

    def steps_per_epoch(self, epoch: int = 0) -> int:
        n = len(self.all_batches(epoch))
        return n if self.world_size == 1 else n // self.world_size

    def rank_batches(self, epoch: int) -> List[List[int]]:
        """This rank's batches of ``epoch``, in order."""
        batches = self.all_batches(epoch)
        steps = self.steps_per_epoch(epoch)
        return [batches[s * self.world_size + self.rank] for s in range(steps)]
